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

/// The most bytes one document may hold: its ids and the end-of-document id form one sequence,
/// whose length is an i32 in the Megatron index. A longer document is refused as soon as its
/// text passes this, before it is held in memory whole.
pub const MAX_DOCUMENT_BYTES: usize = i32::MAX as usize - 1;

/// A JSON line may be this much longer than [`MAX_DOCUMENT_BYTES`] (its other fields, escapes);
/// a longer one is refused while it is read.
const MAX_JSON_LINE: usize = 2 * MAX_DOCUMENT_BYTES;

/// The UTF-8 byte order mark that some editors write at the start of a file.
const BOM: &[u8] = b"\xef\xbb\xbf";

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
    // Errors name stdin as such, not `-`.
    let input = if stdin {
        PathBuf::from("<stdin>")
    } else {
        args.input.clone()
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
    create_parent(&args.output)?;
    let mut writer = IndexedWriter::create(&args.output, args.dtype.dtype())?;
    // Removed by `finish`, once the new pair is in place; said afterwards.
    let leftovers = writer.removed_stale().to_vec();
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
        read_jsonl(reader, &input, &args.field, &mut emit)?;
    } else {
        read_paragraphs(reader, &input, &mut emit)?;
    }
    bar.finish_and_clear();
    let summary = writer.finish()?;
    for (path, bytes) in leftovers {
        note(format_args!(
            "removed {} ({bytes} bytes), left by an interrupted write",
            path.display()
        ));
    }
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

/// Creates the directory the shard at `prefix` goes into, as `demo` and `launch` create theirs.
/// A prefix that names a directory is left to [`IndexedWriter::create`] to refuse.
fn create_parent(prefix: &Path) -> Result<()> {
    if prefix.as_os_str().to_string_lossy().ends_with(['/', '\\']) {
        return Ok(());
    }
    match prefix.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) if !dir.is_dir() => {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create the directory", e))
        }
        _ => Ok(()),
    }
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

/// How [`read_line`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A line, complete (its newline dropped, or the input's last line).
    Read,
    /// The end of the input, nothing read.
    End,
    /// The line passed the cap: `buf` holds `cap + 1` bytes, the rest is unread.
    TooLong,
}

/// Appends the next line, without its `\n`, to `buf`, reading no more than one byte past the
/// point where `buf` would exceed `cap` bytes.
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>, cap: usize) -> std::io::Result<Line> {
    let room = cap.saturating_sub(buf.len()) as u64 + 1;
    // std's `read_until` finds the newline with its optimized memchr, also in a debug build.
    let n = reader.by_ref().take(room).read_until(b'\n', buf)?;
    Ok(if n == 0 {
        Line::End
    } else if buf.last() == Some(&b'\n') {
        buf.pop();
        Line::Read
    } else if buf.len() > cap {
        Line::TooLong
    } else {
        Line::Read
    })
}

/// The error for a document longer than [`MAX_DOCUMENT_BYTES`], at `line`.
fn too_long(path: &Path, line: u64, what: &str) -> Error {
    Error::Input {
        path: path.to_path_buf(),
        line,
        reason: format!(
            "{what} passes {MAX_DOCUMENT_BYTES} bytes, the most one document can hold (with its \
             end-of-document id, the i32 length of a Megatron sequence); split it"
        ),
    }
}

/// Calls `emit` with each JSON line's `field` text; blank lines are skipped, and so is a UTF-8
/// byte order mark at the start of the input.
pub(super) fn read_jsonl(
    mut reader: impl BufRead,
    path: &Path,
    field: &str,
    emit: &mut impl FnMut(&[u8], u64) -> Result<()>,
) -> Result<()> {
    let mut read = 0u64;
    let mut line = Vec::new();
    for line_no in 1u64.. {
        line.clear();
        let bad = |reason: String| Error::Input {
            path: path.to_path_buf(),
            line: line_no,
            reason,
        };
        match read_line(&mut reader, &mut line, MAX_JSON_LINE)
            .map_err(|e| Error::io(path, "read", e))?
        {
            Line::End => break,
            Line::TooLong => return Err(too_long(path, line_no, "the line")),
            Line::Read => {}
        }
        read += line.len() as u64 + 1;
        let mut text = line.as_slice();
        if line_no == 1 {
            text = text.strip_prefix(BOM).unwrap_or(text);
        }
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let value: serde_json::Value = serde_json::from_slice(text).map_err(|e| {
            if text.starts_with(BOM) {
                bad(format!(
                    "not valid JSON: it starts with a UTF-8 byte order mark, which only the \
                     first line may carry ({e})"
                ))
            } else {
                bad(format!("not valid JSON: {e}"))
            }
        })?;
        let text = value
            .get(field)
            .ok_or_else(|| {
                bad(format!(
                    "no field \"{field}\" (use --field to pick another)"
                ))
            })?
            .as_str()
            .ok_or_else(|| bad(format!("field \"{field}\" is not a string")))?;
        if text.len() > MAX_DOCUMENT_BYTES {
            return Err(too_long(path, line_no, &format!("field \"{field}\"")));
        }
        emit(text.as_bytes(), read)?;
    }
    Ok(())
}

/// Calls `emit` with each paragraph: lines up to a blank line, joined by newlines (a `\r`
/// before a newline dropped, and a UTF-8 byte order mark at the start of the input). A
/// paragraph is refused as soon as it passes [`MAX_DOCUMENT_BYTES`].
pub(super) fn read_paragraphs(
    mut reader: impl BufRead,
    path: &Path,
    emit: &mut impl FnMut(&[u8], u64) -> Result<()>,
) -> Result<()> {
    let mut paragraph = Vec::new();
    let (mut read, mut first) = (0u64, 0u64);
    for line_no in 1u64.. {
        // The line is read straight into the paragraph, after its separating newline.
        let start = paragraph.len() + usize::from(!paragraph.is_empty());
        if !paragraph.is_empty() {
            paragraph.push(b'\n');
        }
        let got = read_line(&mut reader, &mut paragraph, MAX_DOCUMENT_BYTES)
            .map_err(|e| Error::io(path, "read", e))?;
        match got {
            Line::End => {
                paragraph.truncate(start.saturating_sub(1));
                break;
            }
            Line::TooLong => {
                let what = format!("the paragraph starting at line {}", first.max(1));
                return Err(too_long(path, line_no, &what));
            }
            Line::Read => {}
        }
        read += (paragraph.len() - start) as u64 + 1;
        if line_no == 1 && paragraph.starts_with(BOM) {
            paragraph.drain(..BOM.len());
        }
        if paragraph.last() == Some(&b'\r') && paragraph.len() > start {
            paragraph.pop();
        }
        if paragraph[start..].iter().all(u8::is_ascii_whitespace) {
            paragraph.truncate(start.saturating_sub(1));
            if !paragraph.is_empty() {
                emit(&paragraph, read)?;
                paragraph.clear();
            }
            continue;
        }
        if start == 0 {
            first = line_no;
        }
    }
    if !paragraph.is_empty() {
        emit(&paragraph, read)?;
    }
    Ok(())
}
