//! `shardflow write`: JSON lines or plain text, tokenized byte-level, into a Megatron shard.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::{Out, note};
use crate::{Dtype, Error, IndexedWriter, Result};

/// The end-of-document id appended after each document's bytes.
pub const END_OF_DOCUMENT: u16 = 256;

#[derive(Debug, Args)]
pub struct WriteArgs {
    /// The input file, or `-` for stdin: JSON lines or plain text (see --format).
    #[arg(long)]
    input: PathBuf,
    /// The output prefix: PREFIX.idx and PREFIX.bin are written (an existing pair is replaced
    /// atomically).
    #[arg(long)]
    output: PathBuf,
    /// The JSON field that holds a document's text.
    #[arg(long, default_value = "text")]
    field: String,
    /// The stored id type: auto (u16 while every id fits), u16, i16, i32, i64. (u8 and i8
    /// cannot hold the end-of-document id 256.)
    #[arg(long, value_enum, default_value_t = StoredDtype::Auto)]
    dtype: StoredDtype,
    /// The input format. auto: JSON lines for a .jsonl, .json or .ndjson file (any case), plain
    /// text for .txt, .text or .md; otherwise JSON lines when the first non-blank byte is `{`.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    format: Format,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Auto,
    Jsonl,
    Text,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StoredDtype {
    Auto,
    U16,
    I16,
    I32,
    I64,
}

impl StoredDtype {
    fn dtype(self) -> Option<Dtype> {
        match self {
            StoredDtype::Auto => None,
            StoredDtype::U16 => Some(Dtype::U16),
            StoredDtype::I16 => Some(Dtype::I16),
            StoredDtype::I32 => Some(Dtype::I32),
            StoredDtype::I64 => Some(Dtype::I64),
        }
    }
}

pub fn run(args: WriteArgs) -> Result<ExitCode> {
    let stdin = args.input.as_os_str() == "-";
    let (file, size): (Box<dyn Read>, Option<u64>) = if stdin {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let file = open_input(&args.input)?;
        let size = file
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        (Box::new(file), size)
    };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let jsonl = match args.format {
        Format::Jsonl => true,
        Format::Text => false,
        Format::Auto => detect_jsonl(&args.input, &mut reader)?,
    };
    let bar = super::progress_bar(
        size,
        "{spinner} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} ({elapsed})",
    );
    let mut writer = IndexedWriter::create(&args.output, args.dtype.dtype())?;
    for (path, bytes) in writer.removed_stale() {
        note(format_args!(
            "removed {} ({bytes} bytes), left by an interrupted write",
            path.display()
        ));
    }
    let mut tokens = Vec::new();
    let mut records = 0u64;
    let mut emit = |text: &[u8], bytes_read: u64| -> Result<()> {
        tokens.clear();
        tokens.extend(text.iter().map(|&b| b as u16));
        tokens.push(END_OF_DOCUMENT);
        writer.add_sequence(&tokens)?;
        writer.end_document()?;
        records += 1;
        if records.is_multiple_of(256) {
            bar.set_position(bytes_read);
            bar.set_message(format!("{records} records"));
        }
        Ok(())
    };
    if jsonl {
        read_jsonl(reader, &args.input, &args.field, &mut emit)?;
    } else {
        read_paragraphs(reader, &args.input, &mut emit)?;
    }
    bar.finish_and_clear();
    let summary = writer.finish()?;
    let mut out = Out::new();
    out.print(format_args!(
        "wrote {}.idx/.bin: {} documents, {} sequences, {} tokens, dtype {}\n",
        summary.prefix.display(),
        summary.documents,
        summary.sequences,
        summary.tokens,
        summary.dtype
    ))?;
    out.finish()?;
    Ok(ExitCode::SUCCESS)
}

/// Opens the input, refusing what is not a readable file or pipe.
fn open_input(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "open", e))?;
    if meta.is_dir() {
        return Err(Error::NotAFile {
            path: path.to_path_buf(),
            found: "a directory",
        });
    }
    File::open(path).map_err(|e| Error::io(path, "open", e))
}

/// Whether the input is JSON lines: by its extension (any case), else by its first non-blank
/// byte, peeked without consuming it.
pub(super) fn detect_jsonl(path: &Path, reader: &mut impl BufRead) -> Result<bool> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("jsonl" | "json" | "ndjson") => return Ok(true),
        Some("txt" | "text" | "md") => return Ok(false),
        _ => {}
    }
    let head = reader.fill_buf().map_err(|e| Error::io(path, "read", e))?;
    let head = head
        .strip_prefix(b"\xef\xbb\xbf".as_slice())
        .unwrap_or(head);
    Ok(head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'))
}

/// Calls `emit` with each JSON line's `field` text; blank lines are skipped.
pub(super) fn read_jsonl(
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
pub(super) fn read_paragraphs(
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
