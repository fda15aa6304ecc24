//! Entry points for the fuzz targets in `fuzz/`: the command's argument parsing into configs,
//! and its input tokenizing, with no effect outside the directory they are given.

use std::io::BufReader;
use std::path::Path;

use clap::Parser;

use super::{Args, Command, write};
use crate::loader::Source;
use crate::{IndexedShard, IndexedWriter, Result, Shard};

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

/// Tokenizes `input` as `shardflow write` does (JSON lines when `mode % 3 == 0`, text when 1,
/// detected from the content when 2) into a shard in `dir`, reads it back, and checks that
/// every document came back as written.
///
/// # Errors
///
/// The input's errors (a malformed line) and the writer's.
///
/// # Panics
///
/// When the shard read back differs from what was written: a finding.
pub fn write_input(input: &[u8], mode: u8, dir: &Path) -> Result<()> {
    let path = Path::new("<fuzz input>");
    let mut reader = BufReader::new(input);
    let jsonl = match mode % 3 {
        0 => true,
        1 => false,
        _ => write::detect_jsonl(path, &mut reader)?,
    };
    let prefix = dir.join("fuzz");
    let mut writer = IndexedWriter::create(&prefix, None)?;
    let mut docs: Vec<Vec<i64>> = Vec::new();
    let mut emit = |text: &[u8], _read: u64| -> Result<()> {
        let tokens: Vec<u16> = text
            .iter()
            .map(|&b| b as u16)
            .chain([write::END_OF_DOCUMENT])
            .collect();
        writer.add_sequence(&tokens)?;
        writer.end_document()?;
        docs.push(tokens.iter().map(|&t| t as i64).collect());
        Ok(())
    };
    if jsonl {
        write::read_jsonl(reader, path, "text", &mut emit)?;
    } else {
        write::read_paragraphs(reader, path, &mut emit)?;
    }
    writer.finish()?;
    let shard = IndexedShard::open(&prefix)?;
    assert_eq!(shard.len(), docs.len(), "documents read back");
    for (i, doc) in docs.iter().enumerate() {
        assert_eq!(
            &shard.get(i).expect("in range").to_vec(),
            doc,
            "document {i}"
        );
    }
    assert!(shard.verify()?, "a written shard has a trailer");
    Ok(())
}
