//! A key-value rendezvous for separate processes in a shared directory: [`FileStore`].
//!
//! It carries the rendezvous and the run spec, never tensor data. Every record is written
//! atomically (temporary name, fsync, rename, directory fsync) with a header that holds its
//! length, the nonce of the run that wrote it and a checksum, so a reader never parses a torn
//! or foreign file, nor an earlier run's. A job's files live under `ROOT/job-JOB/`, and one
//! run's keys under `ROOT/job-JOB/gen-NONCE/`: a [`Rendezvous`] admits every rank to the same
//! fresh generation before the store is used, so a rerun with the same job id never reads the
//! records of the run before it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Rendezvous;
use super::wait::{Progress, StoreWait, Waiter};

use crate::error::{Error, Result};
use crate::hash::xxh64;

/// The environment variable that names the store's root directory when none is given.
pub const STORE_ENV: &str = "SHARDFLOW_STORE";

/// How long `wait` and `barrier` wait by default.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);

/// A record's header: magic, payload length, the writing run's nonce, XXH64 of the payload.
const MAGIC: &[u8; 8] = b"SFSTORE2";
const HEADER: usize = 32;

/// A key-value store in a shared directory, scoped by a job id and, within the job, by the run:
/// [`FileStore::new`] is the rendezvous that admits every rank to one fresh run.
///
/// ```
/// # fn main() -> shardflow::Result<()> {
/// use shardflow::collective::FileStore;
/// let dir = tempfile::tempdir().unwrap();
/// let store = FileStore::new(dir.path(), "job-7", 0, 1)?;
/// store.set("spec", b"{\"seed\": 1}")?;
/// assert_eq!(store.wait("spec")?, b"{\"seed\": 1}");
/// store.barrier("start")?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct FileStore {
    /// This run's directory, `ROOT/job-JOB/gen-NONCE`.
    pub(super) dir: PathBuf,
    /// The nonce rank 0 drew for this run; every record carries it.
    pub(super) nonce: u64,
    pub(super) rank: usize,
    pub(super) world: usize,
    pub(super) deadline: Duration,
    pub(super) progress: Progress,
    /// Barriers passed so far: the n-th barrier of every rank uses generation n, so a fast rank
    /// entering the next barrier never meets the files of the last.
    pub(super) barriers: Arc<AtomicU64>,
}

impl FileStore {
    /// Joins the run of job `job` under `root` as rank `rank` of `world`, with the default
    /// deadline: [`Rendezvous::join`]. A world of one returns at once; otherwise this waits
    /// until every rank has joined.
    ///
    /// # Errors
    ///
    /// As [`Rendezvous::join`].
    pub fn new(root: impl AsRef<Path>, job: &str, rank: usize, world: usize) -> Result<Self> {
        Rendezvous::new(root, job, rank, world).join()
    }

    /// [`FileStore::new`] with the root that `SHARDFLOW_STORE` names (and the deadline that
    /// `SHARDFLOW_STORE_TIMEOUT` gives): [`Rendezvous::from_env`].
    ///
    /// # Errors
    ///
    /// As [`Rendezvous::from_env`] and [`Rendezvous::join`].
    pub fn from_env(job: &str, rank: usize, world: usize) -> Result<Self> {
        Rendezvous::from_env(job, rank, world)?.join()
    }

    /// Waits at most `deadline` in [`FileStore::wait`], [`FileStore::barrier`] and
    /// [`FileStore::gather`].
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Calls `report` every `every` while a wait lasts, naming what it waits for.
    pub fn with_progress(
        mut self,
        every: Duration,
        report: impl Fn(&StoreWait) + Send + Sync + 'static,
    ) -> Self {
        self.progress = Progress::new(every, report);
        self
    }

    /// This run's directory, `ROOT/job-JOB/gen-NONCE`: empty when the run starts.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The nonce that rank 0 drew for this run; every rank of the run holds the same one.
    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world(&self) -> usize {
        self.world
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_name(&self.dir, "key", key)?;
        Ok(self.dir.join(key))
    }

    /// Publishes `value` under `key`, atomically: a reader sees the old record, the new one, or
    /// none, never part of one.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] for a bad key; the write's errors.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let path = self.path(key)?;
        crate::atomic::write_atomic(&path, &record(self.nonce, value))
    }

    /// The value under `key`, `None` when there is none yet.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] for a record that is torn or foreign (wrong magic, length or checksum)
    /// or written by another run (another nonce): it is never returned; a read error.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        read_record(&self.path(key)?, self.nonce)
    }

    fn waiter(&self, keys: Vec<String>) -> Waiter<'_> {
        Waiter {
            deadline: self.deadline,
            progress: &self.progress,
            rank: self.rank,
            keys,
        }
    }

    /// The value under `key`, polling with exponential backoff (10 ms doubling to 1 s) until it
    /// is there and whole.
    ///
    /// # Errors
    ///
    /// [`Error::StoreTimeout`] naming the key after the deadline (a torn record seen meanwhile
    /// is named too); a read error.
    pub fn wait(&self, key: &str) -> Result<Vec<u8>> {
        let mut last = None;
        let polled = self
            .waiter(vec![key.to_string()])
            .poll(|| match self.get(key) {
                Ok(v) => Ok(v.ok_or_else(Vec::new)),
                Err(Error::Store { reason, .. }) => {
                    last = Some(reason);
                    Ok(Err(Vec::new()))
                }
                Err(e) => Err(e),
            })?;
        polled.map_err(|(waited, _)| Error::StoreTimeout {
            dir: self.dir.clone(),
            keys: vec![key.to_string()],
            rank: self.rank,
            waited,
            detail: last.unwrap_or_else(|| "no record was written".into()),
        })
    }

    /// Counts this rank in the counter `key` (once per rank: an exclusively created file) and
    /// returns how many ranks have counted so far.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] for a bad key; a write error.
    pub fn add(&self, key: &str) -> Result<usize> {
        let path = self.path(&format!("{key}.rank{}", self.rank))?;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(&path, "create", e)),
        }
        crate::atomic::sync_dir(&path)?;
        Ok(self.counted(key)?.len())
    }

    /// The ranks counted in `key`.
    fn counted(&self, key: &str) -> Result<Vec<usize>> {
        let prefix = format!("{key}.rank");
        let entries = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, "list", e))?;
        let mut ranks: Vec<usize> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let rank = name.to_str()?.strip_prefix(&prefix)?.parse().ok()?;
                (rank < self.world).then_some(rank)
            })
            .collect();
        ranks.sort_unstable();
        ranks.dedup();
        Ok(ranks)
    }

    /// Returns once every rank has reached the barrier `name`; the last rank to leave removes
    /// its files. Every rank must pass the same barriers in the same order.
    ///
    /// # Errors
    ///
    /// [`Error::StoreTimeout`] naming the ranks that never arrived; as [`FileStore::add`].
    pub fn barrier(&self, name: &str) -> Result<()> {
        let generation = self.barriers.fetch_add(1, Ordering::Relaxed);
        let name = format!("{name}.{generation}");
        let arrive = format!("{name}.in");
        self.add(&arrive)?;
        let polled = self.waiter(vec![arrive.clone()]).poll(|| {
            let here = self.counted(&arrive)?;
            Ok(if here.len() == self.world {
                Ok(())
            } else {
                Err(missing(self.world, &here))
            })
        })?;
        polled.map_err(|(waited, gone)| Error::StoreTimeout {
            dir: self.dir.clone(),
            keys: vec![arrive.clone()],
            rank: self.rank,
            waited,
            detail: format!("ranks {} never arrived", list(&gone)),
        })?;
        let leave = format!("{name}.out");
        if self.add(&leave)? == self.world {
            for r in 0..self.world {
                for key in [&arrive, &leave] {
                    let _ = std::fs::remove_file(self.dir.join(format!("{key}.rank{r}")));
                }
            }
        }
        Ok(())
    }
}

impl FileStore {
    /// Every rank's `mine`, in rank order: each rank publishes `KEY.RANK` and waits for the
    /// others' (for small rendezvous values such as config hashes; never tensor data).
    ///
    /// # Errors
    ///
    /// [`Error::StoreTimeout`] naming the ranks whose value never came; as [`FileStore::set`].
    pub fn gather(&self, key: &str, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.set(&format!("{key}.{}", self.rank), mine)?;
        let mut out: Vec<Option<Vec<u8>>> = vec![None; self.world];
        let polled = self.waiter(vec![format!("{key}.RANK")]).poll(|| {
            for (r, slot) in out.iter_mut().enumerate().filter(|(_, s)| s.is_none()) {
                *slot = self.get(&format!("{key}.{r}")).unwrap_or(None);
            }
            let gone: Vec<usize> = (0..self.world).filter(|&r| out[r].is_none()).collect();
            Ok(if gone.is_empty() { Ok(()) } else { Err(gone) })
        })?;
        polled.map_err(|(waited, gone)| Error::StoreTimeout {
            dir: self.dir.clone(),
            keys: vec![format!("{key}.RANK")],
            rank: self.rank,
            waited,
            detail: format!("ranks {} never published {key}", list(&gone)),
        })?;
        Ok(out.into_iter().map(|v| v.expect("all present")).collect())
    }
}

/// The ranks of `0..world` not in `here`.
fn missing(world: usize, here: &[usize]) -> Vec<usize> {
    (0..world).filter(|r| !here.contains(r)).collect()
}

/// Ranks as `1, 2`.
pub(super) fn list(ranks: &[usize]) -> String {
    ranks
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `payload` as a record of the run `nonce` (0 for the job's own records, which the rendezvous
/// writes before there is a run).
pub(super) fn record(nonce: u64, payload: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(HEADER + payload.len());
    record.extend_from_slice(MAGIC);
    record.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    record.extend_from_slice(&nonce.to_le_bytes());
    record.extend_from_slice(&xxh64(payload).to_le_bytes());
    record.extend_from_slice(payload);
    record
}

/// The payload of the record at `path`, written by the run `nonce`; `None` when there is no
/// file.
///
/// # Errors
///
/// [`Error::Store`] naming the file for a torn, foreign or other run's record; a read error.
pub(super) fn read_record(path: &Path, nonce: u64) -> Result<Option<Vec<u8>>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, "read", e)),
    };
    parse(&bytes, nonce)
        .map(|v| Some(v.to_vec()))
        .map_err(|reason| store_error(path, reason))
}

/// The payload of a record of the run `nonce`, or why it is not one.
fn parse(bytes: &[u8], nonce: u64) -> std::result::Result<&[u8], String> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(format!(
            "not a store record ({} bytes without the SFSTORE2 header): torn or foreign",
            bytes.len()
        ));
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let (len, theirs, sum) = (word(8), word(16), word(24));
    let payload = &bytes[HEADER..];
    if payload.len() as u64 != len {
        return Err(format!(
            "the record holds {} bytes, its header says {len}: torn",
            payload.len()
        ));
    }
    if xxh64(payload) != sum {
        return Err("the record's checksum does not match its bytes: torn or altered".into());
    }
    if theirs != nonce {
        return Err(format!(
            "the record belongs to run {theirs:016x}, not to this run ({nonce:016x}): left by an \
             earlier run, never read as this one's"
        ));
    }
    Ok(payload)
}

/// Keys and job ids become file names: letters, digits, `.`, `_` and `-`, not starting with a
/// dot.
pub(super) fn check_name(dir: &Path, what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(store_error(
            dir,
            format!(
                "the {what} {name:?} must be 1 to 200 letters, digits, '.', '_' or '-', not \
                 starting with '.'"
            ),
        ))
    }
}

pub(super) fn store_error(path: &Path, reason: String) -> Error {
    Error::Store {
        path: path.to_path_buf(),
        reason,
    }
}
