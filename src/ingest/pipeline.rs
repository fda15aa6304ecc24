//! Ordered parallel encoding into one shard or a numbered series of shards.
//!
//! ```text
//! reader thread ──(seq, documents)──▶ workers (encode) ──(seq, ids)──▶ writer (this thread)
//!       ▲                                                                │ in seq order
//!       └──────────────── one credit back per batch written ────────────┘
//! ```
//!
//! Documents travel in numbered batches (at most 64 documents and about 1 MiB of text: one
//! message per document would cost more than the fast engine takes to encode a short one).
//! The reader takes a credit before it reads each batch; the writer gives one back after it
//! writes one. Credits times documents per batch is at most `window`, so at most `window`
//! documents are read and not yet written (their text or their ids in memory, in channels or
//! in the writer's reorder buffer), whatever the input size: memory is bounded by `window`
//! times the largest document, and by the number of batches in flight times 1 MiB plus one
//! document (with the defaults, 8 batches on 2 threads: about 16 MiB of text and ids). The
//! writer writes in input order, so the shards are byte-identical for any thread count, and
//! the error it reports is the first one in input order.
//!
//! Each document becomes one sequence and one document of the `.idx`: `[bos] + ids + [eod]`,
//! as Megatron-LM's `preprocess_data.py --append-eod` writes it (without sentence splitting).
//! A document whose text encodes to no id is written as Megatron writes it: an empty
//! document (no sequence, no bos or eod).
//!
//! Each worker encodes one document at a time (with `tokenizers`, `Tokenizer::encode_fast`,
//! which never uses its rayon pool), so `threads` is the whole parallelism.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::encode::{EncodeSession, Encoder};
use super::{Document, Location};
use crate::error::{Error, Result};
use crate::shard::{ShardSummary, shard_prefixes};
use crate::{Dtype, IndexedWriter};

/// The most shards a split output may have: five digits keep `PREFIX_NNNNN` sorting by name
/// in number order, which is how a directory of shards is read.
pub const MAX_SHARDS: usize = 100_000;

/// A batch of documents (what one channel message carries) holds about this much text at
/// most, besides the document that crosses it.
const BATCH_BYTES: usize = 256 << 10;

/// A batch holds at most this many documents: per-document messages would cost more than
/// encoding short documents with the fast engine.
const BATCH_DOCS: usize = 1024;

/// How often the progress callback is called at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// How to write: where, with which ids around each document, how parallel, how split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestConfig {
    /// The output prefix: `PREFIX.idx`/`PREFIX.bin`, or `PREFIX_00000.idx`/`.bin`, ... when
    /// split. Its directory must exist.
    pub output: PathBuf,
    /// The id appended after each document (Megatron's `--append-eod`).
    pub eod: Option<u32>,
    /// The id put in front of each document.
    pub bos: Option<u32>,
    /// The stored dtype; `None`: the encoder's [`Encoder::default_dtype`].
    pub dtype: Option<Dtype>,
    /// Encoding threads (at least 1).
    pub threads: usize,
    /// At most this many tokens per shard (a document is never split: one longer than this
    /// gets a shard of its own); `None`: one shard.
    pub max_tokens_per_shard: Option<u64>,
    /// Documents read and not yet written, at most (at least 1).
    pub window: usize,
}

impl IngestConfig {
    /// One shard at `output`, no bos or eod, the encoder's dtype, one thread per available
    /// core and a window of 16 384 documents per thread.
    pub fn new(output: impl Into<PathBuf>) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        IngestConfig {
            output: output.into(),
            eod: None,
            bos: None,
            dtype: None,
            threads,
            max_tokens_per_shard: None,
            window: Self::default_window(threads),
        }
    }

    /// The default window for `threads` threads: 16 384 documents each (up to 16 batches).
    pub fn default_window(threads: usize) -> usize {
        16384 * threads.max(1)
    }

    /// The prefix of shard `k` of a split output: `PREFIX_0000k`.
    pub fn shard_prefix(&self, k: usize) -> PathBuf {
        let mut s = OsString::from(self.output.as_os_str());
        s.push(format!("_{k:05}"));
        PathBuf::from(s)
    }

    /// Documents per batch and batches in flight: at most `window` documents together, and
    /// at least two batches per thread where the window allows.
    fn batching(&self) -> (usize, usize) {
        let batch_docs = (self.window / (2 * self.threads)).clamp(1, BATCH_DOCS);
        (batch_docs, (self.window / batch_docs).max(1))
    }

    fn check(&self) -> Result<()> {
        if self.threads == 0 {
            return Err(Error::Config(
                "ingest threads: 0; at least 1 is needed".into(),
            ));
        }
        if self.window == 0 {
            return Err(Error::Config(
                "ingest window: 0 documents; at least 1 is needed".into(),
            ));
        }
        if self.max_tokens_per_shard == Some(0) {
            return Err(Error::Config(
                "max tokens per shard: 0; give at least 1 (or none for one shard)".into(),
            ));
        }
        Ok(())
    }
}

/// How far an ingest has come, as the progress callback sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestProgress {
    /// Documents written.
    pub documents: u64,
    /// Tokens written (bos and eod included).
    pub tokens: u64,
}

/// What an ingest wrote.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct IngestSummary {
    /// Documents written.
    pub documents: u64,
    /// Tokens written (bos and eod included).
    pub tokens: u64,
    /// The shards, in order.
    pub shards: Vec<ShardSummary>,
    /// Files left by earlier, killed writes to these prefixes, with their sizes, removed once
    /// the new pairs were in place.
    pub removed_stale: Vec<(PathBuf, u64)>,
    /// Shards `PREFIX_NNNNN` of an earlier, longer split write, numbered past this one's last:
    /// removed, so that reading the directory gives this write's documents only.
    pub removed_shards: Vec<PathBuf>,
    /// Seconds from start to the last pair in place.
    pub seconds: f64,
}

/// Encodes `docs` with `encoder` and writes them, in input order, as `config` says; calls
/// `progress` now and then (on this thread) and once at the end.
///
/// # Errors
///
/// The first error in input order: the input's, or [`Error::Input`] / [`Error::InputFile`]
/// naming the document an encoding failed for; the writer's ([`Error::TokenOutOfRange`] for
/// an id the dtype cannot hold, [`Error::Io`]); [`Error::Config`] for a bad config;
/// [`Error::Spawn`].
/// Nothing of this write is left: the shard in progress is dropped, shards it already put in
/// place are removed.
pub fn ingest(
    docs: impl Iterator<Item = Result<Document>> + Send,
    encoder: &Encoder,
    config: &IngestConfig,
    mut progress: impl FnMut(&IngestProgress),
) -> Result<IngestSummary> {
    config.check()?;
    let start = Instant::now();
    let mut out = Output::create(config, config.dtype.unwrap_or(encoder.default_dtype()))?;
    let stop = AtomicBool::new(false);
    let (batch_docs, credits) = config.batching();
    let (work_tx, work_rx) = sync_channel::<Batch>(credits);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (done_tx, done_rx) = channel::<(u64, Encoded)>();
    let (credit_tx, credit_rx) = sync_channel::<()>(credits);
    for _ in 0..credits {
        credit_tx
            .send(())
            .expect("the credit channel holds a whole window");
    }
    let written = std::thread::scope(|s| -> Result<()> {
        let stop = &stop;
        let reader_done = done_tx.clone();
        std::thread::Builder::new()
            .name("ingest-reader".into())
            .spawn_scoped(s, move || {
                read(docs, batch_docs, credit_rx, work_tx, reader_done, stop)
            })
            .map_err(|error| Error::Spawn {
                what: "the ingest reader thread".into(),
                error,
            })?;
        for t in 0..config.threads {
            let (rx, tx) = (Arc::clone(&work_rx), done_tx.clone());
            std::thread::Builder::new()
                .name(format!("ingest-encode-{t}"))
                .spawn_scoped(s, move || encode(encoder, config, rx, tx, stop))
                .map_err(|error| Error::Spawn {
                    what: format!("ingest encoding thread {} of {}", t + 1, config.threads),
                    error,
                })?;
        }
        drop(done_tx);
        let r = write(&mut out, done_rx, credit_tx, &mut progress);
        // Whatever happened, the other threads stop now: the reader finds no credit and the
        // stop flag, the workers an empty, closed queue.
        stop.store(true, Ordering::Relaxed);
        r
    });
    // On an error, `out` is dropped: nothing of this write stays.
    written?;
    let (documents, tokens) = (out.documents, out.tokens);
    let Written {
        shards,
        removed_stale,
        removed_shards,
    } = out.finish()?;
    let summary = IngestSummary {
        documents,
        tokens,
        shards,
        removed_stale,
        removed_shards,
        seconds: start.elapsed().as_secs_f64(),
    };
    progress(&IngestProgress { documents, tokens });
    Ok(summary)
}

/// The reader thread: hands the documents to the workers in numbered batches of at most
/// `batch_docs` documents (and about [`BATCH_BYTES`] of text), one credit each. An input
/// error ends the reading: the batch before it goes to the workers, the error straight to the
/// writer as a batch of its own.
fn read(
    mut docs: impl Iterator<Item = Result<Document>>,
    batch_docs: usize,
    credits: Receiver<()>,
    work: SyncSender<Batch>,
    done: Sender<(u64, Encoded)>,
    stop: &AtomicBool,
) {
    for seq in 0u64.. {
        if credits.recv().is_err() || stop.load(Ordering::Relaxed) {
            return;
        }
        let mut batch = Vec::with_capacity(batch_docs);
        let mut bytes = 0;
        let mut failed = None;
        while batch.len() < batch_docs && bytes < BATCH_BYTES {
            match docs.next() {
                Some(Ok(doc)) => {
                    bytes += doc.text.len();
                    batch.push(doc);
                }
                Some(Err(e)) => {
                    failed = Some(e);
                    break;
                }
                None => break,
            }
        }
        let end = failed.is_some() || batch.len() < batch_docs && bytes < BATCH_BYTES;
        let mut error_seq = seq;
        if !batch.is_empty() {
            if work.send((seq, batch)).is_err() {
                return;
            }
            error_seq += 1;
        }
        if let Some(e) = failed {
            let _ = done.send((error_seq, Encoded::failed(e)));
        }
        if end {
            return;
        }
    }
}

/// A worker thread: encodes batches of documents into their whole sequences,
/// `[bos] + ids + [eod]` each.
fn encode(
    encoder: &Encoder,
    config: &IngestConfig,
    work: Arc<Mutex<Receiver<Batch>>>,
    done: Sender<(u64, Encoded)>,
    stop: &AtomicBool,
) {
    let mut session = encoder.session();
    loop {
        // The lock is held only to take one batch; a poisoned lock means a sibling
        // panicked, and the scope re-raises that panic.
        let next = match work.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((seq, batch)) = next else { return };
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let mut encoded = Encoded {
            ids: Vec::with_capacity(batch.iter().map(|d| d.text.len() / 3 + 2).sum()),
            ends: Vec::with_capacity(batch.len()),
            error: None,
        };
        for doc in &batch {
            match append_sequence(&mut session, encoder, config, doc, &mut encoded.ids) {
                Ok(()) => encoded.ends.push(encoded.ids.len()),
                Err(e) => {
                    encoded.error = Some(e);
                    break;
                }
            }
        }
        drop(batch);
        if done.send((seq, encoded)).is_err() {
            return;
        }
    }
}

/// A numbered batch of documents, as the reader hands them out.
type Batch = (u64, Vec<Document>);

/// A batch's sequences, end to end in `ids`, each ending at its entry of `ends`; or, after
/// the sequences before it, the first error of the batch.
struct Encoded {
    ids: Vec<u32>,
    ends: Vec<usize>,
    error: Option<Error>,
}

impl Encoded {
    /// A batch of one error (the input's).
    fn failed(error: Error) -> Self {
        Encoded {
            ids: Vec::new(),
            ends: Vec::new(),
            error: Some(error),
        }
    }
}

/// Appends the sequence stored for `doc` to `ids`.
fn append_sequence(
    session: &mut EncodeSession<'_>,
    encoder: &Encoder,
    config: &IngestConfig,
    doc: &Document,
    ids: &mut Vec<u32>,
) -> Result<()> {
    let start = ids.len();
    ids.extend(config.bos);
    session
        .try_encode(&doc.text, ids)
        .map_err(|reason| at_document(&doc.at, format!("{}: {reason}", encoder.describe())))?;
    if ids.len() == start + usize::from(config.bos.is_some()) {
        // Megatron appends nothing to a document of no ids.
        ids.truncate(start);
        return Ok(());
    }
    ids.extend(config.eod);
    let len = ids.len() - start;
    if len > i32::MAX as usize {
        return Err(at_document(
            &doc.at,
            format!(
                "the document encodes to {len} ids, more than a Megatron sequence's i32 length \
                 holds; split it"
            ),
        ));
    }
    Ok(())
}

/// An error about the document at `at`.
fn at_document(at: &Location, reason: String) -> Error {
    match at {
        Location::Line { path, line } => Error::Input {
            path: path.clone(),
            line: *line,
            reason,
        },
        Location::Row { path, group, row } => Error::InputFile {
            path: path.clone(),
            row: Some((*group, *row)),
            reason,
        },
    }
}

/// The writer loop: batches of sequences in input order, one credit back for each.
fn write(
    out: &mut Output,
    done: Receiver<(u64, Encoded)>,
    credits: SyncSender<()>,
    progress: &mut impl FnMut(&IngestProgress),
) -> Result<()> {
    let mut pending: BTreeMap<u64, Encoded> = BTreeMap::new();
    let mut next = 0u64;
    let mut last_report = Instant::now();
    // Ends when every sender is gone: the reader has read all and the workers are done.
    for (seq, encoded) in done.iter() {
        pending.insert(seq, encoded);
        while let Some(encoded) = pending.remove(&next) {
            let mut start = 0;
            for &end in &encoded.ends {
                out.add(&encoded.ids[start..end])?;
                start = end;
            }
            if let Some(e) = encoded.error {
                return Err(e);
            }
            next += 1;
            // The reader may have ended (all read): a credit nobody takes is fine.
            let _ = credits.try_send(());
            if last_report.elapsed() >= PROGRESS_EVERY {
                last_report = Instant::now();
                progress(&IngestProgress {
                    documents: out.documents,
                    tokens: out.tokens,
                });
            }
        }
    }
    match pending.into_iter().next() {
        // A worker that panicked took its batch with it; the scope re-raises the panic.
        Some((seq, _)) => Err(Error::CheckFailed(format!(
            "ingest: batch {next} never came back from the encoding threads (batch {seq} did)"
        ))),
        None => Ok(()),
    }
}

/// What [`Output::finish`] leaves: the shards, and what it removed.
struct Written {
    shards: Vec<ShardSummary>,
    removed_stale: Vec<(PathBuf, u64)>,
    removed_shards: Vec<PathBuf>,
}

/// The shard being written, and those already in place.
struct Output<'c> {
    config: &'c IngestConfig,
    dtype: Dtype,
    writer: Option<IndexedWriter>,
    /// Tokens in the current shard.
    in_shard: u64,
    done: Vec<ShardSummary>,
    removed_stale: Vec<(PathBuf, u64)>,
    documents: u64,
    tokens: u64,
}

impl<'c> Output<'c> {
    /// Starts the first shard (so that a bad output fails before any work).
    fn create(config: &'c IngestConfig, dtype: Dtype) -> Result<Self> {
        let mut out = Output {
            config,
            dtype,
            writer: None,
            in_shard: 0,
            done: Vec::new(),
            removed_stale: Vec::new(),
            documents: 0,
            tokens: 0,
        };
        out.start_shard()?;
        Ok(out)
    }

    fn prefix(&self, k: usize) -> PathBuf {
        match self.config.max_tokens_per_shard {
            Some(_) => self.config.shard_prefix(k),
            None => self.config.output.clone(),
        }
    }

    fn start_shard(&mut self) -> Result<()> {
        let k = self.done.len();
        if k >= MAX_SHARDS {
            return Err(Error::Config(format!(
                "{}: more than {MAX_SHARDS} shards; raise the tokens per shard",
                self.config.output.display()
            )));
        }
        let writer = IndexedWriter::create(self.prefix(k), Some(self.dtype))?;
        self.removed_stale.extend_from_slice(writer.removed_stale());
        self.writer = Some(writer);
        self.in_shard = 0;
        Ok(())
    }

    fn writer(&mut self) -> &mut IndexedWriter {
        self.writer
            .as_mut()
            .expect("a shard is open from create until finish")
    }

    /// Adds one document, first putting the current shard in place when it would not fit.
    fn add(&mut self, ids: &[u32]) -> Result<()> {
        let n = ids.len() as u64;
        if let Some(max) = self.config.max_tokens_per_shard
            && n > 0
            && self.in_shard > 0
            && self.in_shard + n > max
        {
            let full = self.writer.take().expect("a shard is open");
            self.done.push(full.finish()?);
            self.start_shard()?;
        }
        let w = self.writer();
        if !ids.is_empty() {
            w.add_sequence(ids)?;
        }
        w.end_document()?;
        self.in_shard += n;
        self.documents += 1;
        self.tokens += n;
        Ok(())
    }

    /// Puts the last shard in place and removes higher-numbered shards of an earlier write.
    fn finish(mut self) -> Result<Written> {
        let last = self.writer.take().expect("a shard is open");
        // On an error here, dropping `self` removes the shards already in place.
        self.done.push(last.finish()?);
        // Every shard is in place: from here on they stay.
        let shards = std::mem::take(&mut self.done);
        let removed_shards = match self.config.max_tokens_per_shard {
            Some(_) => self.remove_leftovers(shards.len())?,
            None => Vec::new(),
        };
        Ok(Written {
            shards,
            removed_stale: std::mem::take(&mut self.removed_stale),
            removed_shards,
        })
    }

    /// Removes `PREFIX_NNNNN` pairs numbered at or past this write's shard count.
    fn remove_leftovers(&self, count: usize) -> Result<Vec<PathBuf>> {
        let output = &self.config.output;
        let dir = match output.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let Some(name) = output.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return Ok(Vec::new());
        };
        let prefixes = match shard_prefixes(&dir) {
            Ok(p) => p,
            Err(Error::EmptyDirectory { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut removed = Vec::new();
        for prefix in prefixes {
            let Some(file) = prefix.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            let number = file
                .strip_prefix(name.as_str())
                .and_then(|rest| rest.strip_prefix('_'))
                .filter(|digits| digits.len() == 5 && digits.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|digits| digits.parse::<usize>().ok());
            if number.is_some_and(|k| k >= count) {
                for ext in [".idx", ".bin"] {
                    let path = sibling(&prefix, ext);
                    match std::fs::remove_file(&path) {
                        Ok(()) => removed.push(path),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(Error::io(&path, "remove", e)),
                    }
                }
            }
        }
        Ok(removed)
    }
}

/// An output dropped before [`Output::finish`] ends (an error, a panic) takes its shards with
/// it: the shard in progress leaves nothing (its temporary files go), and the shards this
/// write already put in place are removed.
impl Drop for Output<'_> {
    fn drop(&mut self) {
        self.writer = None;
        for s in self.done.drain(..) {
            // The .idx first: a lone .bin is no shard to a reader.
            for path in [sibling(&s.prefix, ".idx"), sibling(&s.prefix, ".bin")] {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(
                        path = %path.display(),
                        error = %e,
                        "cannot remove a shard of a failed ingest"
                    );
                }
            }
        }
    }
}

/// `prefix` with `ext` appended (`data/web_00001` → `data/web_00001.idx`).
fn sibling(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = OsString::from(prefix.as_os_str());
    s.push(ext);
    PathBuf::from(s)
}
