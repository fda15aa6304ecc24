//! `shardflow demo`: the built-in synthetic corpus, written, inspected and summarized.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use shardflow::shard::synthetic::SyntheticCorpus;
use shardflow::{Error, Result};

use super::inspect::{Report, table};

pub fn run(dir: Option<PathBuf>) -> Result<ExitCode> {
    let tmp;
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, "create", e))?;
            d
        }
        None => {
            tmp = tempfile::tempdir().map_err(|e| Error::io(&std::env::temp_dir(), "create", e))?;
            tmp.path().to_path_buf()
        }
    };
    let corpus = SyntheticCorpus::demo();
    println!(
        "shardflow demo: writing the built-in corpus (seed {}) to {}",
        corpus.seed,
        dir.display()
    );
    let bar = super::progress_bar(
        corpus.expected_tokens(),
        "{spinner} writing [{bar:30}] {pos}/{len} tokens ({per_sec}, {elapsed})",
    );
    let start = Instant::now();
    let written = corpus.write(&dir, |tokens| bar.set_position(tokens))?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let tokens: u64 = written.iter().map(|s| s.tokens).sum();
    println!(
        "wrote {} datasets, {tokens} tokens in {secs:.2} s ({:.1} M tokens/s)",
        written.len(),
        tokens as f64 / secs / 1e6
    );
    let reports = written
        .iter()
        .map(|s| Report::of(&s.prefix))
        .collect::<Result<Vec<_>>>()?;
    print!("{}", table(&reports));
    Ok(ExitCode::SUCCESS)
}
