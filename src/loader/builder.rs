//! Building a loader: its sources, the builder, and the checks a resumed state must pass.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use super::collator::{Collator, UserMetric};
use super::flow::{Mode, spawn};
use super::job::{Packer, Scheduler, doc_len};
use super::{Loader, LoaderState, LoaderStats, Position, Scope};
use crate::collate::{CollateConfig, Pool};
use crate::device::{DeviceSink, HostSink};
use crate::error::{Error, Result};
use crate::metrics::{Aggregator, AggregatorState, ClassNames, MetricsConfig, SampleMetrics};
use crate::order::{
    Classes, DatasetSpec, OrderConfig, Owners, Partition, Planner, RankRanges, ResumeOptions,
};
use crate::shard::{Access, Dataset, TokenId};
use crate::transform::{TransformConfig, UserTransform};

/// A named dataset with its mixture weight.
#[derive(Clone, Debug)]
pub struct Source {
    /// Unique name; checkpoints key state by it.
    pub name: String,
    /// The shards.
    pub data: Dataset,
    /// Mixture weight (finite, positive; normalized over the sources).
    pub weight: f64,
    /// Each rank's ranges (the range partition) or each sample's class (the stratified
    /// partition; with another partition, for the `class` metric alone).
    pub owners: Option<Owners>,
}

impl Source {
    /// A source named `name` over `data` with weight `weight`.
    pub fn new(name: impl Into<String>, data: Dataset, weight: f64) -> Self {
        Source {
            name: name.into(),
            data,
            weight,
            owners: None,
        }
    }

    /// The same source with each rank's sample ranges, for [`Partition::Range`].
    pub fn with_ranges(mut self, ranges: RankRanges) -> Self {
        self.owners = Some(Owners::Ranges(ranges));
        self
    }

    /// The same source with a class per sample, for [`Partition::Stratified`] and the standard
    /// `class` metric.
    pub fn with_classes(mut self, classes: Classes) -> Self {
        self.owners = Some(Owners::Classes(classes));
        self
    }

    /// The Megatron shard at `prefix` as a source named after the prefix's file name.
    ///
    /// # Errors
    ///
    /// The shard's open errors ([`crate::IndexedShard::open`]).
    pub fn open(prefix: impl AsRef<std::path::Path>, weight: f64) -> Result<Self> {
        let prefix = prefix.as_ref();
        Ok(Source::new(
            crate::shard::prefix_name(prefix),
            Dataset::open(&[prefix])?,
            weight,
        ))
    }
}

/// The classes in the class files beside a dataset's shards: `web.idx` has `web.classes`, one
/// little-endian u32 per sequence ([`Classes::read`]), concatenated in shard order.
///
/// # Errors
///
/// A missing or unreadable file, named; [`Error::BadClassFile`] for a file whose count of
/// classes is not its shard's count of sequences.
pub fn classes_beside(data: &Dataset) -> Result<Classes> {
    let mut all = Vec::with_capacity(data.len());
    for shard in data.shards() {
        let path = shard.path().with_extension(Classes::EXTENSION);
        let classes = Classes::read(&path)?;
        if classes.len() != shard.len() as u64 {
            return Err(Error::BadClassFile {
                offset: 4 * classes.len().min(shard.len() as u64),
                reason: format!(
                    "{} classes for the {} sequences of {}",
                    classes.len(),
                    shard.len(),
                    shard.path().display()
                ),
                path,
            });
        }
        all.extend_from_slice(classes.as_slice());
    }
    Ok(Classes::new(all))
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
    slow_factor: f64,
    caller_builds: bool,
    read_ahead: usize,
    resume: Option<(LoaderState, ResumeOptions)>,
    start: u64,
    #[cfg(feature = "history")]
    history: Option<super::HistoryOptions>,
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
            slow_factor: 2.0,
            caller_builds: true,
            read_ahead: 0,
            resume: None,
            start: 0,
            #[cfg(feature = "history")]
            history: None,
        }
    }

    /// Writes the metrics history to `dir` (feature `history`): the data metrics every
    /// `every_k_steps` steps, and skipped samples; a resumed loader appends to the same history
    /// and never writes a step twice. See [`crate::history`].
    #[cfg(feature = "history")]
    pub fn with_history(self, dir: impl Into<std::path::PathBuf>, every_k_steps: u64) -> Self {
        self.with_history_options(super::HistoryOptions::new(dir, every_k_steps))
    }

    /// [`LoaderBuilder::with_history`] with every option: run name, buffer, and a collective
    /// to reduce the metrics over before rank 0 writes them.
    #[cfg(feature = "history")]
    pub fn with_history_options(mut self, options: super::HistoryOptions) -> Self {
        self.history = Some(options);
        self
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

    /// Appends a user transform already shared (a named one of a [`super::LoaderConfig`]).
    pub(crate) fn with_user_arc(mut self, f: UserTransform<T>) -> Self {
        self.user.push(f);
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

    /// Whether the caller's thread, when it finds the batch it waits for not yet started by a
    /// worker, builds that batch itself (the default: on few cores it saves a thread handoff per
    /// batch). It never builds a later batch than the one it waits for, so `next()` returns as
    /// soon as its batch is ready. `false` keeps the caller's thread (a training loop's, which
    /// launches GPU kernels) off batch building entirely: it only waits. With 0 workers the
    /// caller builds every batch regardless.
    pub fn with_caller_builds(mut self, caller_builds: bool) -> Self {
        self.caller_builds = caller_builds;
        self
    }

    /// Plan-driven prefetch: the loader asks the kernel to read the samples of the batch
    /// `steps` steps ahead of the one being planned (`MADV_WILLNEED` on their byte ranges), for
    /// corpora that do not fit in the page cache. 0 (the default) turns it off; at most
    /// [`MAX_READ_AHEAD`] ([`LoaderBuilder::build`] refuses more). It is a hint: the stream is
    /// the same with it on or off. Its cost does not grow with `steps`: the loader advises one
    /// step for each step it plans, and two while it works its way to `steps` ahead after a
    /// start or resume.
    pub fn with_read_ahead(mut self, steps: usize) -> Self {
        self.read_ahead = steps;
        self
    }

    /// How long the caller may wait for a batch before the loader logs a warning (it keeps
    /// waiting: a slow disk is not an error).
    pub fn with_watchdog(mut self, watchdog: Duration) -> Self {
        self.watchdog = watchdog;
        self
    }

    /// How much slower than the median of the other workers (in real tokens per busy second)
    /// a worker must be to be reported slow (2 by default; more than 1). A worker building one
    /// batch for longer than the watchdog interval is reported stalled. Reports only: see
    /// [`super::WorkerStats`].
    pub fn with_slow_factor(mut self, factor: f64) -> Self {
        self.slow_factor = factor;
        self
    }

    /// Continues the stream that `state` was taken from; `None` starts it from the beginning,
    /// so that a training loop passes its optional checkpoint straight through.
    pub fn resume(self, state: impl Into<Option<LoaderState>>) -> Self {
        match state.into() {
            Some(state) => self.resume_with(state, ResumeOptions::default()),
            None => self,
        }
    }

    /// Starts a padded stream at batch `batch` (its plan step) instead of 0, with empty metric
    /// totals: a slice of the stream. Packed streams cannot start elsewhere than at a
    /// checkpoint, since a packed batch depends on every batch before it.
    pub fn starting_at(mut self, batch: u64) -> Self {
        self.start = batch;
        self
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
            slow_factor,
            caller_builds,
            read_ahead,
            resume,
            start,
            #[cfg(feature = "history")]
            history,
        } = self;
        if start > 0 && (collate.pack || resume.is_some()) {
            return Err(Error::Config(format!(
                "a stream can start at batch {start} only when it is padded and not resumed: a \
                 packed batch depends on every batch before it, and a resumed stream starts at \
                 its checkpoint"
            )));
        }
        if collate.pack && !user_metrics.is_empty() {
            return Err(Error::Config(
                "user metrics cannot be combined with packing: a packed row holds pieces of \
                 several documents"
                    .into(),
            ));
        }
        collate.check()?;
        transform.check_ids::<T>(collate.pad_id)?;
        transform.check_room(&collate)?;
        if let Some(m) = &metrics {
            m.check()?;
        }
        // The widest row, not the sequence length: padding to a multiple rounds up past it.
        let width = collate.max_width();
        let tokens = width.and_then(|w| (order.local_batch as u64).checked_mul(w as u64));
        if tokens.is_none_or(|t| t > MAX_BATCH_TOKENS) {
            let width = match collate.padding {
                crate::collate::Padding::Multiple(m) if width != Some(collate.seq_len) => {
                    format!(
                        "sequence length {} rounded up to the padding multiple {m}",
                        collate.seq_len
                    )
                }
                _ => format!("sequence length {}", collate.seq_len),
            };
            return Err(Error::Config(format!(
                "local batch {} x {width} exceeds the largest batch, {MAX_BATCH_TOKENS} tokens",
                order.local_batch
            )));
        }
        sink.check_batch(order.local_batch, &collate)?;
        if collate.pack && !user.is_empty() {
            return Err(Error::Config(
                "user transforms cannot be combined with packing: the packer lays documents out \
                 from their stored lengths before any worker sees them"
                    .into(),
            ));
        }
        if collate.pack && transform.extra() == 0 && sources.iter().all(|s| s.data.tokens() == 0) {
            return Err(Error::Config(format!(
                "packing cannot fill a row: every sequence of {} is empty, and no BOS or EOS is \
                 added",
                sources
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if read_ahead > MAX_READ_AHEAD {
            return Err(Error::Config(format!(
                "the read-ahead of {read_ahead} steps exceeds the most, {MAX_READ_AHEAD} steps: \
                 pages advised that far ahead sit in the page cache long before a worker reads \
                 them, or are evicted first"
            )));
        }
        if prefetch == 0 || prefetch > MAX_PREFETCH {
            return Err(Error::Config(format!(
                "the prefetch depth {prefetch} must lie in 1..={MAX_PREFETCH}"
            )));
        }
        if !(slow_factor.is_finite() && slow_factor > 1.0) {
            return Err(Error::Config(format!(
                "the slow factor {slow_factor} must be a finite number above 1"
            )));
        }
        if workers > MAX_WORKERS {
            return Err(Error::Config(format!(
                "{workers} worker threads: at most {MAX_WORKERS}"
            )));
        }
        // The stratified partition reads the class files beside the shards of a source given
        // none.
        let mut owners = Vec::with_capacity(sources.len());
        for s in &sources {
            owners.push(match (&s.owners, order.partition) {
                (None, Partition::Stratified) => Some(Owners::Classes(classes_beside(&s.data)?)),
                (o, _) => o.clone(),
            });
        }
        let classes: Vec<Option<ClassNames>> = owners
            .iter()
            .map(|o| match o {
                Some(Owners::Classes(c)) => Some(ClassNames::new(c.clone())),
                _ => None,
            })
            .collect();
        let specs = sources
            .iter()
            .zip(owners)
            .map(|(s, o)| DatasetSpec::new(&s.name, s.data.len() as u64, s.weight).with_owners(o))
            .collect();
        let (rank, world) = (order.rank, order.world);
        let plan = Arc::new(order.init(specs)?);
        let (planner, shadow, position, skips) = match &resume {
            None => {
                let p = Position {
                    batches: start,
                    plan_step: start,
                    rows_taken: 0,
                    doc_offset: 0,
                };
                if plan.position_of(start).is_none() {
                    return Err(Error::Config(format!(
                        "batch {start} lies beyond the stream's 2^64 rows"
                    )));
                }
                let mut planner = Planner::new(plan.clone());
                planner.skip_to(start);
                (planner.clone(), planner, p, BTreeMap::new())
            }
            Some((state, options)) => {
                check_resume(state, &collate, &transform, rank, world)?;
                // One resume (checks and a mixture jump); the shadow and the peek are copies.
                let planner = Planner::resume(plan.clone(), &state.cursor, *options)?;
                let shadow = planner.clone();
                if collate.pack {
                    check_packing(state, planner.clone(), &sources, &transform)?;
                }
                let names = plan.names();
                // World totals live on rank 0 after a resume; a rank's own stay with it.
                let keep = state.scope == Scope::Rank || rank == 0;
                let skips = state
                    .skips
                    .iter()
                    .filter(|_| keep)
                    .filter_map(|s| {
                        let d = names.iter().position(|n| *n == s.dataset)?;
                        Some(((d as u32, s.epoch), s.skipped))
                    })
                    .collect();
                (planner, shadow, state.position, skips)
            }
        };
        let pool = sink.staging();
        let stop = Arc::new(AtomicBool::new(false));
        let datasets: Vec<Dataset> = sources.into_iter().map(|s| s.data).collect();
        // The kernel's read-ahead follows the order: none for a full shuffle, aggressive for
        // stored order.
        let access = match plan.config().shuffle {
            crate::order::Shuffle::Full => Access::Random,
            crate::order::Shuffle::None => Access::Sequential,
            crate::order::Shuffle::Block(_) => Access::Normal,
        };
        for d in &datasets {
            d.advise(access);
        }
        let collator = Arc::new(Collator {
            datasets: datasets.clone(),
            names: plan.names().to_vec(),
            transform: transform.clone(),
            user,
            collate: collate.clone(),
            pool: pool.clone(),
            classes,
            layout: sink.layout(),
            pad_row: vec![collate.pad_value::<T>(); collate.width(collate.seq_len)],
            host_pool: Pool::new(),
            stop: stop.clone(),
            metrics: metrics.clone(),
            user_metrics,
        });
        // The metric totals continue from the checkpoint, so a resumed run reports the same.
        let aggregator = match (&metrics, resume.as_ref().map(|(s, _)| s)) {
            (Some(config), Some(state)) => restore_metrics(state, config, rank, world)?,
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
        )
        .read_ahead(read_ahead);
        let sink = Arc::new(sink);
        let busy = Arc::new(AtomicU64::new(0));
        let planned = Arc::new(AtomicU64::new(position.batches));
        let health = Arc::new(super::health::Health::new(workers, watchdog, slow_factor));
        let caller_worker = sink.worker()?;
        let mode = if workers == 0 {
            Mode::Inline {
                scheduler: Box::new(scheduler),
                scratch: Vec::new(),
                worker: sink.worker()?,
            }
        } else {
            let meters = super::flow::Meters {
                busy: busy.clone(),
                planned: planned.clone(),
                health: health.clone(),
            };
            spawn(scheduler, &collator, &sink, workers, prefetch, meters)?
        };
        #[cfg(feature = "history")]
        let history = history
            .map(|o| super::history::HistoryLink::open(o, rank, resume.as_ref().map(|(s, _)| s)))
            .transpose()?
            .map(std::sync::Mutex::new);
        Ok(Loader {
            sink,
            collator,
            plan,
            shadow,
            position,
            skips,
            stats: LoaderStats::default(),
            busy,
            planned,
            health,
            mode,
            done: false,
            watchdog,
            caller_builds,
            scratch: Vec::new(),
            worker: caller_worker,
            metrics: aggregator,
            #[cfg(feature = "history")]
            history,
        })
    }
}

/// The most worker threads a loader starts.
pub const MAX_WORKERS: usize = 1024;
/// The most batches a loader plans ahead of the caller.
pub const MAX_PREFETCH: usize = 1 << 16;
/// The most steps of plan-driven prefetch ([`LoaderBuilder::with_read_ahead`]). Advised pages
/// wait in the page cache until a worker reads them: a bound keeps what the hint holds there
/// bounded (a corpus that needs the hint does not fit the page cache).
pub const MAX_READ_AHEAD: usize = 1 << 12;

/// The largest batch a loader builds: local batch x widest row ([`CollateConfig::max_width`]:
/// the sequence length, rounded up to the padding multiple), in tokens. Every `[B, T]` buffer of
/// a batch is allocated at this size at most.
pub const MAX_BATCH_TOKENS: u64 = 1 << 28;

/// The metric aggregator a resumed loader starts from: this rank's saved totals (same rank and
/// world only), or the world's on rank 0 and empty totals elsewhere.
fn restore_metrics(
    state: &LoaderState,
    config: &MetricsConfig,
    rank: usize,
    world: usize,
) -> Result<Aggregator> {
    let Some(saved) = &state.metrics else {
        return Ok(Aggregator::new(config.clone()));
    };
    if saved.config != *config {
        return Err(Error::Resume(format!(
            "the metrics settings changed (were {:?}, are {config:?}); the saved totals would not \
             merge",
            saved.config
        )));
    }
    match state.scope {
        Scope::Rank if state.rank != rank || state.cursor.world != world => {
            Err(Error::Resume(format!(
                "this state holds the metric totals of rank {} of {}, and this loader is rank {rank} \
                 of {world}: restoring them would count that rank's data on the wrong rank (and \
                 lose or repeat the others' in a reduce). Save the state with \
                 Loader::checkpoint(&collective), which holds the world's totals and resumes with \
                 any world size, or turn metrics off",
                state.rank, state.cursor.world
            )))
        }
        Scope::Rank => Ok(Aggregator::from_state(saved.clone())),
        Scope::World if rank == 0 => Ok(Aggregator::from_state(saved.clone())),
        // The other ranks start from zero, keeping the agreed names so that the next reduce
        // stays at two collectives.
        Scope::World => Ok(Aggregator::from_state(AggregatorState {
            entries: Default::default(),
            ..saved.clone()
        })),
    }
}

/// Checks a packed stream's remainder against the step it points into: at most that step's rows
/// taken, and a document offset inside the document it cuts.
fn check_packing(
    state: &LoaderState,
    mut planner: Planner,
    sources: &[Source],
    transform: &TransformConfig,
) -> Result<()> {
    let datasets: Vec<Dataset> = sources.iter().map(|s| s.data.clone()).collect();
    let p = &state.position;
    let mut rows = Vec::new();
    planner.next_rows(&mut rows);
    if p.rows_taken > rows.len() as u64 {
        return Err(Error::checkpoint(
            "position.rows_taken",
            format!(
                "{} but step {} holds {} rows",
                p.rows_taken,
                p.plan_step,
                rows.len()
            ),
        ));
    }
    if p.doc_offset == 0 {
        return Ok(());
    }
    let len = rows
        .get(p.rows_taken as usize)
        .map(|r| doc_len(&datasets, transform, r).map_or(0, |(len, _)| len))
        .unwrap_or(0);
    if p.doc_offset >= len as u64 {
        return Err(Error::checkpoint(
            "position.doc_offset",
            format!(
                "{} tokens of a document of {len} were emitted, but a cut document has tokens \
                 left",
                p.doc_offset
            ),
        ));
    }
    Ok(())
}

fn check_resume(
    state: &LoaderState,
    collate: &CollateConfig,
    transform: &TransformConfig,
    rank: usize,
    world: usize,
) -> Result<()> {
    state.check()?;
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
