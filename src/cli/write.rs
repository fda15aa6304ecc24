//! `shardflow write`: JSON lines or plain text, tokenized byte-level, into a Megatron shard.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use shardflow::{Dtype, Error, IndexedWriter, Result};

/// The end-of-document id appended after each document's bytes.
pub const END_OF_DOCUMENT: u16 = 256;

#[derive(Debug, Args)]
pub struct WriteArgs {
    /// The input: JSON lines (`.jsonl`, `.json`, `.ndjson`) or plain text (anything else).
    #[arg(long)]
    input: PathBuf,
    /// The output prefix: PREFIX.idx and PREFIX.bin are written.
    #[arg(long)]
    output: PathBuf,
    /// The JSON field that holds a document's text.
    #[arg(long, default_value = "text")]
    field: String,
    /// The stored id type: auto (u16 while every id fits), u16, i32, i64.
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// The input format; by default chosen from the file extension.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    format: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Auto,
    Jsonl,
    Text,
}

pub fn run(args: WriteArgs) -> Result<ExitCode> {
    let dtype = match args.dtype.as_str() {
        "auto" => None,
        name => Some(Dtype::from_name(name).ok_or_else(|| {
            Error::Config(format!(
                "--dtype {name}: expected auto, u8, i8, i16, u16, i32 or i64"
            ))
        })?),
    };
    let jsonl = match args.format {
        Format::Jsonl => true,
        Format::Text => false,
        Format::Auto => args
            .input
            .extension()
            .is_some_and(|e| ["jsonl", "json", "ndjson"].iter().any(|x| e == *x)),
    };
    let file = File::open(&args.input).map_err(|e| Error::io(&args.input, "open", e))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = super::progress_bar(
        size,
        "{spinner} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} ({elapsed})",
    );
    let mut writer = IndexedWriter::create(&args.output, dtype)?;
    let mut tokens = Vec::new();
    let mut records = 0u64;
    let mut emit = |text: &[u8], bytes_read: u64| -> Result<()> {
        tokens.clear();
        tokens.extend(text.iter().map(|&b| b as u16));
        tokens.push(END_OF_DOCUMENT);
        writer.add_sequence(&tokens)?;
        writer.end_document()?;
        records += 1;
        if records % 256 == 0 {
            bar.set_position(bytes_read);
            bar.set_message(format!("{records} records"));
        }
        Ok(())
    };
    let reader = BufReader::with_capacity(1 << 20, file);
    if jsonl {
        read_jsonl(reader, &args.input, &args.field, &mut emit)?;
    } else {
        read_paragraphs(reader, &args.input, &mut emit)?;
    }
    bar.finish_and_clear();
    let summary = writer.finish()?;
    println!(
        "wrote {}.idx/.bin: {} documents, {} sequences, {} tokens, dtype {}",
        summary.prefix.display(),
        summary.documents,
        summary.sequences,
        summary.tokens,
        summary.dtype
    );
    Ok(ExitCode::SUCCESS)
}

/// Calls `emit` with each JSON line's `field` text; blank lines are skipped.
fn read_jsonl(
    reader: impl BufRead,
    path: &Path,
    field: &str,
    emit: &mut impl FnMut(&[u8], u64) -> Result<()>,
) -> Result<()> {
    let mut read = 0u64;
    for (n, line) in reader.split(b'\n').enumerate() {
        let line_no = n as u64 + 1;
        let bad = |reason: String| Error::Input {
            path: path.to_path_buf(),
            line: line_no,
            reason,
        };
        let line = line.map_err(|e| Error::io(path, "read", e))?;
        read += line.len() as u64 + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_slice(&line).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let text = value
            .get(field)
            .ok_or_else(|| {
                bad(format!(
                    "no field \"{field}\" (use --field to pick another)"
                ))
            })?
            .as_str()
            .ok_or_else(|| bad(format!("field \"{field}\" is not a string")))?;
        emit(text.as_bytes(), read)?;
    }
    Ok(())
}

/// Calls `emit` with each paragraph: lines up to a blank line, joined by newlines.
fn read_paragraphs(
    reader: impl BufRead,
    path: &Path,
    emit: &mut impl FnMut(&[u8], u64) -> Result<()>,
) -> Result<()> {
    let mut paragraph = Vec::new();
    let mut read = 0u64;
    for line in reader.split(b'\n') {
        let mut line = line.map_err(|e| Error::io(path, "read", e))?;
        read += line.len() as u64 + 1;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            if !paragraph.is_empty() {
                emit(&paragraph, read)?;
                paragraph.clear();
            }
            continue;
        }
        if !paragraph.is_empty() {
            paragraph.push(b'\n');
        }
        paragraph.extend_from_slice(&line);
    }
    if !paragraph.is_empty() {
        emit(&paragraph, read)?;
    }
    Ok(())
}
