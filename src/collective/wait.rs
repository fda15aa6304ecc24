//! Waiting in the file store: polls with backoff up to a deadline, and every so often a report
//! of what is still missing ([`StoreWait`]), so that a rank that never comes is named while the
//! others wait, not only at the deadline.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;

/// The first and the longest pause between two polls.
const FIRST_POLL: Duration = Duration::from_millis(10);
const LAST_POLL: Duration = Duration::from_secs(1);

/// A wait in progress, as reported to the callback given to
/// [`super::Rendezvous::with_progress`] or [`super::FileStore::with_progress`] (and as a
/// `tracing` event at level INFO).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreWait {
    /// The rank that waits.
    pub rank: usize,
    /// The keys it waits for (`join.1`, `roster`, `run_spec`, ...).
    pub keys: Vec<String>,
    /// The ranks it waits for, when the wait knows them (empty for a plain key).
    pub missing: Vec<usize>,
    /// How long it has waited.
    pub waited: Duration,
    /// How long it will wait in all.
    pub deadline: Duration,
}

impl fmt::Display for StoreWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rank {}: ", self.rank)?;
        if !self.missing.is_empty() {
            let ranks = self
                .missing
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>();
            write!(f, "waiting for rank {} ", ranks.join(", "))?;
            write!(f, "({})", self.keys.join(", "))?;
        } else {
            write!(f, "waiting for {}", self.keys.join(", "))?;
        }
        write!(
            f,
            ", {}s of {}s",
            self.waited.as_secs(),
            self.deadline.as_secs_f64().ceil()
        )
    }
}

/// The callback that hears about long waits, and how often.
type ProgressFn = dyn Fn(&StoreWait) + Send + Sync;

/// Who hears about a wait, every `every`.
#[derive(Clone, Default)]
pub(super) struct Progress(Option<(Duration, Arc<ProgressFn>)>);

impl Progress {
    pub(super) fn new(
        every: Duration,
        report: impl Fn(&StoreWait) + Send + Sync + 'static,
    ) -> Self {
        Progress(Some((
            every.max(Duration::from_millis(10)),
            Arc::new(report),
        )))
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some((every, _)) => write!(f, "Progress(every {every:?})"),
            None => f.write_str("Progress(none)"),
        }
    }
}

/// What a wait needs: its deadline, who hears about it, who waits for what.
pub(super) struct Waiter<'a> {
    pub(super) deadline: Duration,
    pub(super) progress: &'a Progress,
    pub(super) rank: usize,
    pub(super) keys: Vec<String>,
}

impl Waiter<'_> {
    /// Calls `ready` until it gives a value, pausing 10 ms, doubling to 1 s, between calls;
    /// `Err((waited, missing))` once the deadline has passed. `ready` returns the ranks it still
    /// waits for when it has no value; they are reported every so often.
    pub(super) fn poll<R>(
        &self,
        mut ready: impl FnMut() -> Result<std::result::Result<R, Vec<usize>>>,
    ) -> Result<std::result::Result<R, (Duration, Vec<usize>)>> {
        let start = Instant::now();
        let mut pause = FIRST_POLL;
        let every = self.progress.0.as_ref().map_or(REPORT_EVERY, |(e, _)| *e);
        let mut next_report = every;
        loop {
            let missing = match ready()? {
                Ok(v) => return Ok(Ok(v)),
                Err(missing) => missing,
            };
            let waited = start.elapsed();
            if waited >= self.deadline {
                return Ok(Err((waited, missing)));
            }
            if waited >= next_report {
                next_report = waited + every;
                self.report(waited, missing);
            }
            let until_report = next_report.saturating_sub(waited);
            let left = self.deadline.saturating_sub(waited);
            std::thread::sleep(pause.min(left).min(until_report));
            pause = (pause * 2).min(LAST_POLL);
        }
    }

    fn report(&self, waited: Duration, missing: Vec<usize>) {
        let wait = StoreWait {
            rank: self.rank,
            keys: self.keys.clone(),
            missing,
            waited,
            deadline: self.deadline,
        };
        tracing::info!(
            rank = wait.rank,
            keys = ?wait.keys,
            missing = ?wait.missing,
            waited_s = waited.as_secs(),
            "file store: still waiting"
        );
        if let Some((_, report)) = &self.progress.0 {
            report(&wait);
        }
    }
}

/// How often a wait without a progress callback logs that it is still waiting.
const REPORT_EVERY: Duration = Duration::from_secs(10);
