//! Text to shards: input readers ([`input`]: JSON lines, plain text, gzip and zstd, Parquet, in
//! sorted path order), the encoder ([`encode`]: byte-level, or a Hugging Face `tokenizer.json`
//! through the `tokenizers` crate or, for byte-level BPE, shardflow's exact fast engine),
//! ordered parallel encoding and split outputs ([`pipeline`]), written through the shard writer
//! (atomic pairs, Megatron layout).
//!
//! Data flows one way: [`input::Documents`] yields [`Document`]s (text and where it came from) in
//! input order; [`pipeline::ingest`] encodes them on `threads` threads within a bounded window and
//! writes them in input order, so the shards are byte-identical for any thread count.

pub mod encode;
mod fast_bpe;
pub mod input;
mod json_field;
pub mod pipeline;

use std::path::PathBuf;

/// Where a document came from: for errors and `--skip-bad` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// Line `line` (1-based) of a JSON lines or text file (the first line of a paragraph).
    Line {
        /// The file (`<stdin>` for standard input).
        path: PathBuf,
        /// 1-based.
        line: u64,
    },
    /// Row `row` (0-based, within the group) of row group `group` of a Parquet file.
    Row {
        /// The file.
        path: PathBuf,
        /// 0-based row group.
        group: usize,
        /// 0-based row within the group.
        row: usize,
    },
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Line { path, line } => write!(f, "{} line {line}", path.display()),
            Location::Row { path, group, row } => {
                write!(f, "{} row group {group} row {row}", path.display())
            }
        }
    }
}

/// One document of the input, in input order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// Its text.
    pub text: String,
    /// Where it came from.
    pub at: Location,
}

/// The kinds of bad input that `--skip-bad` counts and skips (otherwise each is an error naming
/// the file and line, or row group and row).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum BadKind {
    /// A line that is not JSON (or not a JSON object).
    MalformedJson,
    /// A JSON object, or a Parquet row, without the field (a null counts as missing).
    MissingField,
    /// The field holds something other than a string.
    NotAString,
    /// Bytes that are not UTF-8.
    InvalidUtf8,
    /// A document with no text (or only whitespace).
    EmptyDocument,
}

impl BadKind {
    /// Every kind, in report order.
    pub const ALL: [BadKind; 5] = [
        BadKind::MalformedJson,
        BadKind::MissingField,
        BadKind::NotAString,
        BadKind::InvalidUtf8,
        BadKind::EmptyDocument,
    ];

    /// The name the summary prints.
    pub fn name(self) -> &'static str {
        match self {
            BadKind::MalformedJson => "malformed JSON",
            BadKind::MissingField => "missing field",
            BadKind::NotAString => "not a string",
            BadKind::InvalidUtf8 => "invalid UTF-8",
            BadKind::EmptyDocument => "empty document",
        }
    }
}
