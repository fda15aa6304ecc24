//! The threads of a loader: the state the caller and the workers share, a worker's loop, and
//! how one batch is planned, built and filed in the reorder buffer.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::collator::{Collator, Current, Skip};
use super::health::Health;
use super::job::{Job, Scheduler};
use super::state::Position;
use crate::device::DeviceSink;
use crate::error::{Error, Result};
use crate::metrics::{Aggregator, BatchMetrics};
use crate::shard::TokenId;

/// What a batch's build produced besides the prepared batch.
pub(super) struct Info {
    pub rows: usize,
    pub real: usize,
    pub padded: usize,
    pub skips: Vec<Skip>,
    pub after: Position,
    /// The batch's standard metrics and user metrics, merged by the caller in plan order.
    pub partial: Option<(BatchMetrics, Option<Aggregator>)>,
}

pub(super) type Outcome<P> = Result<(P, Info)>;

/// What the caller and the workers share.
pub(super) struct Shared<P> {
    pub state: Mutex<Flow<P>>,
    /// The caller waits here for its next batch.
    pub caller: Condvar,
    /// Workers wait here for room to plan another batch.
    pub workers: Condvar,
}

pub(super) struct Flow<P> {
    pub scheduler: Scheduler,
    /// Built batches not yet handed out, by batch index.
    pub ready: BTreeMap<u64, Outcome<P>>,
    /// Batches handed to the caller.
    pub delivered: u64,
    /// Set once planning has ended: the number of batches in the stream (or up to an error).
    pub end: Option<u64>,
    pub prefetch: u64,
    pub stop: bool,
    /// Workers still running.
    pub alive: usize,
    /// The batch the caller is parked waiting for, if it is parked.
    pub caller_waits: Option<u64>,
    /// Workers parked waiting for room to plan.
    pub idle_workers: usize,
}

impl<P> Shared<P> {
    pub fn lock(&self) -> MutexGuard<'_, Flow<P>> {
        // Workers catch their panics before they touch the lock; a poisoned lock still holds a
        // consistent state to shut down from.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(super) enum Mode<T: TokenId, S: DeviceSink<T>> {
    Inline {
        scheduler: Box<Scheduler>,
        scratch: Vec<T>,
    },
    Threads {
        shared: Arc<Shared<S::Prepared>>,
        threads: Vec<JoinHandle<()>>,
    },
}

/// What a thread builds batches with: the shared collator and sink, and its own scratch space.
pub(super) struct Kit<'a, T: TokenId, S: DeviceSink<T>> {
    pub collator: &'a Collator<T>,
    pub sink: &'a S,
    pub scratch: &'a mut Vec<T>,
}

/// Builds a batch on the current thread: staged by the collator, prepared by the sink.
pub(super) fn make<T: TokenId, S: DeviceSink<T>>(
    kit: &mut Kit<'_, T, S>,
    job: Job,
) -> Outcome<S::Prepared> {
    let Kit {
        collator,
        sink,
        scratch,
    } = kit;
    let (collator, sink) = (*collator, *sink);
    let batch = job.batch;
    let after = job.after;
    let mut current: Current = None;
    let mut skips = Vec::new();
    let run = catch_unwind(AssertUnwindSafe(|| -> Outcome<S::Prepared> {
        // User metrics need an aggregator per batch; the standard ones only counts.
        let mut user = collator
            .metrics
            .as_ref()
            .filter(|_| !collator.user_metrics.is_empty())
            .map(|c| Aggregator::new(c.clone()));
        let staged = collator.build(job, &mut current, scratch, &mut skips, user.as_mut())?;
        let partial = collator.metrics.as_ref().map(|_| {
            let counts = BatchMetrics::of(
                &staged.docs,
                collator.names.len(),
                &collator.classes,
                &collator.host_pool,
            );
            (counts, user)
        });
        let (rows, real, padded) = (
            staged.rows,
            staged.real_tokens(),
            staged.rows * staged.width,
        );
        let prepared = sink.prepare(staged)?;
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
            Some((d, s)) => (collator.names[d as usize].clone(), s),
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

/// The scheduler's next job, with a panic in planning turned into an error (both worker modes
/// plan through here).
pub(super) fn next_job(scheduler: &mut Scheduler) -> Result<Option<Job>> {
    let batch = scheduler.batch;
    catch_unwind(AssertUnwindSafe(|| scheduler.next_job())).unwrap_or_else(|panic| {
        Err(Error::WorkerPanic {
            step: batch,
            dataset: "-".into(),
            sample: 0,
            message: format!("in the planner: {}", panic_message(&panic)),
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

/// The counters a loader's threads add to: build time, batches planned, per-worker health.
#[derive(Clone)]
pub(super) struct Meters {
    pub busy: Arc<AtomicU64>,
    pub planned: Arc<AtomicU64>,
    pub health: Arc<Health>,
}

pub(super) fn spawn<T: TokenId, S: DeviceSink<T>>(
    scheduler: Scheduler,
    collator: &Arc<Collator<T>>,
    sink: &Arc<S>,
    workers: usize,
    prefetch: usize,
    meters: Meters,
) -> Result<Mode<T, S>> {
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
    let mut threads = Vec::with_capacity(workers);
    for w in 0..workers {
        let (shared2, collator, sink) = (shared.clone(), collator.clone(), sink.clone());
        let (busy, planned, health) = (
            meters.busy.clone(),
            meters.planned.clone(),
            meters.health.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("shardflow-worker-{w}"))
            .spawn(move || {
                let me = (w, &*health);
                work(&shared2, &collator, &*sink, &busy, &planned, me);
                shared2.lock().alive -= 1;
                shared2.caller.notify_all();
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                // Stop the workers already running before reporting.
                shared.lock().stop = true;
                shared.workers.notify_all();
                for t in threads {
                    let _ = t.join();
                }
                return Err(Error::Spawn {
                    what: format!("loader worker thread {w} of {workers}"),
                    error: e,
                });
            }
        }
    }
    Ok(Mode::Threads { shared, threads })
}

/// What a thread holding the lock found to do.
pub(super) enum Turn {
    /// Build this job (the lock is released meanwhile).
    Build(Job),
    /// No room to plan: too many batches ahead of the caller.
    Full,
    /// Planning has ended (stream end, error, or stop).
    Over,
}

/// Plans the next batch if there is room; records the end of the stream or a planning error.
pub(super) fn plan_next<P>(flow: &mut Flow<P>, shared: &Shared<P>, planned: &AtomicU64) -> Turn {
    if flow.stop || flow.end.is_some() {
        return Turn::Over;
    }
    if flow.scheduler.batch >= flow.delivered + flow.prefetch {
        return Turn::Full;
    }
    let batch = flow.scheduler.batch;
    match next_job(&mut flow.scheduler) {
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

/// Builds `job` without the lock and files it as ready; returns the lock. `worker` is the
/// worker thread building it and the health it reports to (`None` for the caller's thread).
pub(super) fn build_unlocked<'a, T: TokenId, S: DeviceSink<T>>(
    shared: &'a Shared<S::Prepared>,
    flow: MutexGuard<'a, Flow<S::Prepared>>,
    job: Job,
    kit: &mut Kit<'_, T, S>,
    busy: &AtomicU64,
    worker: Option<(usize, &Health)>,
) -> MutexGuard<'a, Flow<S::Prepared>> {
    drop(flow);
    let batch = job.batch;
    if let Some((w, health)) = worker {
        health.begin(w);
    }
    let start = Instant::now();
    let outcome = make(kit, job);
    let took = start.elapsed();
    busy.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    if let Some((w, health)) = worker {
        let real = outcome.as_ref().map_or(0, |(_, info)| info.real as u64);
        health.end(w, took, real);
    }
    let mut flow = shared.lock();
    flow.ready.insert(batch, outcome);
    // Wake the caller only for the batch it waits for (a notify is a system call).
    if flow.caller_waits == Some(batch) {
        shared.caller.notify_one();
    }
    flow
}

/// The next batch planned and built on the caller's thread (a loader without workers); `None`
/// at the end of the stream. The time spent building is added to `built`.
pub(super) fn build_inline<T: TokenId, S: DeviceSink<T>>(
    scheduler: &mut Scheduler,
    kit: &mut Kit<'_, T, S>,
    planned: &AtomicU64,
    built: &mut Duration,
) -> Option<Outcome<S::Prepared>> {
    match next_job(scheduler) {
        Ok(Some(job)) => {
            planned.fetch_add(1, Ordering::Relaxed);
            let t = Instant::now();
            let outcome = make(kit, job);
            *built += t.elapsed();
            Some(outcome)
        }
        Ok(None) => None,
        Err(e) => Some(Err(e)),
    }
}

/// The caller's loop: waits for batch `want` in the reorder buffer, `None` at the end of the
/// stream. With a `kit`, rather than sleep, the caller builds the batch it waits for when no
/// worker has started it (on few cores this saves a thread handoff per batch); never a later
/// one, which would hold it past the moment its batch is ready. A wait longer than `watchdog`
/// logs a warning (`start`: when the caller asked) and goes on. The time spent building is
/// added to `built`.
pub(super) fn wait_ready<T: TokenId, S: DeviceSink<T>>(
    shared: &Shared<S::Prepared>,
    want: u64,
    mut kit: Option<Kit<'_, T, S>>,
    meters: &Meters,
    watchdog: Duration,
    start: Instant,
    built: &mut Duration,
) -> Option<Outcome<S::Prepared>> {
    let mut flow = shared.lock();
    loop {
        if let Some(outcome) = flow.ready.remove(&want) {
            flow.delivered = want + 1;
            if flow.idle_workers > 0 {
                shared.workers.notify_one();
            }
            return Some(outcome);
        }
        if flow.end.is_some_and(|end| want >= end) {
            return None;
        }
        if let Some(kit) = kit.as_mut()
            && flow.scheduler.batch == want
            && let Turn::Build(job) = plan_next(&mut flow, shared, &meters.planned)
        {
            let t = Instant::now();
            flow = build_unlocked(shared, flow, job, kit, &meters.busy, None);
            *built += t.elapsed();
            continue;
        }
        if flow.alive == 0 && flow.end.is_none() {
            return Some(Err(Error::WorkersStopped { batch: want }));
        }
        flow.caller_waits = Some(want);
        let (next, timeout) = shared
            .caller
            .wait_timeout(flow, watchdog)
            .unwrap_or_else(|e| e.into_inner());
        flow = next;
        flow.caller_waits = None;
        if timeout.timed_out() {
            // Names a stalled or slow worker, if one is the cause.
            meters.health.snapshot();
            tracing::warn!(
                batch = want,
                waited_s = start.elapsed().as_secs_f64(),
                ready = flow.ready.len(),
                "no batch has arrived for a while; still waiting"
            );
        }
    }
}

/// A worker's loop: plan the next batch under the lock, build it outside, file it as ready.
fn work<T: TokenId, S: DeviceSink<T>>(
    shared: &Shared<S::Prepared>,
    collator: &Collator<T>,
    sink: &S,
    busy: &AtomicU64,
    planned: &AtomicU64,
    me: (usize, &Health),
) {
    let mut scratch = Vec::new();
    let mut kit = Kit {
        collator,
        sink,
        scratch: &mut scratch,
    };
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
                flow = build_unlocked(shared, flow, job, &mut kit, busy, Some(me));
            }
        }
    }
}
