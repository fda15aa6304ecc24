//! `shardflow cat`: sequences as JSON arrays of token ids, one per line.

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use shardflow::{Error, IndexedShard, Result, Shard};

pub fn run(prefix: &Path, range: &str) -> Result<ExitCode> {
    let shard = IndexedShard::open(prefix)?;
    let (a, b) = parse_range(range, shard.len())?;
    let mut out = BufWriter::new(std::io::stdout().lock());
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
        if out.write_all(line.as_bytes()).is_err() {
            // The reader went away (`| head`): stop quietly, as cat does.
            return Ok(ExitCode::SUCCESS);
        }
    }
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}

/// Parses `A..B` or `A..` against a shard of `len` sequences.
fn parse_range(range: &str, len: usize) -> Result<(usize, usize)> {
    let bad = |why: &str| Error::Config(format!("--range {range}: {why}"));
    let (a, b) = range
        .split_once("..")
        .ok_or_else(|| bad("expected A..B or A.."))?;
    let a: usize = a
        .trim()
        .parse()
        .map_err(|_| bad("A is not a whole number"))?;
    let b: usize = match b.trim() {
        "" => len,
        b => b.parse().map_err(|_| bad("B is not a whole number"))?,
    };
    if a > b {
        return Err(bad("A is past B"));
    }
    if b > len {
        return Err(bad(&format!("the shard holds only {len} sequences")));
    }
    Ok((a, b))
}
