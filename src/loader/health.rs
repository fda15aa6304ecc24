//! Worker health: what each worker thread has built, how busy it was, when it last finished a
//! batch, and whether it is slow or stalled. Reported (in [`crate::loader::LoaderStats`] and by
//! tracing), never acted on: the order does not depend on timing, so a slow worker only makes
//! the stream wait, and the elastic global batch is the answer to uneven ranks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Batches a worker (and the others) must have built before its rate is judged.
const MIN_BATCHES: u64 = 3;

/// How a worker is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerStatus {
    /// Building at about the others' rate, or idle.
    #[default]
    Healthy,
    /// Its rate (real tokens per busy second) is below the median of the others' divided by
    /// the slow factor ([`crate::loader::LoaderBuilder::with_slow_factor`]).
    Slow,
    /// It has been building one batch for longer than the watchdog interval.
    Stalled,
}

impl std::fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkerStatus::Healthy => "healthy",
            WorkerStatus::Slow => "slow",
            WorkerStatus::Stalled => "stalled",
        })
    }
}

/// One worker's health.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct WorkerStats {
    /// The worker's index (its thread is `shardflow-worker-{index}`).
    pub index: usize,
    /// Batches it built.
    pub batches: u64,
    /// Real tokens in them.
    pub real_tokens: u64,
    /// Time it spent building.
    pub busy: Duration,
    /// Time since it last finished a batch; `None` before its first.
    pub since_last_batch: Option<Duration>,
    /// How long its last batch took to build; `None` before its first.
    pub last_build: Option<Duration>,
    /// How long the batch it is building has taken so far; `None` while idle.
    pub building_for: Option<Duration>,
    /// Real tokens per second of busy time.
    pub tokens_per_s: f64,
    /// Slow, stalled or healthy.
    pub status: WorkerStatus,
}

/// One worker thread's counters: written by it, read by whoever asks for stats.
#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    real_tokens: AtomicU64,
    busy_ns: AtomicU64,
    /// Nanoseconds its last build took.
    last_build_ns: AtomicU64,
    /// Nanoseconds after the loader's start when it last finished a batch, plus one (0: never).
    last_done: AtomicU64,
    /// Nanoseconds after the loader's start when the build under way began, plus one (0: idle).
    building_since: AtomicU64,
    /// The status last reported by tracing.
    reported: AtomicU8,
}

/// Every worker's counters and the rules that judge them.
pub(crate) struct Health {
    start: Instant,
    workers: Box<[Counters]>,
    watchdog: Duration,
    slow_factor: f64,
}

impl Health {
    pub fn new(workers: usize, watchdog: Duration, slow_factor: f64) -> Self {
        Health {
            start: Instant::now(),
            workers: (0..workers).map(|_| Counters::default()).collect(),
            watchdog,
            slow_factor,
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64 + 1
    }

    /// Worker `w` starts a build.
    pub fn begin(&self, w: usize) {
        self.workers[w]
            .building_since
            .store(self.now(), Ordering::Relaxed);
    }

    /// Worker `w` finished a build of `real` real tokens that took `busy`.
    pub fn end(&self, w: usize, busy: Duration, real: u64) {
        let c = &self.workers[w];
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.real_tokens.fetch_add(real, Ordering::Relaxed);
        c.busy_ns
            .fetch_add(busy.as_nanos() as u64, Ordering::Relaxed);
        c.last_build_ns
            .store(busy.as_nanos() as u64, Ordering::Relaxed);
        c.last_done.store(self.now(), Ordering::Relaxed);
        c.building_since.store(0, Ordering::Relaxed);
    }

    /// Every worker's health now; a worker that has turned slow or stalled since the last call
    /// is logged (a warning), one that has recovered too (info).
    pub fn snapshot(&self) -> Vec<WorkerStats> {
        let now = self.now();
        let mut stats: Vec<WorkerStats> = self
            .workers
            .iter()
            .enumerate()
            .map(|(index, c)| {
                let busy = Duration::from_nanos(c.busy_ns.load(Ordering::Relaxed));
                let real_tokens = c.real_tokens.load(Ordering::Relaxed);
                let ago = |at: u64| (at > 0).then(|| Duration::from_nanos(now.saturating_sub(at)));
                let building_for = ago(c.building_since.load(Ordering::Relaxed));
                let batches = c.batches.load(Ordering::Relaxed);
                WorkerStats {
                    index,
                    batches,
                    real_tokens,
                    busy,
                    since_last_batch: ago(c.last_done.load(Ordering::Relaxed)),
                    last_build: (batches > 0)
                        .then(|| Duration::from_nanos(c.last_build_ns.load(Ordering::Relaxed))),
                    building_for,
                    tokens_per_s: real_tokens as f64 / busy.as_secs_f64().max(1e-9),
                    status: if building_for.is_some_and(|t| t > self.watchdog) {
                        WorkerStatus::Stalled
                    } else {
                        WorkerStatus::Healthy
                    },
                }
            })
            .collect();
        let judged: Vec<(usize, f64)> = stats
            .iter()
            .filter(|s| s.batches >= MIN_BATCHES)
            .map(|s| (s.index, rate(s)))
            .collect();
        for s in stats.iter_mut() {
            if s.status != WorkerStatus::Healthy || s.batches < MIN_BATCHES {
                continue;
            }
            let mut others: Vec<f64> = judged
                .iter()
                .filter(|(i, _)| *i != s.index)
                .map(|(_, r)| *r)
                .collect();
            if others.is_empty() {
                continue;
            }
            others.sort_by(f64::total_cmp);
            let median = others[others.len() / 2];
            if rate(s) * self.slow_factor < median {
                s.status = WorkerStatus::Slow;
            }
        }
        for s in &stats {
            let was = self.workers[s.index]
                .reported
                .swap(s.status as u8, Ordering::Relaxed);
            if was != s.status as u8 {
                match s.status {
                    WorkerStatus::Stalled => tracing::warn!(
                        worker = s.index,
                        building_s = s.building_for.unwrap_or_default().as_secs_f64(),
                        "loader worker stalled: one batch has taken longer than the watchdog \
                         interval"
                    ),
                    WorkerStatus::Slow => tracing::warn!(
                        worker = s.index,
                        tokens_per_s = s.tokens_per_s,
                        factor = self.slow_factor,
                        "loader worker slow: below the other workers' median rate by more \
                         than the slow factor"
                    ),
                    WorkerStatus::Healthy => {
                        tracing::info!(worker = s.index, "loader worker healthy again")
                    }
                }
            }
        }
        stats
    }
}

/// A worker's rate: real tokens per busy second, or batches per busy second when its batches
/// held no real token.
fn rate(s: &WorkerStats) -> f64 {
    let secs = s.busy.as_secs_f64().max(1e-9);
    if s.real_tokens > 0 {
        s.real_tokens as f64 / secs
    } else {
        s.batches as f64 / secs
    }
}

/// A handle on a loader's worker health that another thread can read while the loader runs
/// (a monitor beside the training loop). [`crate::loader::Loader::health`] gives one.
#[derive(Clone)]
pub struct WorkerHealth(pub(crate) Arc<Health>);

impl WorkerHealth {
    /// Every worker's health now (empty with 0 workers).
    pub fn workers(&self) -> Vec<WorkerStats> {
        self.0.snapshot()
    }
}

impl std::fmt::Debug for WorkerHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHealth")
            .field("workers", &self.0.workers.len())
            .finish()
    }
}
