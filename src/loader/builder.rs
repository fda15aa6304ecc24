//! Building a loader: its sources, the builder, and the checks a resumed state must pass.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use super::collator::{Collator, UserMetric};
use super::flow::{Mode, spawn};
use super::job::{Packer, Scheduler, doc_len};
use super::{Loader, LoaderConfig, LoaderState, LoaderStats, Position, RuntimeConfig, Scope};
use crate::collate::{CollateConfig, Layout, Pool};
use crate::device::{DeviceSink, HostSink};
use crate::error::{Error, Result};
use crate::metrics::{Aggregator, AggregatorState, ClassNames, MetricsConfig, SampleMetrics};
use crate::order::{
    Classes, DatasetSpec, OrderConfig, Owners, Partition, Plan, Planner, RankRanges, ResumeOptions,
    Shuffle,
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
/// little-endian u32 per sequence, concatenated in shard order
/// ([`crate::shard::read_classes_beside`]).
///
/// # Errors
///
/// A missing or unreadable file, named; [`Error::BadClassFile`] for a file whose count of
/// classes is not its shard's count of sequences.
pub fn classes_beside(data: &Dataset) -> Result<Classes> {
    crate::shard::read_classes_beside(data).map(Classes::new)
}

/// Builds a [`Loader`]: `LoaderBuilder::new(sources).with_workers(2).build_host()`.
///
/// It wraps a [`LoaderConfig`] (every setting, with the config's defaults) and holds beside it
/// what a config cannot: the opened sources, user transforms and metrics, a resumed state and a
/// start batch. The config's `datasets` are not read: the sources are the datasets.
pub struct LoaderBuilder<T: TokenId> {
    config: LoaderConfig,
    sources: Vec<Source>,
    user: Vec<UserTransform<T>>,
    user_metrics: Vec<UserMetric<T>>,
    resume: Option<(LoaderState, ResumeOptions)>,
    start: u64,
}

impl<T: TokenId> LoaderBuilder<T> {
    /// A builder over `sources` with the defaults of [`LoaderConfig`]: default order, collation
    /// and transforms, 2 workers and a prefetch depth of 4.
    pub fn new(sources: Vec<Source>) -> Self {
        Self::from_config(LoaderConfig::default(), sources)
    }

    /// A builder over `sources` (the opened datasets; `config.datasets` is not read) with every
    /// setting of `config`.
    pub fn from_config(config: LoaderConfig, sources: Vec<Source>) -> Self {
        LoaderBuilder {
            config,
            sources,
            user: Vec::new(),
            user_metrics: Vec::new(),
            resume: None,
            start: 0,
        }
    }

    /// The settings the loader will be built with.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// The order: seed, shuffle, mixture, partition, rank and world, local batch size, limit.
    pub fn with_order(mut self, order: OrderConfig) -> Self {
        self.config.order = order;
        self
    }

    /// Padding or packing, sequence length, optional fields.
    pub fn with_collate(mut self, collate: CollateConfig) -> Self {
        self.config.collate = collate;
        self
    }

    /// Truncation, BOS/EOS, bad-sample policy.
    pub fn with_transform(mut self, transform: TransformConfig) -> Self {
        self.config.transform = transform;
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

    /// Appends a user transform already shared (a named one of a [`LoaderConfig`]).
    pub(crate) fn with_user_arc(mut self, f: UserTransform<T>) -> Self {
        self.user.push(f);
        self
    }

    /// The standard metrics' settings, or `None` to turn metrics off (on by default).
    pub fn with_metrics(mut self, metrics: Option<MetricsConfig>) -> Self {
        self.config.metrics = metrics;
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

    /// Every knob that does not change the stream at once.
    pub fn with_runtime(mut self, runtime: RuntimeConfig) -> Self {
        self.config.runtime = runtime;
        self
    }

    /// Worker threads; 0 builds batches on the caller's thread.
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.config.runtime.workers = workers;
        self
    }

    /// Batches planned ahead of the caller at most (at least 1).
    pub fn with_prefetch(mut self, prefetch: usize) -> Self {
        self.config.runtime.prefetch = prefetch;
        self
    }

    /// Whether the caller's thread, when it finds the batch it waits for not yet started by a
    /// worker, builds that batch itself (the default: on few cores it saves a thread handoff per
    /// batch). It never builds a later batch than the one it waits for, so `next()` returns as
    /// soon as its batch is ready. `false` keeps the caller's thread (a training loop's, which
    /// launches GPU kernels) off batch building entirely: it only waits. With 0 workers the
    /// caller builds every batch regardless.
    pub fn with_caller_builds(mut self, caller_builds: bool) -> Self {
        self.config.runtime.caller_builds = caller_builds;
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
        self.config.runtime.read_ahead = steps;
        self
    }

    /// How long the caller may wait for a batch before the loader logs a warning (it keeps
    /// waiting: a slow disk is not an error).
    pub fn with_watchdog(mut self, watchdog: Duration) -> Self {
        self.config.runtime.watchdog = watchdog;
        self
    }

    /// How much slower than the median of the other workers (in real tokens per busy second)
    /// a worker must be to be reported slow (2 by default; more than 1). A worker building one
    /// batch for longer than the watchdog interval is reported stalled. Reports only: see
    /// [`super::WorkerStats`].
    pub fn with_slow_factor(mut self, factor: f64) -> Self {
        self.config.runtime.slow_factor = factor;
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
        self.build(HostSink::new())
    }

    /// Builds the loader and starts its threads: validate, specs and plan, start point,
    /// assemble.
    ///
    /// # Errors
    ///
    /// The plan's construction errors ([`OrderConfig::init`]); [`Error::Config`] for a bad
    /// collate, transform or runtime configuration; the sink's refusal of the largest batch;
    /// [`Error::Resume`] when the resumed state does not fit this configuration.
    pub fn build<S: DeviceSink<T>>(mut self, mut sink: S) -> Result<Loader<T, S>> {
        self.validate()?;
        sink.bind(&self.config.collate, self.config.order.local_batch)?;
        let partition = self.config.order.partition;
        self.sources = fill_owners(std::mem::take(&mut self.sources), partition)?;
        let plan = Arc::new(self.config.order.clone().init(specs(&self.sources))?);
        let start = self.start_point(&plan)?;
        self.assemble(sink, plan, start)
    }

    /// The checks of the configuration alone, before any dataset is read.
    fn validate(&self) -> Result<()> {
        let LoaderConfig {
            order,
            collate,
            transform,
            metrics,
            runtime,
            ..
        } = &self.config;
        let start = self.start;
        if start > 0 && (collate.pack || self.resume.is_some()) {
            return Err(Error::Config(format!(
                "a stream can start at batch {start} only when it is padded and not resumed: a \
                 packed batch depends on every batch before it, and a resumed stream starts at \
                 its checkpoint"
            )));
        }
        if collate.pack && !self.user_metrics.is_empty() {
            return Err(Error::Config(
                "user metrics cannot be combined with packing: a packed row holds pieces of \
                 several documents"
                    .into(),
            ));
        }
        collate.check()?;
        transform.check_ids::<T>(collate.pad_id)?;
        collate.check_room(transform)?;
        if let Some(m) = metrics {
            m.check()?;
        }
        check_batch_tokens(order.local_batch, collate)?;
        if collate.pack && !self.user.is_empty() {
            return Err(Error::Config(
                "user transforms cannot be combined with packing: the packer lays documents out \
                 from their stored lengths before any worker sees them"
                    .into(),
            ));
        }
        let sources = &self.sources;
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
        runtime.check()
    }

    /// Where the stream starts: batch `start`, or the resumed state's position (checked against
    /// the plan), with the planner, its shadow and the skip counts.
    fn start_point(&self, plan: &Arc<Plan>) -> Result<Start> {
        let LoaderConfig {
            order,
            collate,
            transform,
            ..
        } = &self.config;
        let Some((state, options)) = &self.resume else {
            let start = self.start;
            if plan.position_of(start).is_none() {
                return Err(Error::Config(format!(
                    "batch {start} lies beyond the stream's 2^64 rows"
                )));
            }
            let mut planner = Planner::new(plan.clone());
            planner.skip_to(start);
            return Ok(Start {
                planner: planner.clone(),
                shadow: planner,
                position: Position {
                    batches: start,
                    plan_step: start,
                    rows_taken: 0,
                    doc_offset: 0,
                },
                skips: BTreeMap::new(),
            });
        };
        check_resume(state, collate, transform, order.rank, order.world)?;
        // One resume (checks and a mixture jump); the shadow and the peek are copies.
        let planner = Planner::resume(plan.clone(), &state.cursor, *options)?;
        if collate.pack {
            check_packing(state, planner.clone(), &self.sources, transform)?;
        }
        let names = plan.names();
        // World totals live on rank 0 after a resume; a rank's own stay with it.
        let keep = state.scope == Scope::Rank || order.rank == 0;
        let skips = state
            .skips
            .iter()
            .filter(|_| keep)
            .filter_map(|s| {
                let d = names.iter().position(|n| *n == s.dataset)?;
                Some(((d as u32, s.epoch), s.skipped))
            })
            .collect();
        Ok(Start {
            shadow: planner.clone(),
            planner,
            position: state.position,
            skips,
        })
    }

    /// Starts the threads over the bound sink. Every call on the sink but `bind` is here.
    fn assemble<S: DeviceSink<T>>(
        self,
        sink: S,
        plan: Arc<Plan>,
        start: Start,
    ) -> Result<Loader<T, S>> {
        let pool = sink.staging().clone();
        let layout = sink.layout();
        let runtime = self.config.runtime.clone();
        let (rank, world) = (self.config.order.rank, self.config.order.world);
        let state = self.resume.as_ref().map(|(s, _)| s);
        let aggregator = aggregator(self.config.metrics.as_ref(), state, rank, world)?;
        let Start {
            planner,
            shadow,
            position,
            skips,
        } = start;
        let (collator, scheduler) = self.pipeline(&plan, pool, layout, planner, &position);
        let sink = Arc::new(sink);
        let busy = Arc::new(AtomicU64::new(0));
        let planned = Arc::new(AtomicU64::new(position.batches));
        let (workers, watchdog) = (runtime.workers, runtime.watchdog);
        let health = Arc::new(super::health::Health::new(
            workers,
            watchdog,
            runtime.slow_factor,
        ));
        let meters = super::flow::Meters {
            busy,
            planned,
            health,
        };
        let mode = if workers == 0 {
            Mode::Inline {
                scheduler: Box::new(scheduler),
                scratch: Vec::new(),
            }
        } else {
            spawn(
                scheduler,
                &collator,
                &sink,
                workers,
                runtime.prefetch,
                meters.clone(),
            )?
        };
        Ok(Loader {
            sink,
            collator,
            plan,
            shadow,
            position,
            skips,
            stats: LoaderStats::default(),
            meters,
            mode,
            done: false,
            watchdog,
            caller_builds: runtime.caller_builds,
            scratch: Vec::new(),
            metrics: aggregator,
            skipped: Vec::new(),
        })
    }
}

impl<T: TokenId> LoaderBuilder<T> {
    /// The batch builder the workers share (over the datasets, advised for the order's access
    /// pattern) and the scheduler that hands out the plan from `position`.
    fn pipeline(
        self,
        plan: &Plan,
        pool: Pool,
        layout: Layout,
        planner: Planner,
        position: &Position,
    ) -> (Arc<Collator<T>>, Scheduler) {
        let LoaderConfig {
            collate,
            transform,
            metrics,
            runtime,
            ..
        } = self.config;
        let classes = class_names(&self.sources);
        let datasets: Vec<Dataset> = self.sources.into_iter().map(|s| s.data).collect();
        advise(&datasets, plan.config().shuffle);
        let collator = Arc::new(Collator {
            datasets: datasets.clone(),
            names: plan.names().to_vec(),
            transform: transform.clone(),
            user: self.user,
            collate: collate.clone(),
            pool: pool.clone(),
            classes,
            layout,
            pad_row: vec![collate.pad_value::<T>(); collate.width(collate.seq_len)],
            host_pool: Pool::new(),
            stop: Arc::new(AtomicBool::new(false)),
            metrics,
            user_metrics: self.user_metrics,
        });
        let packer = collate
            .pack
            .then(|| Packer::at(position.rows_taken, position.doc_offset));
        let scheduler = Scheduler::new(
            planner,
            pool,
            datasets,
            transform,
            collate.seq_len,
            packer,
            position.batches,
        )
        .read_ahead(runtime.read_ahead);
        (collator, scheduler)
    }
}

/// Where a built loader starts: its planner, the shadow planner the checkpoint follows, the
/// position and the skip counts so far.
struct Start {
    planner: Planner,
    shadow: Planner,
    position: Position,
    skips: BTreeMap<(u32, u64), u64>,
}

/// The sources with the owners `partition` needs filled in: the stratified partition reads the
/// class files beside the shards of a source given no classes. Sources that hold owners keep
/// them, so filling twice reads nothing.
///
/// # Errors
///
/// The class files' read errors ([`classes_beside`]).
pub(crate) fn fill_owners(mut sources: Vec<Source>, partition: Partition) -> Result<Vec<Source>> {
    if partition == Partition::Stratified {
        for s in sources.iter_mut().filter(|s| s.owners.is_none()) {
            s.owners = Some(Owners::Classes(classes_beside(&s.data)?));
        }
    }
    Ok(sources)
}

/// What the plan needs of each source: name, length, weight, owners.
pub(crate) fn specs(sources: &[Source]) -> Vec<DatasetSpec> {
    sources
        .iter()
        .map(|s| {
            DatasetSpec::new(&s.name, s.data.len() as u64, s.weight).with_owners(s.owners.clone())
        })
        .collect()
}

/// Each source's class vocabulary, for the standard `class` metric.
fn class_names(sources: &[Source]) -> Vec<Option<ClassNames>> {
    sources
        .iter()
        .map(|s| match &s.owners {
            Some(Owners::Classes(c)) => Some(ClassNames::new(c.clone())),
            _ => None,
        })
        .collect()
}

/// The kernel's read-ahead follows the order: none for a full shuffle, aggressive for stored
/// order.
fn advise(datasets: &[Dataset], shuffle: Shuffle) {
    let access = match shuffle {
        Shuffle::Full => Access::Random,
        Shuffle::None => Access::Sequential,
        Shuffle::Block(_) => Access::Normal,
    };
    for d in datasets {
        d.advise(access);
    }
}

/// Refuses a batch wider than [`MAX_BATCH_TOKENS`]: the widest row, not the sequence length,
/// since padding to a multiple rounds up past it.
fn check_batch_tokens(local_batch: usize, collate: &CollateConfig) -> Result<()> {
    let width = collate.max_width();
    let tokens = width.and_then(|w| (local_batch as u64).checked_mul(w as u64));
    if tokens.is_some_and(|t| t <= MAX_BATCH_TOKENS) {
        return Ok(());
    }
    let width = match collate.padding {
        crate::collate::Padding::Multiple(m) if width != Some(collate.seq_len) => {
            format!(
                "sequence length {} rounded up to the padding multiple {m}",
                collate.seq_len
            )
        }
        _ => format!("sequence length {}", collate.seq_len),
    };
    Err(Error::Config(format!(
        "local batch {local_batch} x {width} exceeds the largest batch, {MAX_BATCH_TOKENS} tokens"
    )))
}

/// The metric totals a loader starts from: the checkpoint's, so a resumed run reports the same.
fn aggregator(
    metrics: Option<&MetricsConfig>,
    state: Option<&LoaderState>,
    rank: usize,
    world: usize,
) -> Result<Aggregator> {
    match (metrics, state) {
        (Some(config), Some(state)) => restore_metrics(state, config, rank, world),
        (Some(config), None) => Ok(Aggregator::new(config.clone())),
        (None, _) => Ok(Aggregator::default()),
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
        // stays at three collectives.
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
