//! Entry points for the fuzz targets in `fuzz/`: the command's argument parsing into configs,
//! and its input tokenizing, with no effect outside the directory they are given.

use std::path::Path;

use clap::Parser;

use super::{Args, Command};
use crate::ingest::Document;
use crate::ingest::encode::{BYTE_LEVEL_EOD, Encoder};
use crate::ingest::input::{Documents, InputConfig, InputFormat};
use crate::ingest::pipeline::{IngestConfig, ingest};
use crate::loader::Source;
use crate::{Error, IndexedShard, Result, Shard};

/// Parses `argv` (without the program name) as the command line would. For `plan`, plans and
/// prints up to 20 steps into a sink; for `bench`, builds its loader over `sources` (not its
/// `--data`) and takes up to two batches. Other commands are parsed only. Errors are fine;
/// a panic is a finding.
pub fn args(argv: &[String], sources: &[Source]) {
    let argv = std::iter::once("shardflow".to_string()).chain(argv.iter().cloned());
    let Ok(args) = Args::try_parse_from(argv) else {
        return;
    };
    match args.command {
        Command::Plan(mut p) => {
            p.cap_for_fuzzing();
            let _ = p.print(&mut std::io::sink());
        }
        Command::Bench(mut b) => {
            b.cap_for_fuzzing();
            if let Ok(mut loader) = b.loader(sources.to_vec()) {
                for batch in loader.by_ref().take(2) {
                    if batch.is_err() {
                        break;
                    }
                }
            }
        }
        _ => {}
    }
}

/// Tokenizes `input` as `shardflow write` does byte-level (JSON lines when `mode % 3 == 0`,
/// text when 1, detected from the content when 2) into a shard in `dir`, reads it back, and
/// checks that every document came back as written.
///
/// # Errors
///
/// The input's errors (a malformed line) and the writer's.
///
/// # Panics
///
/// When the shard read back differs from what was written: a finding.
pub fn write_input(input: &[u8], mode: u8, dir: &Path) -> Result<()> {
    // No known extension, so that mode 2 detects the format from the content.
    let path = dir.join("fuzz.input");
    std::fs::write(&path, input).map_err(|e| Error::io(&path, "write", e))?;
    let format = match mode % 3 {
        0 => InputFormat::Jsonl,
        1 => InputFormat::Text,
        _ => InputFormat::Auto,
    };
    let config = InputConfig {
        inputs: vec![path],
        field: "text".into(),
        format,
        skip_bad: false,
    };
    let docs: Vec<Document> = Documents::open(&config)?.collect::<Result<_>>()?;
    let prefix = dir.join("fuzz");
    let mut ingest_config = IngestConfig::new(&prefix);
    ingest_config.eod = Some(BYTE_LEVEL_EOD);
    ingest(
        docs.clone().into_iter().map(Ok),
        &Encoder::byte_level(),
        &ingest_config,
        |_| {},
    )?;
    let shard = IndexedShard::open(&prefix)?;
    assert_eq!(shard.len(), docs.len(), "documents read back");
    for (i, doc) in docs.iter().enumerate() {
        let expected: Vec<i64> = doc
            .text
            .bytes()
            .map(i64::from)
            .chain([i64::from(BYTE_LEVEL_EOD)])
            .collect();
        assert_eq!(
            shard.get(i).expect("in range").to_vec(),
            expected,
            "document {i}"
        );
    }
    assert!(shard.verify()?, "a written shard has a trailer");
    Ok(())
}
