//! `shardflow cat`: sequences as JSON arrays of token ids, one per line, of one shard or of a
//! directory of shards (one dataset over all of them, in name order, as `plan` numbers them).

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use super::Out;
use crate::{Dataset, Error, Result};

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

/// Prints sequences `range` of the shard at `prefix`, or of the shards in directory `prefix`.
///
/// # Errors
///
/// The shards' open errors; [`Error::Config`] for a range past the end; a write error on
/// stdout.
pub fn run(prefix: &Path, range: SeqRange) -> Result<ExitCode> {
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
    for i in a..b {
        let seq = data
            .get(i)
            .expect("the range was checked against the dataset length");
        line.clear();
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
