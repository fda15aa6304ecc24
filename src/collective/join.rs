//! How the ranks of one run meet in a job's directory of the file store: [`Rendezvous`].
//!
//! A job id need not be unique across runs (with no launcher id, the demo's is `demo`), so the
//! records of an earlier run may still sit in `ROOT/job-JOB/`. They are never read as this
//! run's. Rank 0 opens each run as a new **generation** with a random nonce, and admits every
//! other rank by a random **token** that the rank drew when it started; nothing of an earlier
//! run can hold a token drawn after it ended:
//!
//! 1. Rank 0 draws the nonce N, creates `gen-N/` and atomically replaces the record `run` with
//!    `{N, world}`. It removes the directories of earlier generations.
//! 2. Rank r > 0 draws its token T and polls `run`. For each nonce it sees there (an earlier
//!    run's too, if it comes first), it writes `join.r` = `{nonce, T, world}`, and it writes
//!    it again when `run` changes.
//! 3. Rank 0 waits until every `join.r` carries N (a `join.r` with another nonce is an earlier
//!    run's, or a rank that has not yet seen N), then writes `roster` = `{N, world, tokens}`.
//! 4. Rank r accepts `roster` only when its nonce is the one `run` names and it lists T as rank
//!    r. Its keys then live in `gen-N/`, and every record there carries N in its header.
//!
//! Under races: a rank that starts before rank 0 answers the old nonce first and the new one as
//! soon as rank 0 publishes it (step 2), so the order of starts does not matter. A rank never
//! accepts an old roster (it cannot list a token drawn after it was written), and rank 0 never
//! counts an old join (it cannot carry a nonce drawn after it was written), so a rank started
//! alone after an earlier run waits for the ranks of its own run, reports every so often which
//! ranks have not joined, and ends in [`Error::StoreTimeout`] naming them and their keys. A rank
//! of another world size is an error at once, naming it. No clock is compared, so clock skew
//! between hosts does not matter. A job id must not name two runs at the same time: their ranks
//! would join whichever run rank 0 opened last.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::store::{
    DEFAULT_DEADLINE, FileStore, STORE_ENV, check_name, list, read_record, record, store_error,
};
use super::wait::{Progress, StoreWait, Waiter};
use crate::error::{Error, Result};

/// The environment variable that gives [`Rendezvous::from_env`] its deadline, in seconds.
pub const STORE_TIMEOUT_ENV: &str = "SHARDFLOW_STORE_TIMEOUT";

/// The record that names the run rank 0 opened last.
const RUN: &str = "run";
/// The record that admits the ranks to a run.
const ROSTER: &str = "roster";
/// A generation's directory: this, and the nonce in 16 hex digits.
const GENERATION: &str = "gen-";

/// `run`: the run that rank 0 opened.
#[derive(Debug, Serialize, Deserialize)]
struct RunRecord {
    nonce: u64,
    world: usize,
}

/// `join.R`: rank R answers the run `nonce` with its token.
#[derive(Debug, Serialize, Deserialize)]
struct JoinRecord {
    nonce: u64,
    token: u64,
    world: usize,
}

/// `roster`: the tokens of the ranks admitted to the run `nonce`, by rank.
#[derive(Debug, Serialize, Deserialize)]
struct Roster {
    nonce: u64,
    world: usize,
    tokens: Vec<u64>,
}

/// How a rank joins a run of a job in the file store: where, as which rank, how long it waits,
/// and who hears about a long wait. [`Rendezvous::join`] gives the [`FileStore`].
///
/// ```
/// # fn main() -> shardflow::Result<()> {
/// use std::time::Duration;
/// use shardflow::collective::Rendezvous;
/// let dir = tempfile::tempdir().unwrap();
/// let store = Rendezvous::new(dir.path(), "job-7", 0, 1)
///     .with_deadline(Duration::from_secs(60))
///     .with_progress(Duration::from_secs(5), |wait| eprintln!("{wait}"))
///     .join()?;
/// store.set("spec", b"{}")?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Rendezvous {
    root: PathBuf,
    job: String,
    rank: usize,
    world: usize,
    deadline: Duration,
    progress: Progress,
}

impl Rendezvous {
    /// Rank `rank` of `world` joining a run of job `job` under `root`, waiting at most
    /// [`DEFAULT_DEADLINE`].
    pub fn new(root: impl AsRef<Path>, job: &str, rank: usize, world: usize) -> Self {
        Rendezvous {
            root: root.as_ref().to_path_buf(),
            job: job.to_string(),
            rank,
            world,
            deadline: DEFAULT_DEADLINE,
            progress: Progress::default(),
        }
    }

    /// [`Rendezvous::new`] under the root that `SHARDFLOW_STORE` names, with the deadline that
    /// `SHARDFLOW_STORE_TIMEOUT` gives in seconds when it is set.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] when `SHARDFLOW_STORE` is not set (there is no implicit `/tmp`: a
    /// directory that is not shared between the ranks would split the job);
    /// [`Error::Environment`] when `SHARDFLOW_STORE_TIMEOUT` is not a positive number.
    pub fn from_env(job: &str, rank: usize, world: usize) -> Result<Self> {
        let root = match std::env::var_os(STORE_ENV) {
            Some(root) if !root.is_empty() => root,
            _ => {
                return Err(store_error(
                    Path::new("(none)"),
                    format!(
                        "{STORE_ENV} is not set: name a directory that every rank shares (there \
                         is no default, since a /tmp that is not shared would split the job)"
                    ),
                ));
            }
        };
        let mut rendezvous = Rendezvous::new(root, job, rank, world);
        if let Some(deadline) = super::env::seconds_from_env(STORE_TIMEOUT_ENV)? {
            rendezvous.deadline = deadline;
        }
        Ok(rendezvous)
    }

    /// Waits at most `deadline` to join, and in the store's waits after.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Calls `report` every `every` while a wait lasts (this one, and the store's after),
    /// naming the ranks not yet arrived: the command prints it, so that a missing rank is not
    /// minutes of silence.
    pub fn with_progress(
        mut self,
        every: Duration,
        report: impl Fn(&StoreWait) + Send + Sync + 'static,
    ) -> Self {
        self.progress = Progress::new(every, report);
        self
    }

    /// The deadline of every wait.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Joins the run: rank 0 opens a new generation and waits until every rank has joined it;
    /// the other ranks wait until rank 0 admits them (see the module docs). A world of one
    /// returns at once.
    ///
    /// # Errors
    ///
    /// [`Error::Store`] for a bad job id, a rank outside the world, a directory that cannot be
    /// created or written (naming it), or a rank that joined with another world size (naming
    /// it); [`Error::StoreTimeout`] naming the ranks that never joined and their keys.
    pub fn join(self) -> Result<FileStore> {
        check_name(&self.root, "job id", &self.job)?;
        if self.world == 0 || self.rank >= self.world {
            return Err(store_error(
                &self.root,
                format!("rank {} lies outside a world of {}", self.rank, self.world),
            ));
        }
        let job_dir = self.root.join(format!("job-{}", self.job));
        std::fs::create_dir_all(&job_dir).map_err(|e| {
            store_error(&job_dir, format!("cannot create the store directory: {e}"))
        })?;
        // Writable now, not at the first `set` minutes later.
        let probe = job_dir.join(format!(".probe.{}", self.rank));
        crate::atomic::write_atomic(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe).map_err(|e| Error::io(&probe, "remove", e)))
            .map_err(|e| store_error(&job_dir, format!("the directory is not writable: {e}")))?;
        let token = draw();
        let nonce = if self.rank == 0 {
            self.open(&job_dir, token)?
        } else {
            self.enter(&job_dir, token)?
        };
        let dir = job_dir.join(generation(nonce));
        if !dir.is_dir() {
            return Err(store_error(
                &dir,
                "this run's directory is gone: a newer run of this job id started".into(),
            ));
        }
        tracing::debug!(rank = self.rank, world = self.world, run = %generation(nonce), "joined");
        Ok(FileStore {
            dir,
            nonce,
            rank: self.rank,
            world: self.world,
            deadline: self.deadline,
            progress: self.progress,
            barriers: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Rank 0: opens a new generation, waits for every rank's join, admits them.
    fn open(&self, job_dir: &Path, token: u64) -> Result<u64> {
        let nonce = draw();
        let gen_dir = job_dir.join(generation(nonce));
        std::fs::create_dir_all(&gen_dir).map_err(|e| Error::io(&gen_dir, "create", e))?;
        crate::atomic::sync_dir(&gen_dir)?;
        let world = self.world;
        write(&job_dir.join(RUN), &RunRecord { nonce, world })?;
        remove_earlier_generations(job_dir, nonce);

        let mut tokens: Vec<Option<u64>> = vec![None; world];
        tokens[0] = Some(token);
        let mut stale = vec![false; world];
        let keys = (1..world).map(join_key).collect();
        let polled = self.waiter(keys).poll(|| {
            for r in 1..world {
                if tokens[r].is_some() {
                    continue;
                }
                let path = job_dir.join(join_key(r));
                let Some(join) = read::<JoinRecord>(&path) else {
                    continue;
                };
                if join.nonce != nonce {
                    stale[r] = true;
                    continue;
                }
                if join.world != world {
                    return Err(store_error(
                        &path,
                        format!(
                            "rank {r} joined this run as one of {} ranks, rank 0 is one of \
                             {world}: were they started by the same launcher?",
                            join.world
                        ),
                    ));
                }
                tokens[r] = Some(join.token);
            }
            let gone: Vec<usize> = (0..world).filter(|&r| tokens[r].is_none()).collect();
            Ok(if gone.is_empty() { Ok(()) } else { Err(gone) })
        })?;
        if let Err((waited, gone)) = polled {
            let old: Vec<usize> = gone.iter().copied().filter(|&r| stale[r]).collect();
            let seen = if old.is_empty() {
                String::new()
            } else {
                format!(
                    " (the join records of rank {} belong to an earlier run)",
                    list(&old)
                )
            };
            return Err(Error::StoreTimeout {
                dir: job_dir.to_path_buf(),
                keys: gone.iter().map(|&r| join_key(r)).collect(),
                rank: 0,
                waited,
                detail: format!(
                    "rank {} never joined run {}{seen}: are they running, with job id {:?} and \
                     a world of {world}?",
                    list(&gone),
                    generation(nonce),
                    self.job
                ),
            });
        }
        let tokens = tokens
            .into_iter()
            .map(|t| t.expect("the poll ends only when every rank's token is in"))
            .collect();
        write(
            &job_dir.join(ROSTER),
            &Roster {
                nonce,
                world,
                tokens,
            },
        )?;
        Ok(nonce)
    }

    /// Rank r > 0: answers the run that `run` names until rank 0 admits this rank's token.
    fn enter(&self, job_dir: &Path, token: u64) -> Result<u64> {
        let (rank, world) = (self.rank, self.world);
        let join_path = job_dir.join(join_key(rank));
        let mut answered = None;
        let mut seen = String::from("no run record: rank 0 has not started");
        let polled = self.waiter(vec![ROSTER.to_string()]).poll(|| {
            let Some(run) = read::<RunRecord>(&job_dir.join(RUN)) else {
                return Ok(Err(vec![0]));
            };
            if answered != Some(run.nonce) {
                let join = JoinRecord {
                    nonce: run.nonce,
                    token,
                    world,
                };
                write(&join_path, &join)?;
                answered = Some(run.nonce);
            }
            let name = generation(run.nonce);
            seen = format!(
                "rank 0 has not admitted it to run {name} (a world of {})",
                run.world
            );
            match read::<Roster>(&job_dir.join(ROSTER)) {
                Some(roster) if roster.nonce == run.nonce => {
                    if roster.tokens.get(rank) == Some(&token) {
                        if roster.world != world {
                            return Err(store_error(
                                &job_dir.join(ROSTER),
                                format!(
                                    "rank 0 admitted rank {rank} to run {name} of {} ranks, \
                                     rank {rank} is one of {world}",
                                    roster.world
                                ),
                            ));
                        }
                        return Ok(Ok(run.nonce));
                    }
                    seen = format!(
                        "the roster of run {name} lists another process as rank {rank}: it is \
                         an earlier run's, or a second process was started as rank {rank}"
                    );
                }
                _ => {}
            }
            Ok(Err(vec![0]))
        })?;
        polled.map_err(|(waited, _)| Error::StoreTimeout {
            dir: job_dir.to_path_buf(),
            keys: vec![ROSTER.to_string()],
            rank,
            waited,
            detail: format!(
                "rank 0 never admitted rank {rank} to a run ({seen}): is rank 0 running, with \
                 job id {:?}?",
                self.job
            ),
        })
    }

    fn waiter(&self, keys: Vec<String>) -> Waiter<'_> {
        Waiter {
            deadline: self.deadline,
            progress: &self.progress,
            rank: self.rank,
            keys,
        }
    }
}

fn join_key(rank: usize) -> String {
    format!("join.{rank}")
}

/// The directory name of the run `nonce`.
fn generation(nonce: u64) -> String {
    format!("{GENERATION}{nonce:016x}")
}

/// Writes a job record (run nonce 0 in its header: it belongs to no run's directory).
fn write(path: &Path, value: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec(value).expect("a rendezvous record serializes");
    crate::atomic::write_atomic(path, &record(0, &bytes))
}

/// A job record, `None` while there is none or it is unreadable (torn by a writer that died, or
/// foreign): a rendezvous waits on, and its timeout says what it saw.
fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = read_record(path, 0).ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// Removes the directories of earlier runs of this job (best effort: one that cannot be
/// removed is only logged, since no rank of this run reads it).
fn remove_earlier_generations(job_dir: &Path, nonce: u64) {
    let ours = generation(nonce);
    let Ok(entries) = std::fs::read_dir(job_dir) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(GENERATION)
            && name != ours
            && let Err(e) = std::fs::remove_dir_all(entry.path())
        {
            let dir = entry.path();
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an earlier run");
        }
    }
}

/// A random, non-zero u64: a run's nonce or a rank's token. `RandomState` is seeded from the
/// operating system's randomness; the time and process id make two draws differ even where it
/// is not.
fn draw() -> u64 {
    use std::hash::BuildHasher;
    static DRAWN: AtomicU64 = AtomicU64::new(0);
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let count = DRAWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let state = std::collections::hash_map::RandomState::new();
    state.hash_one((time, std::process::id(), count)).max(1)
}
