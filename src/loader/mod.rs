//! The loader: a sequential planner, worker threads that decode, transform and collate whole
//! batches in parallel, a reorder buffer that hands batches out in plan order, and the
//! checkpoint state of exactly what the caller has received.
//!
//! ```text
//!            ┌──────────── shared state (one mutex) ────────────┐
//!            │ scheduler (the planner)   reorder buffer (ready) │
//!            └──────▲───────────────────────────┬───────────────┘
//!   worker: plan next batch (µs) ─▶ build it ─▶ put it in ready     caller: take batch k, upload
//! ```
//!
//! A worker plans the next batch under the lock (planning is a few arithmetic operations per
//! row), builds it without the lock, and puts it in the reorder buffer. It plans only while
//! fewer than `prefetch` batches are ahead of the caller, so memory stays bounded. Everyone
//! parks on condition variables: no thread spins. Worker count is a performance knob only: the
//! stream is the same with 0 workers (everything on the caller's thread) or 16.

mod builder;
mod collator;
mod config;
mod flow;
mod health;
mod job;
mod state;

pub use builder::*;
pub use config::*;
pub use state::*;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::collate::DocRef;
use crate::collective::{Collective, all_gather_json};
use crate::device::{DeviceSink, HostSink};
use crate::error::{Error, Result};
use crate::metrics::Aggregator;
use crate::order::{Plan, Planner};
use crate::shard::TokenId;
use crate::transform::BadSamplePolicy;
use collator::Collator;
use flow::{Kit, Meters, Mode, Outcome, build_inline, wait_ready};
pub use health::{WorkerHealth, WorkerStats, WorkerStatus};

/// A stream of batches in plan order, ending when the plan's stream limit is reached.
///
/// `next()` returns `Some(Err(..))` once for a failed batch (naming the batch, dataset and
/// sample) and `None` after it. Dropping the loader stops and joins its threads.
pub struct Loader<T: TokenId, S: DeviceSink<T> = HostSink> {
    sink: Arc<S>,
    collator: Arc<Collator<T>>,
    plan: Arc<Plan>,
    shadow: Planner,
    position: Position,
    skips: BTreeMap<(u32, u64), u64>,
    stats: LoaderStats,
    meters: Meters,
    mode: Mode<T, S>,
    done: bool,
    watchdog: Duration,
    /// Whether the caller builds the batch it waits for when no worker has started it.
    caller_builds: bool,
    scratch: Vec<T>,
    metrics: Aggregator,
    /// The samples the skip policy skipped in the batch last delivered.
    skipped: Vec<DocRef>,
}

/// The batch a loader delivered last, as the training loop records it after that batch
/// ([`Loader::last_batch`]).
#[derive(Debug)]
pub struct LastBatch<'a> {
    /// Its 1-based step ([`Loader::step`]).
    pub step: u64,
    /// The samples the skip policy skipped in it ([`Loader::skipped`]).
    pub skipped: &'a [DocRef],
    /// The metrics of the batches delivered so far ([`Loader::metrics_mut`]).
    pub metrics: &'a mut Aggregator,
}

impl<T: TokenId, S: DeviceSink<T>> Loader<T, S> {
    /// The plan the loader follows.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// The sink batches go through (for its device and counters).
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The state after the batches the caller has received (not those prefetched). Its
    /// `history_step` is `None`: a metrics history's recorder fills it in
    /// (`crate::history::Recorder::checkpoint`).
    pub fn state(&self) -> LoaderState {
        let names = self.plan.names();
        LoaderState {
            version: LoaderState::VERSION,
            cursor: self.shadow.cursor(),
            position: self.position,
            rank: self.plan.config().rank,
            collate: self.collator.collate.clone(),
            transform: self.collator.transform.clone(),
            metrics: self.collator.metrics.as_ref().map(|_| self.metrics.state()),
            skips: self
                .skips
                .iter()
                .map(|(&(d, epoch), &skipped)| SkipCount {
                    dataset: names[d as usize].clone(),
                    epoch,
                    skipped,
                })
                .collect(),
            scope: Scope::Rank,
            history_step: None,
        }
    }

    /// Batches delivered so far, counted from the stream's start (a resumed loader continues
    /// the count): the 1-based step of the batch `next` last returned, 0 before the first.
    pub fn step(&self) -> u64 {
        self.position.batches
    }

    /// The samples the skip policy skipped in the batch `next` last returned (empty before the
    /// first batch): each with its dataset (an index into [`Plan::names`]), sample, epoch and
    /// [`DocRef::SKIPPED`] (its row and columns are not kept). A metrics history records them
    /// (`crate::history::Recorder::after_batch`); read them after every batch, as the next
    /// batch replaces them.
    pub fn skipped(&self) -> &[DocRef] {
        &self.skipped
    }

    /// The batch `next` last returned, as the training loop records it: its step, the samples
    /// it skipped and the metrics so far, borrowed together. They are the arguments of a metrics
    /// history's `crate::history::Recorder::after_batch`, with no copy of the skipped samples:
    /// `recorder.after_batch(last.step, last.skipped, last.metrics, collective)`.
    pub fn last_batch(&mut self) -> LastBatch<'_> {
        LastBatch {
            step: self.position.batches,
            skipped: &self.skipped,
            metrics: &mut self.metrics,
        }
    }

    /// A checkpoint whose metrics and skip counts are the whole world's, reduced over the ranks
    /// through `collective`: resuming it with any world size continues the same reduced
    /// totals (rank 0 restores them; the other ranks start from zero). Every rank must call it
    /// at the same step, like any collective. [`Loader::state`] is this rank's alone, for a
    /// resume with the same rank and world size.
    ///
    /// # Errors
    ///
    /// The collective's errors; [`Error::Metric`] when ranks disagree on a metric's kind.
    pub fn checkpoint(&mut self, collective: &dyn Collective) -> Result<LoaderState> {
        let mut state = self.state();
        state.scope = Scope::World;
        if self.collator.metrics.is_some() {
            state.metrics = Some(self.metrics.reduce(collective)?.state());
        }
        let mut skips: BTreeMap<(String, u64), u64> = BTreeMap::new();
        for theirs in all_gather_json(collective, &state.skips, "skip counts")? {
            for s in theirs {
                *skips.entry((s.dataset, s.epoch)).or_default() += s.skipped;
            }
        }
        state.skips = skips
            .into_iter()
            .map(|((dataset, epoch), skipped)| SkipCount {
                dataset,
                epoch,
                skipped,
            })
            .collect();
        Ok(state)
    }

    /// The metrics of the batches received so far (standard metrics and user metrics), this
    /// rank's only; [`Aggregator::reduce`] combines ranks.
    pub fn metrics(&self) -> &Aggregator {
        &self.metrics
    }

    /// Mutable access, to [`Aggregator::reduce`] or [`Aggregator::reset`] the metrics.
    pub fn metrics_mut(&mut self) -> &mut Aggregator {
        &mut self.metrics
    }

    /// Counters so far.
    pub fn stats(&self) -> LoaderStats {
        let mut s = self.stats.clone();
        s.worker_busy = Duration::from_nanos(self.meters.busy.load(Ordering::Relaxed));
        s.queue_depth = self
            .meters
            .planned
            .load(Ordering::Relaxed)
            .saturating_sub(self.position.batches) as usize;
        s.pool = self.collator.pool.stats();
        s.workers = self.meters.health.snapshot();
        s
    }

    /// A handle on the workers' health that another thread can read while this loader runs.
    pub fn health(&self) -> WorkerHealth {
        WorkerHealth(Arc::clone(&self.meters.health))
    }

    fn fail(&mut self, e: Error) -> Option<Result<S::Output>> {
        self.done = true;
        Some(Err(e))
    }

    /// Uploads a built batch in plan order and, once it has arrived, accounts for it.
    fn deliver(&mut self, outcome: Outcome<S::Prepared>) -> Option<Result<S::Output>> {
        let (prepared, info) = match outcome {
            Ok(x) => x,
            Err(e) => return self.fail(e),
        };
        // Nothing is counted before the upload succeeds: a checkpoint taken after a failed upload
        // resumes with this batch.
        let batch = info.after.batches - 1;
        let out = match self.sink.upload(prepared, batch) {
            Ok(out) => out,
            Err(e) => return self.fail(e),
        };
        // The skip limit and the metrics are checked first; the batch's skips count only once
        // the whole batch is accounted, so a failure here leaves the state as it was before it.
        let mut counts = Vec::with_capacity(info.skips.len());
        for skip in &info.skips {
            let key = (skip.dataset, skip.epoch);
            let before = counts.iter().filter(|k| **k == key).count() as u64;
            let count = self
                .skips
                .get(&key)
                .copied()
                .unwrap_or(0)
                .saturating_add(before + 1);
            counts.push(key);
            if let BadSamplePolicy::Skip { max_per_epoch } = self.collator.transform.bad_samples
                && count > max_per_epoch
            {
                let e = Error::SkipLimit {
                    step: self.position.batches,
                    dataset: self.plan.names()[skip.dataset as usize].clone(),
                    epoch: skip.epoch,
                    limit: max_per_epoch,
                    sample: skip.sample,
                    reason: skip.reason.clone(),
                };
                return self.fail(e);
            }
        }
        if let Some((standard, user)) = &info.partial {
            let merged = standard
                .merge_into(&mut self.metrics, self.plan.names(), &self.collator.classes)
                .and_then(|()| user.as_ref().map_or(Ok(()), |u| self.metrics.merge(u)));
            if let Err(e) = merged {
                return self.fail(e);
            }
        }
        self.skipped.clear();
        for (skip, key) in info.skips.iter().zip(counts) {
            self.skipped.push(DocRef {
                sample: skip.sample,
                epoch: skip.epoch,
                dataset: skip.dataset,
                flags: DocRef::SKIPPED,
                ..DocRef::default()
            });
            let count = self.skips.entry(key).or_default();
            *count = count.saturating_add(1);
            self.stats.skipped += 1;
        }
        self.position = info.after;
        self.shadow.skip_to(info.after.plan_step);
        self.stats.batches += 1;
        self.stats.rows += info.rows as u64;
        self.stats.real_tokens += info.real as u64;
        self.stats.padded_tokens += info.padded as u64;
        Some(Ok(out))
    }
}

impl<T: TokenId, S: DeviceSink<T>> Iterator for Loader<T, S> {
    type Item = Result<S::Output>;

    fn next(&mut self) -> Option<Result<S::Output>> {
        if self.done {
            return None;
        }
        let start = Instant::now();
        let mut built = Duration::ZERO;
        let outcome = match &mut self.mode {
            Mode::Inline { scheduler, scratch } => {
                let mut kit = Kit {
                    collator: &self.collator,
                    sink: &*self.sink,
                    scratch,
                };
                build_inline(scheduler, &mut kit, &self.meters.planned, &mut built)
            }
            Mode::Threads { shared, .. } => {
                let kit = self.caller_builds.then(|| Kit {
                    collator: &self.collator,
                    sink: &*self.sink,
                    scratch: &mut self.scratch,
                });
                let want = self.position.batches;
                let meters = &self.meters;
                wait_ready(shared, want, kit, meters, self.watchdog, start, &mut built)
            }
        };
        let Some(outcome) = outcome else {
            self.done = true;
            return None;
        };
        let out = self.deliver(outcome);
        self.stats.wait += start.elapsed().saturating_sub(built);
        self.stats.caller_build += built;
        out
    }
}

impl<T: TokenId, S: DeviceSink<T>> Drop for Loader<T, S> {
    fn drop(&mut self) {
        self.collator.stop.store(true, Ordering::Relaxed);
        if let Mode::Threads { shared, threads } = &mut self.mode {
            {
                let mut flow = shared.lock();
                flow.stop = true;
                flow.ready.clear();
            }
            shared.workers.notify_all();
            for t in threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}
