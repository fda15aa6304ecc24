//! The crate's one error type. Every variant names the file, offset, dataset or rank concerned,
//! so that a message read in a training log tells the user where to look.

use std::path::{Path, PathBuf};

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in shardflow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file the caller named does not exist.
    #[error("{path}: file not found", path = .path.display())]
    MissingFile {
        /// The missing file.
        path: PathBuf,
    },

    /// An operating-system error on a file. The message includes the system's reason, so the
    /// error has no separate source (a log line shows it once).
    #[error("{path}: cannot {action}: {error}", path = .path.display())]
    Io {
        /// The file concerned (`<stdout>` for the command's output).
        path: PathBuf,
        /// What was being done: "open", "map", "write", …
        action: &'static str,
        /// The underlying error.
        error: std::io::Error,
    },

    /// The directory a file should be written into does not exist.
    #[error("{path}: directory not found; create it first", path = .path.display())]
    MissingDirectory {
        /// The directory.
        path: PathBuf,
    },

    /// A path that should be a regular file is something else (a directory, a named pipe, …).
    #[error("{path}: is {found}, not a regular file", path = .path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is: "a directory", "a named pipe", …
        found: &'static str,
    },

    /// The two files of a shard do not belong together (one is missing, or they come from
    /// different writes): reading them would give tokens of neither version.
    #[error("{idx} and {bin} are not one shard: {reason}", idx = .idx.display(), bin = .bin.display())]
    UnpairedShard {
        /// The `.idx` file.
        idx: PathBuf,
        /// The `.bin` file.
        bin: PathBuf,
        /// What does not match, and what to do.
        reason: String,
    },

    /// shardflow's integrity trailer after the document indices is damaged, or the index bytes
    /// no longer match the hash the writer recorded there.
    #[error("{path} offset {offset}: {reason}", path = .path.display())]
    BadTrailer {
        /// The `.idx` file.
        path: PathBuf,
        /// Byte offset of the trailer field concerned.
        offset: u64,
        /// What is wrong.
        reason: String,
    },

    /// The `.idx` does not start with Megatron's magic `MMIDIDX\0\0`.
    #[error(
        "{path} offset 0: bad magic {found}, expected 4d4d49444944580000 (\"MMIDIDX\\0\\0\"); \
         is this a Megatron .idx file?",
        path = .path.display()
    )]
    BadMagic {
        /// The `.idx` file.
        path: PathBuf,
        /// The bytes found, in hex.
        found: String,
    },

    /// The `.idx` header has a version other than 1.
    #[error(
        "{path} offset {offset}: unsupported index version {version}; shardflow reads version 1",
        path = .path.display()
    )]
    UnsupportedVersion {
        /// The `.idx` file.
        path: PathBuf,
        /// Byte offset of the version field.
        offset: u64,
        /// The version found.
        version: u64,
    },

    /// The dtype code is not one Megatron defines.
    #[error(
        "{path} offset {offset}: unknown dtype code {code}; Megatron defines 1..=8",
        path = .path.display()
    )]
    UnknownDtype {
        /// The `.idx` file.
        path: PathBuf,
        /// Byte offset of the dtype code.
        offset: u64,
        /// The code found.
        code: u8,
    },

    /// The dtype is a float type: the shard holds values, not token ids.
    #[error(
        "{path} offset {offset}: dtype {dtype} holds floating-point values, not token ids",
        path = .path.display()
    )]
    NotTokenIds {
        /// The `.idx` file.
        path: PathBuf,
        /// Byte offset of the dtype code.
        offset: u64,
        /// The float dtype found.
        dtype: &'static str,
    },

    /// The `.idx` is too short for the arrays its header announces.
    #[error(
        "{path}: the {what} array needs the file to reach byte {needed}, but it ends at byte {len} \
         (truncated, or a corrupt count in the header)",
        path = .path.display()
    )]
    TruncatedIndex {
        /// The `.idx` file.
        path: PathBuf,
        /// Which part does not fit: "header", "lengths", "pointers", "document indices".
        what: &'static str,
        /// The file length needed.
        needed: u128,
        /// The file length found.
        len: u64,
    },

    /// A sequence length is negative.
    #[error(
        "{path} offset {offset}: sequence {sequence} has negative length {length}",
        path = .path.display()
    )]
    NegativeLength {
        /// The `.idx` file.
        path: PathBuf,
        /// Byte offset of the length entry.
        offset: u64,
        /// The sequence.
        sequence: u64,
        /// The length found.
        length: i64,
    },

    /// A pointer is not where the lengths before it put it.
    #[error(
        "{path} offset {offset}: sequence {sequence} points to byte {found} of the .bin, but the \
         lengths before it end at byte {expected}",
        path = .path.display()
    )]
    BadPointer {
        /// The `.idx` file.
        path: PathBuf,
        /// Byte offset of the pointer entry.
        offset: u64,
        /// The sequence.
        sequence: u64,
        /// The pointer found.
        found: i64,
        /// The pointer the lengths imply.
        expected: i64,
    },

    /// A sequence runs past the end of the `.bin`.
    #[error(
        "{path} offset {offset}: sequence {sequence} ends at byte {end} of {bin}, which holds only \
         {bin_len} bytes",
        path = .path.display(), bin = .bin.display()
    )]
    SequenceOutOfBin {
        /// The `.idx` file.
        path: PathBuf,
        /// Byte offset of the sequence's length entry in the `.idx`.
        offset: u64,
        /// The sequence.
        sequence: u64,
        /// The `.bin` file.
        bin: PathBuf,
        /// The byte where the sequence ends.
        end: u128,
        /// The `.bin` length.
        bin_len: u64,
    },

    /// The document indices break a rule: start at 0, rise monotonically, end at N.
    #[error(
        "{path} offset {offset}: document index entry {entry} is {value}, but {rule}",
        path = .path.display()
    )]
    BadDocumentIndex {
        /// The `.idx` file.
        path: PathBuf,
        /// Byte offset of the entry (or of where it should be).
        offset: u64,
        /// Which entry.
        entry: u64,
        /// The value found.
        value: i64,
        /// The rule it breaks.
        rule: String,
    },

    /// A flat token file cannot be read as the given dtype and window.
    #[error("{path} offset {offset}: {reason}", path = .path.display())]
    BadFlatFile {
        /// The flat token file.
        path: PathBuf,
        /// The byte offset concerned.
        offset: u64,
        /// What is wrong.
        reason: String,
    },

    /// A stored token id does not fit the requested output id type.
    #[error(
        "{path} offset {offset}: token id {token} does not fit the output type {target}",
        path = .path.display()
    )]
    TokenOutOfRange {
        /// The shard file.
        path: PathBuf,
        /// Byte offset of the token.
        offset: u64,
        /// The token id.
        token: i64,
        /// The output type.
        target: &'static str,
    },

    /// A caller's buffer is shorter than the sequence decoded into it.
    #[error(
        "{path} offset {offset}: the sequence holds {needed} tokens but the output buffer only {got}",
        path = .path.display()
    )]
    BufferTooSmall {
        /// The shard file.
        path: PathBuf,
        /// Byte offset of the sequence.
        offset: u64,
        /// Tokens in the sequence.
        needed: usize,
        /// The buffer length.
        got: usize,
    },

    /// A directory holds no shard.
    #[error("{path}: no shard found (no PREFIX.idx with a PREFIX.bin beside it)", path = .path.display())]
    EmptyDirectory {
        /// The directory.
        path: PathBuf,
    },

    /// An input record cannot be used (the `write` command's JSON lines or text).
    #[error("{path} line {line}: {reason}", path = .path.display())]
    Input {
        /// The input file.
        path: PathBuf,
        /// The 1-based line number.
        line: u64,
        /// What is wrong.
        reason: String,
    },

    /// An input file, or a row of a Parquet input, cannot be used: an input pattern that matches
    /// nothing, a file that is not Parquet, a column that is missing or holds no strings, a bad
    /// row (`row` is `Some((row group, row))`, both 0-based).
    #[error("{path}{at}: {reason}", path = .path.display(), at = row_place(*.row))]
    InputFile {
        /// The input file (or the pattern).
        path: PathBuf,
        /// The row group and the row within it, both 0-based, when one row is concerned.
        row: Option<(usize, usize)>,
        /// What is wrong.
        reason: String,
    },

    /// Two or more datasets share a name.
    #[error("duplicate dataset names: {}; every dataset needs a unique name", .names.join(", "))]
    DuplicateDatasets {
        /// The names used more than once.
        names: Vec<String>,
    },

    /// A mixture weight is not a finite positive number.
    #[error("dataset {dataset}: weight {weight} is not a finite positive number")]
    BadWeight {
        /// The dataset.
        dataset: String,
        /// The weight given.
        weight: f64,
    },

    /// A mixture weight too small a part of the total for the mixture's resolution: its share
    /// of rows rounds to none.
    #[error(
        "dataset {dataset}: weight {weight} is {share:.2e} of the total weight, below the \
         mixture's resolution of 2^-20 (about 9.5e-7) of the rows, so it would draw none; raise \
         it or leave the dataset out"
    )]
    WeightBelowResolution {
        /// The dataset.
        dataset: String,
        /// The weight given.
        weight: f64,
        /// The weight over the total of the weights.
        share: f64,
    },

    /// A mixture with no dataset.
    #[error("no datasets: a plan needs at least one")]
    NoDatasets,

    /// A dataset with no sample.
    #[error("dataset {dataset} holds no samples")]
    EmptyDataset {
        /// The dataset.
        dataset: String,
    },

    /// An ownership partition would leave a rank with no sample of a dataset.
    #[error(
        "dataset {dataset}: with {size} samples over world size {world}, the {partition} \
         partition leaves rank {rank} no sample; use the global partition or fewer ranks"
    )]
    EmptyPartition {
        /// The dataset.
        dataset: String,
        /// Its number of samples.
        size: u64,
        /// The world size.
        world: usize,
        /// The first rank left empty.
        rank: usize,
        /// The partition mode.
        partition: String,
    },

    /// A range or stratified partition's input does not fit the dataset or the world.
    #[error(
        "dataset {dataset}{}: {reason}",
        .rank.map(|r| format!(" rank {r}")).unwrap_or_default()
    )]
    BadPartition {
        /// The dataset.
        dataset: String,
        /// The rank whose input is at fault, when one is.
        rank: Option<usize>,
        /// What is wrong, naming the range.
        reason: String,
    },

    /// A class file is not one little-endian u32 per sequence.
    #[error("{path} offset {offset}: {reason}", path = .path.display())]
    BadClassFile {
        /// The file.
        path: PathBuf,
        /// Where the fault starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },

    /// A cursor cannot continue its stream under the new configuration.
    #[error("cannot resume: {0}")]
    Resume(String),

    /// A sample failed (decode error, transform error, or too long under the error policy).
    #[error("batch {step}: dataset {dataset} sample {sample}: {reason}")]
    Sample {
        /// The batch (step) that held it.
        step: u64,
        /// The dataset.
        dataset: String,
        /// The sample index.
        sample: u64,
        /// What went wrong.
        reason: String,
    },

    /// A loader worker panicked.
    #[error(
        "batch {step}: a loader worker panicked at dataset {dataset} sample {sample}: {message}"
    )]
    WorkerPanic {
        /// The batch (step) being built.
        step: u64,
        /// The dataset of the sample being processed ("-" if none yet).
        dataset: String,
        /// The sample being processed.
        sample: u64,
        /// The panic message.
        message: String,
    },

    /// More samples were skipped in one epoch of a dataset than the policy allows.
    #[error(
        "batch {step}: dataset {dataset} skipped more than {limit} samples in epoch {epoch} \
         (last: sample {sample}: {reason})"
    )]
    SkipLimit {
        /// The batch where the limit was passed.
        step: u64,
        /// The dataset.
        dataset: String,
        /// Its epoch.
        epoch: u64,
        /// The limit.
        limit: u64,
        /// The sample that passed it.
        sample: u64,
        /// Why it failed.
        reason: String,
    },

    /// A metric value or kind that cannot be recorded.
    #[error("dataset {dataset} metric {metric}: {reason}")]
    Metric {
        /// The dataset.
        dataset: String,
        /// The metric.
        metric: String,
        /// What is wrong.
        reason: String,
    },

    /// Some ranks did not reach a collective in time.
    #[error(
        "{op} call {call} on rank {rank}: ranks {missing:?} did not arrive within {waited:?}; \
         are they running, and do all ranks make the same collective calls?"
    )]
    RankTimeout {
        /// The collective operation.
        op: String,
        /// Which call of this rank it was (0-based).
        call: u64,
        /// The rank that waited.
        rank: usize,
        /// The ranks that did not arrive.
        missing: Vec<usize>,
        /// How long it waited.
        waited: std::time::Duration,
    },

    /// Ranks made different collective calls at the same point.
    #[error("{op} call {call}: {reason}")]
    CollectiveMismatch {
        /// The collective operation.
        op: String,
        /// Which call it was.
        call: u64,
        /// How the ranks differ.
        reason: String,
    },

    /// A collective engine's call (NCCL, MPI, any engine behind `collective::Served`) failed or
    /// passed its deadline. After a timeout or an asynchronous error the engine was aborted and
    /// every later call fails at once.
    #[error(
        "collective engine {engine}{}: {op} failed after {:.3} s: {reason}",
        .rank.map(|r| format!(" rank {r}")).unwrap_or_default(),
        .waited.as_secs_f64()
    )]
    Collective {
        /// The engine: `nccl`, `mpi` (the name of its serving thread).
        engine: String,
        /// The operation: `ncclAllReduce f64`, `all-reduce u64`, `start`.
        op: String,
        /// The rank that waited, once known.
        rank: Option<usize>,
        /// How long it waited.
        waited: std::time::Duration,
        /// Why: the deadline, the engine's error string, and what became of the engine.
        reason: String,
    },

    /// A checkpoint that cannot be read, or that does not fit the plan it would resume.
    #[error(
        "{}: not a valid shardflow loader checkpoint: {field}: {reason}",
        .path.as_ref().map_or("the resumed state".into(), |p| p.display().to_string())
    )]
    Checkpoint {
        /// The checkpoint file, when the state was read from one.
        path: Option<PathBuf>,
        /// The field concerned (`cursor.position`, `metrics.entries.web.seq_len`, …), or
        /// `json` when the file does not parse.
        field: String,
        /// What is wrong.
        reason: String,
    },

    /// The process was asked to stop (Ctrl-C, SIGTERM) while writing; temporary files were
    /// removed.
    #[error("interrupted while writing {path}; its temporary files were removed", path = .path.display())]
    Interrupted {
        /// The file being written.
        path: PathBuf,
    },

    /// A device (a wgpu adapter, a CUDA device) failed or cannot do what was asked.
    #[error("device {device}: cannot {op}: {reason}")]
    Device {
        /// The device: `wgpu`, `wgpu llvmpipe (...)`, `cuda:0`.
        device: String,
        /// What was being done: "find an adapter", "upload batch 12", …
        op: String,
        /// Why, and what to do.
        reason: String,
    },

    /// The rendezvous file store cannot be used, or holds a record that is torn or foreign.
    #[error("file store {path}: {reason}", path = .path.display())]
    Store {
        /// The store's directory, or the record's file.
        path: PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },

    /// A rendezvous wait passed its deadline.
    #[error(
        "file store {dir}: rank {rank} waited {waited:?} for {keys:?}: {detail}",
        dir = .dir.display()
    )]
    StoreTimeout {
        /// The store's directory.
        dir: PathBuf,
        /// The keys waited for.
        keys: Vec<String>,
        /// The rank that waited.
        rank: usize,
        /// How long it waited.
        waited: std::time::Duration,
        /// What was missing: the ranks that never arrived, or a torn record seen meanwhile.
        detail: String,
    },

    /// A history file (a Parquet part of `steps` or `samples`) that cannot be read or written
    /// as its table, or a history directory used inconsistently.
    #[error("history {path}: {reason}", path = .path.display())]
    History {
        /// The file or directory (empty for an in-memory part).
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A CUDA kernel does not compile.
    #[error("kernel {kernel} does not compile for {arch}:\n{log}")]
    Kernel {
        /// The kernel's file (`pad_collate.cu`).
        kernel: String,
        /// The architecture (`sm_80`).
        arch: String,
        /// NVRTC's log.
        log: String,
    },

    /// Ranks hold different configurations.
    #[error("ranks {ranks:?} hold a config that differs from rank 0's at {key}: {reason}")]
    ConfigMismatch {
        /// The ranks whose config differs from rank 0's.
        ranks: Vec<usize>,
        /// The first key path where the first of them differs (`order.seed`).
        key: String,
        /// Both values.
        reason: String,
    },

    /// The ranks' environment does not describe one world.
    #[error("world from the environment: {0}")]
    Environment(String),

    /// Every loader worker thread ended while the caller waited for a batch that none of them
    /// had built (a worker's panic or error is reported as its own error first; this one means
    /// the threads are gone without one), or a worker stopped building a batch because the
    /// loader was dropped.
    #[error("batch {batch}: every loader worker stopped before building it")]
    WorkersStopped {
        /// The batch (step, 0-based) the caller waited for.
        batch: u64,
    },

    /// A thread or process could not be started (the system's limit on threads or processes,
    /// a program that does not exist or is not executable).
    #[error("cannot start {what}: {error}")]
    Spawn {
        /// What was being started: `loader worker thread 3 of 8`, `"python" for rank 1`.
        what: String,
        /// The system's reason.
        error: std::io::Error,
    },

    /// A self-check of the command found a result other than the one it proves (`shardflow
    /// demo`: a stream that ended early, ranks that received rows other than their slices).
    /// This is a defect in shardflow, or a corrupted run: please report it.
    #[error("check failed: {0}")]
    CheckFailed(String),

    /// A configuration that cannot work; the message says which setting and why.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// An I/O error on `path`; a missing file becomes [`Error::MissingFile`].
    pub fn io(path: &Path, action: &'static str, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::MissingFile {
                path: path.to_path_buf(),
            }
        } else {
            Error::Io {
                path: path.to_path_buf(),
                action,
                error: source,
            }
        }
    }

    /// Whether this is a write to a closed pipe (`shardflow plan | head`): the reader has gone,
    /// and the command should end quietly.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Io { error, .. } if error.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// A checkpoint error about `field`, not tied to a file.
    pub fn checkpoint(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: None,
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// `" row group G row R"` for [`Error::InputFile`], or nothing.
fn row_place(row: Option<(usize, usize)>) -> String {
    row.map(|(group, row)| format!(" row group {group} row {row}"))
        .unwrap_or_default()
}
