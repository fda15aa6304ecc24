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

mod build;
mod job;
pub mod measure;
mod state;

pub use state::*;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::collate::{CollateConfig, Pool};
use crate::device::{DeviceSink, HostSink};
use crate::error::{Error, Result};
use crate::metrics::{Aggregator, BatchMetrics, MetricsConfig, SampleMetrics};
use crate::order::{DatasetSpec, OrderConfig, Plan, Planner, ResumeOptions};
use crate::shard::{Dataset, TokenId};
use crate::transform::{BadSamplePolicy, TransformConfig, UserTransform};
use build::{Builder, Current, Parts, Skip, UserMetric};
use job::{Job, Packer, Scheduler};

/// A named dataset with its mixture weight.
#[derive(Clone, Debug)]
pub struct Source {
    /// Unique name; checkpoints key state by it.
    pub name: String,
    /// The shards.
    pub data: Dataset,
    /// Mixture weight (finite, positive; normalized over the sources).
    pub weight: f64,
}

impl Source {
    /// A source named `name` over `data` with weight `weight`.
    pub fn new(name: impl Into<String>, data: Dataset, weight: f64) -> Self {
        Source {
            name: name.into(),
            data,
            weight,
        }
    }
}

/// Builds a [`Loader`]: `LoaderBuilder::new(sources).with_workers(2).build_host()`.
pub struct LoaderBuilder<T: TokenId> {
    sources: Vec<Source>,
    order: OrderConfig,
    collate: CollateConfig,
    transform: TransformConfig,
    user: Vec<UserTransform<T>>,
    metrics: Option<MetricsConfig>,
    user_metrics: Vec<UserMetric<T>>,
    workers: usize,
    prefetch: usize,
    watchdog: Duration,
    resume: Option<(LoaderState, ResumeOptions)>,
}

impl<T: TokenId> LoaderBuilder<T> {
    /// A builder over `sources` with default order, collation and transforms, 2 workers and a
    /// prefetch depth of 4.
    pub fn new(sources: Vec<Source>) -> Self {
        LoaderBuilder {
            sources,
            order: OrderConfig::default(),
            collate: CollateConfig::default(),
            transform: TransformConfig::default(),
            user: Vec::new(),
            metrics: Some(MetricsConfig::default()),
            user_metrics: Vec::new(),
            workers: 2,
            prefetch: 4,
            watchdog: Duration::from_secs(30),
            resume: None,
        }
    }

    /// The order: seed, shuffle, mixture, partition, rank and world, local batch size, limit.
    pub fn with_order(mut self, order: OrderConfig) -> Self {
        self.order = order;
        self
    }

    /// Padding or packing, sequence length, optional fields.
    pub fn with_collate(mut self, collate: CollateConfig) -> Self {
        self.collate = collate;
        self
    }

    /// Truncation, BOS/EOS, bad-sample policy.
    pub fn with_transform(mut self, transform: TransformConfig) -> Self {
        self.transform = transform;
        self
    }

    /// Appends a user transform to the chain (not available with packing).
    pub fn with_user_transform(
        mut self,
        f: impl Fn(&crate::transform::SampleInfo<'_>, &mut Vec<T>) -> Result<(), String>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.user.push(Arc::new(f));
        self
    }

    /// The standard metrics' settings, or `None` to turn metrics off (on by default).
    pub fn with_metrics(mut self, metrics: Option<MetricsConfig>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Adds a per-sample metric function: it sees each sample's ids after every transform and
    /// records metrics of the sample's dataset (padded batches; not available with packing).
    pub fn with_user_metric(
        mut self,
        f: impl Fn(
            &crate::transform::SampleInfo<'_>,
            &[T],
            &mut SampleMetrics<'_>,
        ) -> Result<(), String>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.user_metrics.push(Arc::new(f));
        self
    }

    /// Worker threads; 0 builds batches on the caller's thread.
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Batches planned ahead of the caller at most (at least 1).
    pub fn with_prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// How long the caller may wait for a batch before the loader logs a warning (it keeps
    /// waiting: a slow disk is not an error).
    pub fn with_watchdog(mut self, watchdog: Duration) -> Self {
        self.watchdog = watchdog;
        self
    }

    /// Continues the stream that `state` was taken from.
    pub fn resume(self, state: LoaderState) -> Self {
        self.resume_with(state, ResumeOptions::default())
    }

    /// Continues the stream that `state` was taken from, with `options` for changed datasets.
    pub fn resume_with(mut self, state: LoaderState, options: ResumeOptions) -> Self {
        self.resume = Some((state, options));
        self
    }

    /// Builds a loader whose batches are padded host [`crate::collate::Batch`]es.
    ///
    /// # Errors
    ///
    /// As [`LoaderBuilder::build`].
    pub fn build_host(self) -> Result<Loader<T, HostSink>> {
        self.build(HostSink)
    }

    /// Builds the loader and starts its threads.
    ///
    /// # Errors
    ///
    /// The plan's construction errors ([`OrderConfig::init`]); [`Error::Config`] for a bad
    /// collate or transform configuration; [`Error::Resume`] when the resumed state does not fit
    /// this configuration.
    pub fn build<S: DeviceSink<T>>(self, sink: S) -> Result<Loader<T, S>> {
        let LoaderBuilder {
            sources,
            order,
            collate,
            transform,
            user,
            metrics,
            user_metrics,
            workers,
            prefetch,
            watchdog,
            resume,
        } = self;
        if collate.pack && !user_metrics.is_empty() {
            return Err(Error::Config(
                "user metrics cannot be combined with packing: a packed row holds pieces of \
                 several documents"
                    .into(),
            ));
        }
        collate.check()?;
        transform.check_ids::<T>(collate.pad_id)?;
        if collate.pack && !user.is_empty() {
            return Err(Error::Config(
                "user transforms cannot be combined with packing: the packer lays documents out \
                 from their stored lengths before any worker sees them"
                    .into(),
            ));
        }
        if prefetch == 0 {
            return Err(Error::Config(
                "the prefetch depth must be at least 1".into(),
            ));
        }
        let specs = sources
            .iter()
            .map(|s| DatasetSpec::new(&s.name, s.data.len() as u64, s.weight))
            .collect();
        let (rank, world) = (order.rank, order.world);
        let plan = Arc::new(order.init(specs)?);
        let (planner, shadow, position, skips) = match &resume {
            None => {
                let p = Position {
                    batches: 0,
                    plan_step: 0,
                    rows_taken: 0,
                    doc_offset: 0,
                };
                (
                    Planner::new(plan.clone()),
                    Planner::new(plan.clone()),
                    p,
                    BTreeMap::new(),
                )
            }
            Some((state, options)) => {
                check_resume(state, &collate, &transform, rank, world)?;
                let planner = Planner::resume(plan.clone(), &state.cursor, *options)?;
                let shadow = Planner::resume(plan.clone(), &state.cursor, *options)?;
                let names = plan.names();
                let skips = state
                    .skips
                    .iter()
                    .filter_map(|s| {
                        let d = names.iter().position(|n| *n == s.dataset)?;
                        Some(((d as u32, s.epoch), s.skipped))
                    })
                    .collect();
                (planner, shadow, state.position, skips)
            }
        };
        let pool = Pool::new();
        let stop = Arc::new(AtomicBool::new(false));
        let datasets: Vec<Dataset> = sources.into_iter().map(|s| s.data).collect();
        let builder = Arc::new(Builder::new(Parts {
            datasets: datasets.clone(),
            names: plan.names().to_vec(),
            transform: transform.clone(),
            user,
            collate: collate.clone(),
            pool: pool.clone(),
            stop: stop.clone(),
            metrics: metrics.clone(),
            user_metrics,
        }));
        // The metric totals continue from the checkpoint, so a resumed run reports the same.
        let aggregator = match (
            &metrics,
            resume.as_ref().and_then(|(s, _)| s.metrics.clone()),
        ) {
            (Some(_), Some(saved)) => Aggregator::from_state(saved),
            (Some(config), None) => Aggregator::new(config.clone()),
            (None, _) => Aggregator::default(),
        };
        let packer = collate
            .pack
            .then(|| Packer::at(position.rows_taken, position.doc_offset));
        let scheduler = Scheduler::new(
            planner,
            pool.clone(),
            datasets,
            transform.clone(),
            collate.seq_len,
            packer,
            position.batches,
        );
        let sink = Arc::new(sink);
        let busy = Arc::new(AtomicU64::new(0));
        let planned = Arc::new(AtomicU64::new(position.batches));
        let mode = if workers == 0 {
            Mode::Inline {
                scheduler: Box::new(scheduler),
                scratch: Vec::new(),
            }
        } else {
            spawn(
                scheduler, &builder, &sink, workers, prefetch, &busy, &planned,
            )
        };
        Ok(Loader {
            sink,
            builder,
            plan,
            shadow,
            position,
            skips,
            stats: LoaderStats::default(),
            busy,
            planned,
            mode,
            stop,
            done: false,
            watchdog,
            scratch: Vec::new(),
            metrics: aggregator,
            rank,
            collate,
            transform,
        })
    }
}

fn check_resume(
    state: &LoaderState,
    collate: &CollateConfig,
    transform: &TransformConfig,
    rank: usize,
    world: usize,
) -> Result<()> {
    if state.collate != *collate {
        return Err(Error::Resume(format!(
            "the collate configuration changed (was {:?}, is {:?}); the batches would change",
            state.collate, collate
        )));
    }
    if state.transform != *transform {
        return Err(Error::Resume(format!(
            "the transform configuration changed (was {:?}, is {:?}); the samples would change",
            state.transform, transform
        )));
    }
    if collate.pack && (state.rank != rank || state.cursor.world != world) {
        return Err(Error::Resume(format!(
            "a packed stream belongs to its rank: the state is rank {} of {}, the loader rank {} \
             of {}",
            state.rank, state.cursor.world, rank, world
        )));
    }
    Ok(())
}

/// What a batch's build produced besides the prepared batch.
struct Info {
    rows: usize,
    real: usize,
    padded: usize,
    skips: Vec<Skip>,
    after: Position,
    /// The batch's standard metrics and user metrics, merged by the caller in plan order.
    partial: Option<(BatchMetrics, Option<Aggregator>)>,
}

type Outcome<P> = Result<(P, Info)>;

/// What the caller and the workers share.
struct Shared<P> {
    state: Mutex<Flow<P>>,
    /// The caller waits here for its next batch.
    caller: Condvar,
    /// Workers wait here for room to plan another batch.
    workers: Condvar,
}

struct Flow<P> {
    scheduler: Scheduler,
    /// Built batches not yet handed out, by batch index.
    ready: BTreeMap<u64, Outcome<P>>,
    /// Batches handed to the caller.
    delivered: u64,
    /// Set once planning has ended: the number of batches in the stream (or up to an error).
    end: Option<u64>,
    prefetch: u64,
    stop: bool,
    /// Workers still running.
    alive: usize,
    /// The batch the caller is parked waiting for, if it is parked.
    caller_waits: Option<u64>,
    /// Workers parked waiting for room to plan.
    idle_workers: usize,
}

impl<P> Shared<P> {
    fn lock(&self) -> MutexGuard<'_, Flow<P>> {
        // Workers catch their panics before they touch the lock; a poisoned lock still holds a
        // consistent state to shut down from.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Mode<T: TokenId, S: DeviceSink<T>> {
    Inline {
        scheduler: Box<Scheduler>,
        scratch: Vec<T>,
    },
    Threads {
        shared: Arc<Shared<S::Prepared>>,
        threads: Vec<JoinHandle<()>>,
    },
}

/// Builds a batch on the current thread: staged by the builder, prepared by the sink.
fn make<T: TokenId, S: DeviceSink<T>>(
    builder: &Builder<T>,
    sink: &S,
    job: Job,
    scratch: &mut Vec<T>,
) -> Outcome<S::Prepared> {
    let batch = job.batch;
    let after = job.after;
    let mut current: Current = None;
    let mut skips = Vec::new();
    let run = catch_unwind(AssertUnwindSafe(|| -> Outcome<S::Prepared> {
        // User metrics need an aggregator per batch; the standard ones only counts.
        let mut user = builder
            .metrics
            .as_ref()
            .filter(|_| !builder.user_metrics.is_empty())
            .map(|c| Aggregator::new(c.clone()));
        let staged = builder.build(job, &mut current, scratch, &mut skips, user.as_mut())?;
        let partial = builder
            .metrics
            .as_ref()
            .map(|_| (BatchMetrics::of(&staged.docs, builder.names.len()), user));
        let (rows, real, padded) = (
            staged.rows,
            staged.real_tokens(),
            staged.rows * staged.width,
        );
        let prepared = sink.prepare(staged, &builder.collate, &builder.pool)?;
        Ok((
            prepared,
            Info {
                rows,
                real,
                padded,
                skips: std::mem::take(&mut skips),
                after,
                partial,
            },
        ))
    }));
    run.unwrap_or_else(|panic| {
        let (dataset, sample) = match current {
            Some((d, s)) => (builder.names[d as usize].clone(), s),
            None => ("-".into(), 0),
        };
        Err(Error::WorkerPanic {
            step: batch,
            dataset,
            sample,
            message: panic_message(&panic),
        })
    })
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn spawn<T: TokenId, S: DeviceSink<T>>(
    scheduler: Scheduler,
    builder: &Arc<Builder<T>>,
    sink: &Arc<S>,
    workers: usize,
    prefetch: usize,
    busy: &Arc<AtomicU64>,
    planned: &Arc<AtomicU64>,
) -> Mode<T, S> {
    let delivered = scheduler.batch;
    let shared = Arc::new(Shared {
        state: Mutex::new(Flow {
            scheduler,
            ready: BTreeMap::new(),
            delivered,
            end: None,
            prefetch: prefetch as u64,
            stop: false,
            alive: workers,
            caller_waits: None,
            idle_workers: 0,
        }),
        caller: Condvar::new(),
        workers: Condvar::new(),
    });
    let threads = (0..workers)
        .map(|w| {
            let (shared, builder, sink) = (shared.clone(), builder.clone(), sink.clone());
            let (busy, planned) = (busy.clone(), planned.clone());
            std::thread::Builder::new()
                .name(format!("shardflow-worker-{w}"))
                .spawn(move || {
                    work(&shared, &builder, &*sink, &busy, &planned);
                    shared.lock().alive -= 1;
                    shared.caller.notify_all();
                })
                .expect("spawning a loader worker thread")
        })
        .collect();
    Mode::Threads { shared, threads }
}

/// What a thread holding the lock found to do.
enum Turn {
    /// Build this job (the lock is released meanwhile).
    Build(Job),
    /// No room to plan: too many batches ahead of the caller.
    Full,
    /// Planning has ended (stream end, error, or stop).
    Over,
}

/// Plans the next batch if there is room; records the end of the stream or a planning error.
fn plan_next<P>(flow: &mut Flow<P>, shared: &Shared<P>, planned: &AtomicU64) -> Turn {
    if flow.stop || flow.end.is_some() {
        return Turn::Over;
    }
    if flow.scheduler.batch >= flow.delivered + flow.prefetch {
        return Turn::Full;
    }
    let batch = flow.scheduler.batch;
    let next =
        catch_unwind(AssertUnwindSafe(|| flow.scheduler.next_job())).unwrap_or_else(|panic| {
            Err(Error::WorkerPanic {
                step: batch,
                dataset: "-".into(),
                sample: 0,
                message: format!("in the planner: {}", panic_message(&panic)),
            })
        });
    match next {
        Ok(Some(job)) => {
            planned.fetch_add(1, Ordering::Relaxed);
            Turn::Build(job)
        }
        Ok(None) => {
            flow.end = Some(batch);
            shared.caller.notify_all();
            shared.workers.notify_all();
            Turn::Over
        }
        Err(e) => {
            flow.ready.insert(batch, Err(e));
            flow.end = Some(batch + 1);
            shared.caller.notify_all();
            shared.workers.notify_all();
            Turn::Over
        }
    }
}

/// Builds `job` without the lock and files it as ready; returns the lock.
fn build_unlocked<'a, T: TokenId, S: DeviceSink<T>>(
    shared: &'a Shared<S::Prepared>,
    flow: MutexGuard<'a, Flow<S::Prepared>>,
    job: Job,
    builder: &Builder<T>,
    sink: &S,
    scratch: &mut Vec<T>,
    busy: &AtomicU64,
) -> MutexGuard<'a, Flow<S::Prepared>> {
    drop(flow);
    let batch = job.batch;
    let start = Instant::now();
    let outcome = make(builder, sink, job, scratch);
    busy.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    let mut flow = shared.lock();
    flow.ready.insert(batch, outcome);
    // Wake the caller only for the batch it waits for (a notify is a system call).
    if flow.caller_waits == Some(batch) {
        shared.caller.notify_one();
    }
    flow
}

/// A worker's loop: plan the next batch under the lock, build it outside, file it as ready.
fn work<T: TokenId, S: DeviceSink<T>>(
    shared: &Shared<S::Prepared>,
    builder: &Builder<T>,
    sink: &S,
    busy: &AtomicU64,
    planned: &AtomicU64,
) {
    let mut scratch = Vec::new();
    let mut flow = shared.lock();
    loop {
        match plan_next(&mut flow, shared, planned) {
            Turn::Over => return,
            Turn::Full => {
                flow.idle_workers += 1;
                flow = shared.workers.wait(flow).unwrap_or_else(|e| e.into_inner());
                flow.idle_workers -= 1;
            }
            Turn::Build(job) => {
                flow = build_unlocked(shared, flow, job, builder, sink, &mut scratch, busy);
            }
        }
    }
}

/// A stream of batches in plan order, ending when the plan's stream limit is reached.
///
/// `next()` returns `Some(Err(..))` once for a failed batch (naming the batch, dataset and
/// sample) and `None` after it. Dropping the loader stops and joins its threads.
pub struct Loader<T: TokenId, S: DeviceSink<T> = HostSink> {
    sink: Arc<S>,
    builder: Arc<Builder<T>>,
    plan: Arc<Plan>,
    shadow: Planner,
    position: Position,
    skips: BTreeMap<(u32, u64), u64>,
    stats: LoaderStats,
    busy: Arc<AtomicU64>,
    planned: Arc<AtomicU64>,
    mode: Mode<T, S>,
    stop: Arc<AtomicBool>,
    done: bool,
    watchdog: Duration,
    scratch: Vec<T>,
    metrics: Aggregator,
    rank: usize,
    collate: CollateConfig,
    transform: TransformConfig,
}

impl<T: TokenId, S: DeviceSink<T>> Loader<T, S> {
    /// The plan the loader follows.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// The state after the batches the caller has received (not those prefetched).
    pub fn state(&self) -> LoaderState {
        let names = self.plan.names();
        LoaderState {
            version: LoaderState::VERSION,
            cursor: self.shadow.cursor(),
            position: self.position,
            rank: self.rank,
            collate: self.collate.clone(),
            transform: self.transform.clone(),
            metrics: self.builder.metrics.as_ref().map(|_| self.metrics.state()),
            skips: self
                .skips
                .iter()
                .map(|(&(d, epoch), &skipped)| SkipCount {
                    dataset: names[d as usize].clone(),
                    epoch,
                    skipped,
                })
                .collect(),
        }
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
        s.worker_busy = Duration::from_nanos(self.busy.load(Ordering::Relaxed));
        s.queue_depth = self
            .planned
            .load(Ordering::Relaxed)
            .saturating_sub(self.position.batches) as usize;
        s.pool = self.builder.pool.stats();
        s
    }

    fn fail(&mut self, e: Error) -> Option<Result<S::Output>> {
        self.done = true;
        Some(Err(e))
    }

    /// Accounts for a built batch in plan order and uploads it.
    fn deliver(&mut self, outcome: Outcome<S::Prepared>) -> Option<Result<S::Output>> {
        let (prepared, info) = match outcome {
            Ok(x) => x,
            Err(e) => return self.fail(e),
        };
        for skip in &info.skips {
            let count = self.skips.entry((skip.dataset, skip.epoch)).or_default();
            *count += 1;
            self.stats.skipped += 1;
            if let BadSamplePolicy::Skip { max_per_epoch } = self.transform.bad_samples
                && *count > max_per_epoch
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
                .merge_into(&mut self.metrics, self.plan.names())
                .and_then(|()| user.as_ref().map_or(Ok(()), |u| self.metrics.merge(u)));
            if let Err(e) = merged {
                return self.fail(e);
            }
        }
        self.position = info.after;
        self.shadow.skip_to(info.after.plan_step);
        self.stats.batches += 1;
        self.stats.rows += info.rows as u64;
        self.stats.real_tokens += info.real as u64;
        self.stats.padded_tokens += info.padded as u64;
        match self.sink.upload(prepared) {
            Ok(out) => Some(Ok(out)),
            Err(e) => self.fail(e),
        }
    }
}

impl<T: TokenId, S: DeviceSink<T>> Iterator for Loader<T, S> {
    type Item = Result<S::Output>;

    fn next(&mut self) -> Option<Result<S::Output>> {
        if self.done {
            return None;
        }
        let start = Instant::now();
        let want = self.position.batches;
        let outcome = match &mut self.mode {
            Mode::Inline { scheduler, scratch } => match scheduler.next_job() {
                Ok(Some(job)) => {
                    self.planned.fetch_add(1, Ordering::Relaxed);
                    make(&self.builder, &*self.sink, job, scratch)
                }
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(e) => Err(e),
            },
            Mode::Threads { shared, .. } => {
                let mut flow = shared.lock();
                loop {
                    if let Some(outcome) = flow.ready.remove(&want) {
                        flow.delivered = want + 1;
                        if flow.idle_workers > 0 {
                            shared.workers.notify_one();
                        }
                        break outcome;
                    }
                    if flow.end.is_some_and(|end| want >= end) {
                        self.done = true;
                        return None;
                    }
                    // Rather than sleep, the caller builds the next batch itself when there is one
                    // to build: on few cores this saves a thread handoff per batch.
                    if let Turn::Build(job) = plan_next(&mut flow, shared, &self.planned) {
                        flow = build_unlocked(
                            shared,
                            flow,
                            job,
                            &self.builder,
                            &*self.sink,
                            &mut self.scratch,
                            &self.busy,
                        );
                        continue;
                    }
                    if flow.alive == 0 && flow.end.is_none() {
                        break Err(Error::Config(format!(
                            "the loader workers stopped before batch {want} was built"
                        )));
                    }
                    flow.caller_waits = Some(want);
                    let (next, timeout) = shared
                        .caller
                        .wait_timeout(flow, self.watchdog)
                        .unwrap_or_else(|e| e.into_inner());
                    flow = next;
                    flow.caller_waits = None;
                    if timeout.timed_out() {
                        tracing::warn!(
                            batch = want,
                            waited_s = start.elapsed().as_secs_f64(),
                            ready = flow.ready.len(),
                            "no batch has arrived for a while; still waiting"
                        );
                    }
                }
            }
        };
        let out = self.deliver(outcome);
        self.stats.wait += start.elapsed();
        out
    }
}

impl<T: TokenId, S: DeviceSink<T>> Drop for Loader<T, S> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
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
