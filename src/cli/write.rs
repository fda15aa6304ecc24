//! `shardflow write`: JSON lines, plain text or Parquet, tokenized byte-level or with a Hugging
//! Face `tokenizer.json`, into Megatron shards (one pair, or `PREFIX_00000`, ... when split).
//!
//! The work is [`crate::ingest`]'s; this file turns the arguments into its configs, draws the
//! progress bar and prints the summary: one `wrote` line per shard pair and the skipped records
//! on stdout (the same for every run over the same input), the time and rate on stderr.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, ValueEnum};
use indicatif::ProgressBar;

use super::{Out, note};
use crate::ingest::encode::{BYTE_LEVEL_EOD, Encoder, Engine};
use crate::ingest::input::{Documents, InputConfig, InputFormat};
use crate::ingest::pipeline::{IngestConfig, IngestProgress, ingest};
use crate::ingest::{BadKind, Document};
use crate::{Dtype, Error, Result};

#[derive(Debug, Args)]
pub struct WriteArgs {
    /// An input: a file, a directory (its files, recursively), a glob (`data/*.jsonl.zst`), or
    /// `-` for stdin. Repeat it for several; files are read in sorted path order.
    #[arg(long, required = true, value_name = "PATH")]
    input: Vec<PathBuf>,
    /// The output prefix: PREFIX.idx and PREFIX.bin are written (an existing pair is replaced
    /// atomically); with --max-tokens-per-shard, PREFIX_00000.idx/.bin, PREFIX_00001, ...
    #[arg(long, value_name = "PREFIX")]
    output: PathBuf,
    /// The JSON field (a dotted path for a nested one: `meta.text`), or the Parquet string
    /// column, that holds a document's text.
    #[arg(long, default_value = "text")]
    field: String,
    /// The input format. auto: by extension (.jsonl, .json, .ndjson, also .gz or .zst
    /// compressed: JSON lines; .txt, .text, .md: text; .parquet: Parquet), otherwise JSON lines
    /// when the first non-blank byte is `{`.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    format: Format,
    /// A Hugging Face tokenizer.json to encode with; without it, byte-level: each UTF-8 byte
    /// is its own id and 256 ends a document.
    #[arg(long, value_name = "PATH")]
    tokenizer: Option<PathBuf>,
    /// What encodes with --tokenizer: fast (shardflow's byte-level BPE engine, the same ids
    /// several times faster; an error for a tokenizer it does not reproduce exactly), hf
    /// (Hugging Face tokenizers) or auto (fast where it reproduces the tokenizer, else hf).
    /// The timing line says which ran, and why not fast.
    #[arg(long, value_enum, default_value_t = EngineArg::Auto)]
    engine: EngineArg,
    /// The id appended after each document: a token of the vocabulary (`<|endoftext|>`) or an
    /// id (all digits). Default: 256 without --tokenizer; none with one.
    #[arg(long, value_name = "TOKEN|ID")]
    eod: Option<String>,
    /// The id put in front of each document: a token of the vocabulary or an id (all digits).
    #[arg(long, value_name = "TOKEN|ID")]
    bos: Option<String>,
    /// The stored id type: auto (u16 for vocabularies below 65 500 ids, else i32, as
    /// Megatron-LM chooses), u16, i16, i32, i64.
    #[arg(long, value_enum, default_value_t = StoredDtype::Auto)]
    dtype: StoredDtype,
    /// Threads that tokenize (the output is the same for any number). Default: the available
    /// cores.
    #[arg(long, value_name = "N")]
    threads: Option<NonZeroUsize>,
    /// At most N tokens per shard pair (a document is never split: one that would not fit
    /// starts the next pair): PREFIX_00000, PREFIX_00001, ..., read as one dataset by
    /// `--data DIR`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_tokens_per_shard: Option<u64>,
    /// Count and skip bad records (malformed JSON, a missing or non-string field, invalid
    /// UTF-8, an empty document) instead of stopping at the first; the summary lists them.
    #[arg(long)]
    skip_bad: bool,
    /// No progress bar, no timing line (the summary on stdout stays).
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum EngineArg {
    Auto,
    Hf,
    Fast,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Auto,
    Jsonl,
    Text,
    Parquet,
}

impl Format {
    fn input_format(self) -> InputFormat {
        match self {
            Format::Auto => InputFormat::Auto,
            Format::Jsonl => InputFormat::Jsonl,
            Format::Text => InputFormat::Text,
            Format::Parquet => InputFormat::Parquet,
        }
    }
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
    let encoder = match &args.tokenizer {
        Some(path) => Encoder::from_file(path)?.with_engine(match args.engine {
            EngineArg::Auto => Engine::Auto,
            EngineArg::Hf => Engine::Hf,
            EngineArg::Fast => Engine::Fast,
        })?,
        None => Encoder::byte_level(),
    };
    let eod = match (&args.eod, &args.tokenizer) {
        (Some(token), _) => Some(token_id(&encoder, "--eod", token)?),
        (None, None) => Some(BYTE_LEVEL_EOD),
        (None, Some(_)) => None,
    };
    let bos = args
        .bos
        .as_deref()
        .map(|token| token_id(&encoder, "--bos", token))
        .transpose()?;
    let threads = args
        .threads
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get);
    let docs = Documents::open(&InputConfig {
        inputs: args.input.clone(),
        field: args.field.clone(),
        format: args.format.input_format(),
        skip_bad: args.skip_bad,
    })?;
    let config = IngestConfig {
        output: args.output.clone(),
        eod,
        bos,
        dtype: args.dtype.dtype(),
        threads,
        max_tokens_per_shard: args.max_tokens_per_shard,
        window: IngestConfig::default_window(threads),
    };
    create_parent(&args.output)?;

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        let template = match docs.total_bytes() {
            Some(_) => "{spinner} [{bar:30}] {bytes}/{total_bytes} {msg} ({elapsed}, ETA {eta})",
            None => "{spinner} {bytes} {msg} ({elapsed})",
        };
        super::progress_bar(docs.total_bytes(), template)
    };
    // The reader runs inside `ingest`; it leaves what the bar and the summary need here.
    let read = Arc::new(ReadState::default());
    let counted = Counted {
        docs,
        read: Arc::clone(&read),
    };
    let started = std::time::Instant::now();
    // `ingest` calls this on this thread, a few times a second at most.
    let summary = ingest(counted, &encoder, &config, |p: &IngestProgress| {
        bar.set_position(read.bytes.load(Ordering::Relaxed));
        bar.set_message(format!(
            "{} documents, {} tokens/s",
            p.documents,
            rate(p.tokens, started.elapsed())
        ));
    });
    bar.finish_and_clear();
    let summary = summary?;
    for (path, bytes) in &summary.removed_stale {
        note(format_args!(
            "removed {} ({bytes} bytes), left by an interrupted write",
            path.display()
        ));
    }
    for path in &summary.removed_shards {
        note(format_args!(
            "removed {}, a shard of an earlier write to this prefix that split into more",
            path.display()
        ));
    }

    let mut out = Out::new();
    for s in &summary.shards {
        out.print(format_args!(
            "wrote {}.idx/.bin: {} documents, {} sequences, {} tokens, dtype {}\n",
            s.prefix.display(),
            s.documents,
            s.sequences,
            s.tokens,
            s.dtype
        ))?;
    }
    if summary.shards.len() > 1 {
        out.print(format_args!(
            "total: {} documents, {} tokens in {} shards\n",
            summary.documents,
            summary.tokens,
            summary.shards.len()
        ))?;
    }
    let skipped = read.skipped.lock().expect("no holder panics").clone();
    if let Some(line) = skipped_line(&skipped) {
        out.print(format_args!("{line}\n"))?;
    }
    out.finish()?;
    if !args.quiet {
        let seconds = summary.seconds;
        note(format_args!(
            "{} documents, {} tokens in {seconds:.2} s: {} tokens/s (engine {})",
            summary.documents,
            summary.tokens,
            rate(summary.tokens, Duration::from_secs_f64(seconds)),
            encoder.engine()
        ));
        if let (EngineArg::Auto, Some(why)) = (args.engine, encoder.fallback_reason()) {
            note(format_args!(
                "the fast engine does not reproduce this tokenizer exactly ({why}): \
                 tokenizers encoded"
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--eod`/`--bos` as an id ([`Encoder::id_of`]: all digits is an id, anything else a token of
/// the vocabulary); its error names the option.
fn token_id(encoder: &Encoder, option: &str, token: &str) -> Result<u32> {
    encoder.id_of(token).map_err(|e| match e {
        Error::Config(reason) => Error::Config(format!("{option} {token}: {reason}")),
        e => e,
    })
}

/// Creates the directory the shards at `prefix` go into, as `demo` and `launch` create theirs.
/// A prefix that names a directory is left to the writer to refuse.
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

/// `skipped 3 bad records: 2 malformed JSON, 1 empty document`, or `None` when none was.
fn skipped_line(skipped: &BTreeMap<BadKind, u64>) -> Option<String> {
    let total: u64 = skipped.values().sum();
    if total == 0 {
        return None;
    }
    let kinds: Vec<String> = BadKind::ALL
        .iter()
        .filter_map(|k| {
            skipped
                .get(k)
                .filter(|&&n| n > 0)
                .map(|n| format!("{n} {}", k.name()))
        })
        .collect();
    let records = if total == 1 { "record" } else { "records" };
    Some(format!(
        "skipped {total} bad {records}: {}",
        kinds.join(", ")
    ))
}

/// `n` per second over `elapsed`, rounded, with thousands grouped for reading (`1 234 567`).
fn rate(n: u64, elapsed: Duration) -> String {
    let per_second = (n as f64 / elapsed.as_secs_f64().max(1e-9)).round() as u64;
    let digits = per_second.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(' ');
        }
        grouped.push(c);
    }
    grouped
}

/// What the reader leaves for the progress bar and the summary.
#[derive(Debug, Default)]
struct ReadState {
    /// Input bytes read so far.
    bytes: AtomicU64,
    /// Records skipped, by kind (set when the input ends).
    skipped: Mutex<BTreeMap<BadKind, u64>>,
}

/// The documents, leaving the bytes read and, at the end, the skipped counts in a [`ReadState`].
struct Counted {
    docs: Documents,
    read: Arc<ReadState>,
}

impl Iterator for Counted {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Result<Document>> {
        let next = self.docs.next();
        self.read
            .bytes
            .store(self.docs.bytes_read(), Ordering::Relaxed);
        if next.is_none() {
            *self.read.skipped.lock().expect("no holder panics") = self.docs.skipped().clone();
        }
        next
    }
}
