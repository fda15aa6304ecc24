//! `shardflow cat`: sequences as JSON arrays of token ids, one per line, of one shard or of a
//! directory of shards (one dataset over all of them, in name order, as `plan` numbers them);
//! with `--tokenizer`, as their decoded text, one JSON string per line.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::Out;
use crate::ingest::encode::Encoder;
use crate::{Dataset, Error, Result};

#[derive(Debug, Args)]
pub struct CatArgs {
    /// The shard prefix, or a directory of shards (one dataset over all of them, in name
    /// order).
    prefix: PathBuf,
    /// Sequences A..B (B exclusive; `A..` runs to the end).
    #[arg(long, default_value = "0..", value_parser = parse_range)]
    range: SeqRange,
    /// A Hugging Face tokenizer.json: print each sequence's decoded text, as a JSON string,
    /// instead of its ids.
    #[arg(long, value_name = "PATH")]
    tokenizer: Option<PathBuf>,
}

/// `--range A..B` or `A..`, checked for its form while the arguments are parsed; against the
/// shard's length once it is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    start: usize,
    /// `None`: to the end.
    end: Option<usize>,
}

/// Parses `--range` (a clap value parser, so a malformed range is a usage error, status 2).
///
/// # Errors
///
/// What is wrong with the value: not `A..B` or `A..`, a bound that is not a whole number, or
/// `A` after `B`.
pub fn parse_range(range: &str) -> std::result::Result<SeqRange, String> {
    let (a, b) = range
        .split_once("..")
        .ok_or_else(|| "expected A..B or A..".to_string())?;
    let a = a.trim();
    let start: usize = a
        .parse()
        .map_err(|_| format!("A={a} is not a whole number"))?;
    let end = match b.trim() {
        "" => None,
        b => Some(
            b.parse()
                .map_err(|_| format!("B={b} is not a whole number"))?,
        ),
    };
    if let Some(end) = end
        && start > end
    {
        return Err(format!("A={start} is after B={end}"));
    }
    Ok(SeqRange { start, end })
}

impl SeqRange {
    /// The range as given (`1..5`, `3..`).
    fn shown(&self) -> String {
        match self.end {
            Some(end) => format!("{}..{end}", self.start),
            None => format!("{}..", self.start),
        }
    }

    /// The bounds within `len` sequences; `what` says who holds them ("the shard holds", "the 2
    /// shards in DIR hold").
    fn within(&self, len: usize, what: &str) -> Result<(usize, usize)> {
        let end = self.end.unwrap_or(len);
        if self.start > len || end > len {
            let bound = if self.start > len {
                format!("A={}", self.start)
            } else {
                format!("B={end}")
            };
            return Err(Error::Config(format!(
                "--range {}: {bound} is past the end: {what} {len} sequences (0..{len})",
                self.shown()
            )));
        }
        Ok((self.start, end))
    }
}

/// Prints sequences `--range` of the shard at `prefix`, or of the shards in directory `prefix`:
/// their ids, or with `--tokenizer` their decoded text.
///
/// # Errors
///
/// The shards' open errors; the tokenizer's load error; [`Error::Config`] for a range past the
/// end; [`Error::TokenOutOfRange`] for an id the tokenizer cannot hold (negative, or past
/// u32); the tokenizer's decode error; a write error on stdout.
pub fn run(args: CatArgs) -> Result<ExitCode> {
    let CatArgs {
        prefix,
        range,
        tokenizer,
    } = args;
    let prefix = prefix.as_path();
    let encoder = tokenizer.as_deref().map(Encoder::from_file).transpose()?;
    let (data, what) = if prefix.is_dir() {
        let data = Dataset::open_dir(prefix)?;
        let what = match data.shards().len() {
            1 => format!("the shard in {} holds", prefix.display()),
            n => format!("the {n} shards in {} hold", prefix.display()),
        };
        (data, what)
    } else {
        (Dataset::open(&[prefix])?, "the shard holds".to_string())
    };
    let (a, b) = range.within(data.len(), &what)?;
    let mut out = Out::new();
    let mut line = String::new();
    let mut ids = Vec::new();
    for i in a..b {
        let seq = data
            .get(i)
            .expect("the range was checked against the dataset length");
        line.clear();
        if let Some(encoder) = &encoder {
            ids.clear();
            for (j, id) in seq.iter().enumerate() {
                let id = u32::try_from(id).map_err(|_| Error::TokenOutOfRange {
                    path: seq.path().to_path_buf(),
                    offset: seq.offset() + (j * seq.dtype().size()) as u64,
                    token: id,
                    target: "u32 (a tokenizer id)",
                })?;
                ids.push(id);
            }
            let text = encoder.decode(&ids)?;
            line.push_str(&serde_json::to_string(&text).expect("a string serializes"));
            line.push('\n');
            out.text(&line)?;
            continue;
        }
        line.push('[');
        for (j, t) in seq.iter().enumerate() {
            if j > 0 {
                line.push(',');
            }
            let _ = write!(line, "{t}");
        }
        line.push_str("]\n");
        out.text(&line)?;
    }
    out.finish()?;
    Ok(ExitCode::SUCCESS)
}
