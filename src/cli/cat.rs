//! `shardflow cat`: sequences as JSON arrays of token ids, one per line.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use super::Out;
use crate::{Error, IndexedShard, Result, Shard};

pub fn run(prefix: &Path, range: &str) -> Result<ExitCode> {
    let shard = IndexedShard::open(prefix)?;
    let (a, b) = parse_range(range, shard.len())?;
    let mut out = Out::new();
    let mut line = String::new();
    for i in a..b {
        let seq = shard
            .get(i)
            .expect("the range was checked against the shard length");
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

/// Parses `A..B` or `A..` against a shard of `len` sequences.
fn parse_range(range: &str, len: usize) -> Result<(usize, usize)> {
    let bad = |why: String| Error::Config(format!("--range {range}: {why}"));
    let (a, b) = range
        .split_once("..")
        .ok_or_else(|| bad("expected A..B or A..".into()))?;
    let a: usize = a
        .trim()
        .parse()
        .map_err(|_| bad(format!("A={} is not a whole number", a.trim())))?;
    let b: usize = match b.trim() {
        "" => len,
        b => b
            .parse()
            .map_err(|_| bad(format!("B={b} is not a whole number")))?,
    };
    if a > len || b > len {
        return Err(bad(format!(
            "{} is past the end: the shard holds {len} sequences (0..{len})",
            if a > len {
                format!("A={a}")
            } else {
                format!("B={b}")
            }
        )));
    }
    if a > b {
        return Err(bad(format!("A={a} is after B={b}")));
    }
    Ok((a, b))
}
