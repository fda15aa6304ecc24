//! A key-value rendezvous for separate processes in a shared directory: [`FileStore`].
//!
//! It carries the rendezvous and the run spec, never tensor data. Every record is written
//! atomically (temporary name, fsync, rename, directory fsync) with a header that holds its
//! length and checksum, so a reader never parses a torn or foreign file. Files live under
//! `ROOT/job-JOB/`: a new job id never reads an earlier run's records.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::shard::trailer::xxh64;

/// The environment variable that names the store's root directory when none is given.
pub const STORE_ENV: &str = "SHARDFLOW_STORE";

/// How long `wait` and `barrier` wait by default.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);

/// The first and the longest pause between two polls.
const FIRST_POLL: Duration = Duration::from_millis(10);
const LAST_POLL: Duration = Duration::from_secs(1);

/// A record's header: magic, payload length, XXH64 of the payload.
const MAGIC: &[u8; 8] = b"SFSTORE1";
const HEADER: usize = 24;

/// A key-value store in a shared directory, scoped by a job id.
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
    dir: PathBuf,
    rank: usize,
    world: usize,
    deadline: Duration,
    /// Barriers passed so far: the n-th barrier of every rank uses generation n, so a fast rank
    /// entering the next barrier never meets the files of the last.
    barriers: Arc<AtomicU64>,
}

impl FileStore {
    /// The store of job `job` under `root`, for rank `rank` of `world`. Creates `ROOT/job-JOB/`
    /// and checks that it can write there.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] for a bad job id, a rank outside the world, or a directory that cannot
    /// be created or written (naming it).
    pub fn new(root: impl AsRef<Path>, job: &str, rank: usize, world: usize) -> Result<Self> {
        let root = root.as_ref();
        check_name(root, "job id", job)?;
        if world == 0 || rank >= world {
            return Err(store_error(
                root,
                format!("rank {rank} lies outside a world of {world}"),
            ));
        }
        let dir = root.join(format!("job-{job}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| store_error(&dir, format!("cannot create the store directory: {e}")))?;
        // Writable now, not at the first `set` minutes later.
        let probe = dir.join(format!(".probe.{rank}"));
        crate::atomic::write_atomic(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe).map_err(|e| Error::io(&probe, "remove", e)))
            .map_err(|e| store_error(&dir, format!("the directory is not writable: {e}")))?;
        Ok(FileStore {
            dir,
            rank,
            world,
            deadline: DEFAULT_DEADLINE,
            barriers: Arc::new(AtomicU64::new(0)),
        })
    }

    /// [`FileStore::new`] with the root that `SHARDFLOW_STORE` names.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when the variable is not set (there is no implicit `/tmp`: a directory
    /// that is not shared between the ranks would split the job); as [`FileStore::new`].
    pub fn from_env(job: &str, rank: usize, world: usize) -> Result<Self> {
        match std::env::var_os(STORE_ENV) {
            Some(root) if !root.is_empty() => Self::new(root, job, rank, world),
            _ => Err(store_error(
                Path::new("(none)"),
                format!(
                    "{STORE_ENV} is not set: name a directory that every rank shares (there is \
                     no default, since a /tmp that is not shared would split the job)"
                ),
            )),
        }
    }

    /// Waits at most `deadline` in [`FileStore::wait`] and [`FileStore::barrier`].
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The job's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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
        let mut record = Vec::with_capacity(HEADER + value.len());
        record.extend_from_slice(MAGIC);
        record.extend_from_slice(&(value.len() as u64).to_le_bytes());
        record.extend_from_slice(&xxh64(value).to_le_bytes());
        record.extend_from_slice(value);
        crate::atomic::write_atomic(&path, &record)
    }

    /// The value under `key`, `None` when there is none yet.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] for a record that is torn or foreign (wrong magic, length or checksum):
    /// it is never returned; a read error.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key)?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, "read", e)),
        };
        parse(&bytes)
            .map(|v| Some(v.to_vec()))
            .map_err(|reason| store_error(&path, reason))
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
        let polled = self.poll(|| match self.get(key) {
            Ok(v) => Ok(v),
            Err(Error::Store { reason, .. }) => {
                last = Some(reason);
                Ok(None)
            }
            Err(e) => Err(e),
        })?;
        polled.map_err(|waited| Error::StoreTimeout {
            dir: self.dir.clone(),
            keys: vec![key.to_string()],
            rank: self.rank,
            waited,
            detail: last.unwrap_or_else(|| "no record was written".into()),
        })
    }

    /// Calls `ready` until it gives a value, pausing 10 ms, doubling to 1 s, between calls;
    /// `Err(waited)` once the deadline has passed.
    fn poll<R>(
        &self,
        mut ready: impl FnMut() -> Result<Option<R>>,
    ) -> Result<std::result::Result<R, Duration>> {
        let start = Instant::now();
        let mut pause = FIRST_POLL;
        loop {
            if let Some(v) = ready()? {
                return Ok(Ok(v));
            }
            if start.elapsed() >= self.deadline {
                return Ok(Err(start.elapsed()));
            }
            std::thread::sleep(pause.min(self.deadline.saturating_sub(start.elapsed())));
            pause = (pause * 2).min(LAST_POLL);
        }
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
        let mut here = Vec::new();
        let polled = self.poll(|| {
            here = self.counted(&arrive)?;
            Ok((here.len() == self.world).then_some(()))
        })?;
        polled.map_err(|waited| Error::StoreTimeout {
            dir: self.dir.clone(),
            keys: vec![arrive.clone()],
            rank: self.rank,
            waited,
            detail: format!("ranks {} never arrived", missing(self.world, &here)),
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
        let polled = self.poll(|| {
            for (r, slot) in out.iter_mut().enumerate().filter(|(_, s)| s.is_none()) {
                *slot = self.get(&format!("{key}.{r}")).unwrap_or(None);
            }
            Ok(out.iter().all(Option::is_some).then_some(()))
        })?;
        polled.map_err(|waited| {
            let here: Vec<usize> = (0..self.world).filter(|&r| out[r].is_some()).collect();
            Error::StoreTimeout {
                dir: self.dir.clone(),
                keys: vec![format!("{key}.RANK")],
                rank: self.rank,
                waited,
                detail: format!("ranks {} never published {key}", missing(self.world, &here)),
            }
        })?;
        Ok(out.into_iter().map(|v| v.expect("all present")).collect())
    }
}

/// The ranks of `0..world` not in `here`, as `1, 2`.
fn missing(world: usize, here: &[usize]) -> String {
    (0..world)
        .filter(|r| !here.contains(r))
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The payload of a record, or why it is not one.
fn parse(bytes: &[u8]) -> std::result::Result<&[u8], String> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(format!(
            "not a store record ({} bytes without the SFSTORE1 header): torn or foreign",
            bytes.len()
        ));
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let sum = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
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
    Ok(payload)
}

/// Keys and job ids become file names: letters, digits, `.`, `_` and `-`, not starting with a
/// dot.
fn check_name(dir: &Path, what: &str, name: &str) -> Result<()> {
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

fn store_error(path: &Path, reason: String) -> Error {
    Error::Store {
        path: path.to_path_buf(),
        reason,
    }
}
