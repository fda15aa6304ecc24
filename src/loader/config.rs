//! A loader configuration users can hold, save and compare: [`LoaderConfig`], which builds a
//! loader with `.init(rank, world)` as Burn's configs build modules.
//!
//! Four names for "a dataset", one per stage, each holding what its stage needs:
//!
//! | name | stage | what it is |
//! |---|---|---|
//! | [`crate::shard::Dataset`] | shard | one or more open shards read as one sample space |
//! | [`DatasetConfig`] | loader (description) | paths, weight and [`Ownership`], as serde data |
//! | [`Source`] | loader (opened) | a named, weighted `Dataset` with its ranges or classes |
//! | [`crate::order::DatasetSpec`] | order | name, length, weight, owners: what the plan needs |
//!
//! A `DatasetConfig` opens into a `Source` ([`DatasetConfig::open`]); the builder turns each
//! `Source` into a `DatasetSpec` for the plan, so the order never sees a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Loader, LoaderBuilder, Source};
use crate::collate::CollateConfig;
use crate::device::{DeviceSink, HostSink};
use crate::error::{Error, Result};
use crate::metrics::MetricsConfig;
use crate::order::{Classes, OrderConfig, RankRanges, StreamLimit};
use crate::shard::{Dataset, TokenId, prefix_name, resolve_prefix};
use crate::transform::{SampleInfo, TransformConfig, UserTransform};

/// Who owns which samples of a dataset, for the ownership partitions.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Ownership {
    /// Nothing given: the global and hashed partitions need nothing, and the stratified one
    /// reads the class files beside the shards.
    #[default]
    Plain,
    /// Each rank's `[start, end)` sample ranges, for the range partition.
    Ranges(RankRanges),
    /// A class file (one little-endian u32 per sequence), for the stratified partition and the
    /// standard `class` metric.
    Classes(PathBuf),
}

/// One dataset of a [`LoaderConfig`]: shard prefixes and directories of shards, read as one
/// dataset, with a mixture weight and its [`Ownership`].
///
/// It saves as `{"name", "paths", "weight", "ranges" | "classes"}`: the ownership is one
/// optional key, as configs saved before [`Ownership`] have it, and a config giving both keys is
/// refused when it loads.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "SavedDataset", into = "SavedDataset")]
pub struct DatasetConfig {
    /// The name checkpoints and metrics use; by default the first path's file name.
    pub name: Option<String>,
    /// Shard prefixes (`data/web`, `data/web.idx`) and directories (every shard in them, sorted
    /// by name), in order.
    pub paths: Vec<PathBuf>,
    /// The mixture weight (finite, positive; normalized over the datasets).
    pub weight: f64,
    /// Plain, ranges or classes.
    pub owners: Ownership,
}

/// [`DatasetConfig`] as saved: the ownership as an optional `ranges` or `classes` key.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedDataset {
    #[serde(default)]
    name: Option<String>,
    paths: Vec<PathBuf>,
    #[serde(default = "one")]
    weight: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ranges: Option<RankRanges>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    classes: Option<PathBuf>,
}

fn one() -> f64 {
    1.0
}

impl TryFrom<SavedDataset> for DatasetConfig {
    type Error = String;

    fn try_from(saved: SavedDataset) -> std::result::Result<Self, String> {
        let owners = match (saved.ranges, saved.classes) {
            (None, None) => Ownership::Plain,
            (Some(ranges), None) => Ownership::Ranges(ranges),
            (None, Some(classes)) => Ownership::Classes(classes),
            (Some(_), Some(_)) => {
                return Err(format!(
                    "the dataset {} gives both ranges and classes: the range partition takes \
                     ranges, the stratified one classes",
                    saved
                        .name
                        .as_deref()
                        .or_else(|| saved.paths.first().and_then(|p| p.to_str()))
                        .unwrap_or("(unnamed)")
                ));
            }
        };
        Ok(DatasetConfig {
            name: saved.name,
            paths: saved.paths,
            weight: saved.weight,
            owners,
        })
    }
}

impl From<DatasetConfig> for SavedDataset {
    fn from(d: DatasetConfig) -> Self {
        let (ranges, classes) = match d.owners {
            Ownership::Plain => (None, None),
            Ownership::Ranges(r) => (Some(r), None),
            Ownership::Classes(c) => (None, Some(c)),
        };
        SavedDataset {
            name: d.name,
            paths: d.paths,
            weight: d.weight,
            ranges,
            classes,
        }
    }
}

impl DatasetConfig {
    /// The shards at `path` (a prefix or a directory), weight 1, named after it.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DatasetConfig {
            name: None,
            paths: vec![path.into()],
            weight: 1.0,
            owners: Ownership::Plain,
        }
    }

    /// Names the dataset.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the mixture weight.
    pub fn with_weight(mut self, weight: f64) -> Self {
        self.weight = weight;
        self
    }

    /// Sets who owns which samples: each rank's ranges, or a class file.
    pub fn with_owners(mut self, owners: Ownership) -> Self {
        self.owners = owners;
        self
    }

    /// Opens the shards as a [`Source`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for no path; the shards' open errors (a missing or damaged file, an
    /// empty directory); the class file's read errors.
    pub fn open(&self) -> Result<Source> {
        let first = self.paths.first().ok_or_else(|| {
            Error::Config(format!(
                "the dataset {} lists no shard or directory",
                self.name.as_deref().unwrap_or("(unnamed)")
            ))
        })?;
        let mut prefixes = Vec::new();
        for path in &self.paths {
            if path.is_dir() {
                prefixes.extend(crate::shard::shard_prefixes(path)?);
            } else {
                prefixes.push(resolve_prefix(path));
            }
        }
        let name = match &self.name {
            Some(name) => name.clone(),
            None => default_name(first),
        };
        let source = Source::new(name, Dataset::open(&prefixes)?, self.weight);
        Ok(match &self.owners {
            Ownership::Plain => source,
            Ownership::Ranges(ranges) => source.with_ranges(ranges.clone()),
            Ownership::Classes(path) => {
                source.with_classes(Classes::new(crate::shard::read_class_file(path)?))
            }
        })
    }
}

/// A directory's or a prefix's file name.
fn default_name(path: &Path) -> String {
    if path.is_dir() {
        let trimmed = path.to_string_lossy();
        let trimmed = trimmed.trim_end_matches(['/', '\\']);
        Path::new(trimmed)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| trimmed.to_string())
    } else {
        prefix_name(&resolve_prefix(path))
    }
}

impl Source {
    /// Every shard in `dir` (sorted by name) as one source named after the directory.
    ///
    /// # Errors
    ///
    /// [`Error::EmptyDirectory`] when `dir` holds no shard; [`Error::Io`]; a shard's open error.
    pub fn open_dir(dir: impl AsRef<Path>, weight: f64) -> Result<Self> {
        let dir = dir.as_ref();
        Ok(Source::new(
            default_name(dir),
            Dataset::open_dir(dir)?,
            weight,
        ))
    }
}

/// The knobs that do not change the stream: threads, queue depths, hints and health reports.
/// [`LoaderConfig::fingerprint`] leaves them out, so ranks that differ only here agree.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RuntimeConfig {
    /// Worker threads (0: every batch on the caller's thread); at most [`super::MAX_WORKERS`].
    pub workers: usize,
    /// Batches planned ahead of the caller at most, in `1..=`[`super::MAX_PREFETCH`].
    pub prefetch: usize,
    /// Steps of plan-driven page-cache read-ahead (0: off); see
    /// [`LoaderBuilder::with_read_ahead`].
    pub read_ahead: usize,
    /// Whether the caller builds the batch it waits for when no worker has started it; see
    /// [`LoaderBuilder::with_caller_builds`].
    pub caller_builds: bool,
    /// How long the caller waits for a batch before a warning is logged.
    pub watchdog: Duration,
    /// How much slower than the others a worker must be to be reported slow (above 1).
    pub slow_factor: f64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: 2,
            prefetch: 4,
            read_ahead: 0,
            caller_builds: true,
            watchdog: Duration::from_secs(30),
            slow_factor: 2.0,
        }
    }
}

impl RuntimeConfig {
    /// Checks every knob's range.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the knob: a read-ahead over [`super::MAX_READ_AHEAD`], a
    /// prefetch outside `1..=`[`super::MAX_PREFETCH`], a slow factor not above 1, more than
    /// [`super::MAX_WORKERS`] workers.
    pub fn check(&self) -> Result<()> {
        use super::{MAX_PREFETCH, MAX_READ_AHEAD, MAX_WORKERS};
        let RuntimeConfig {
            workers,
            prefetch,
            read_ahead,
            slow_factor,
            ..
        } = *self;
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
        Ok(())
    }
}

/// Everything that decides a loader's stream, as data: datasets with weights, order, collation,
/// transforms (by name) and metrics, plus a [`RuntimeConfig`] of knobs that do not change it.
/// Save it beside a checkpoint, compare it across ranks ([`LoaderConfig::fingerprint`]), and
/// build the loader with [`LoaderConfig::init`].
///
/// Configs saved before the `runtime` section existed still load: their top-level `workers` and
/// `prefetch` land there.
///
/// # Example
///
/// ```
/// # fn main() -> shardflow::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # shardflow::shard::synthetic::SyntheticCorpus::single("web", 20_000, 50.0, 1)
/// #     .write(dir.path(), |_| {})?;
/// use shardflow::{DatasetConfig, LoaderConfig};
///
/// let config = LoaderConfig::new(vec![DatasetConfig::new(dir.path())])
///     .with_batch_size(8)
///     .with_epochs(1.0);
/// let mut loader = config.init::<i32>(0, 1)?;
/// let batch = loader.next().unwrap()?;
/// assert_eq!(batch.rows, 8);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(from = "SavedConfig")]
pub struct LoaderConfig {
    /// The datasets of the mixture.
    pub datasets: Vec<DatasetConfig>,
    /// Seed, shuffle, mixture, partition, local batch size, limit. Rank and world are the
    /// arguments of [`LoaderConfig::init`] (or [`LoaderConfig::with_rank`], which `init` must
    /// then agree with).
    pub order: OrderConfig,
    /// Padding or packing, sequence length, optional fields.
    pub collate: CollateConfig,
    /// Truncation, BOS/EOS, bad-sample policy.
    pub transform: TransformConfig,
    /// User transforms by name, applied in this order; [`LoaderConfig::init_with`] resolves them
    /// in a [`NamedTransforms`].
    pub transforms: Vec<String>,
    /// The standard metrics' settings; `None` turns metrics off.
    pub metrics: Option<MetricsConfig>,
    /// Threads, queue depths and hints: never the stream.
    pub runtime: RuntimeConfig,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            datasets: Vec::new(),
            order: OrderConfig::default(),
            collate: CollateConfig::default(),
            transform: TransformConfig::default(),
            transforms: Vec::new(),
            metrics: Some(MetricsConfig::default()),
            runtime: RuntimeConfig::default(),
        }
    }
}

/// [`LoaderConfig`] as read: also the top-level `workers` and `prefetch` of configs saved
/// before the `runtime` section.
#[derive(serde::Deserialize)]
#[serde(default)]
struct SavedConfig {
    datasets: Vec<DatasetConfig>,
    order: OrderConfig,
    collate: CollateConfig,
    transform: TransformConfig,
    transforms: Vec<String>,
    metrics: Option<MetricsConfig>,
    runtime: RuntimeConfig,
    workers: Option<usize>,
    prefetch: Option<usize>,
}

impl Default for SavedConfig {
    fn default() -> Self {
        let c = LoaderConfig::default();
        SavedConfig {
            datasets: c.datasets,
            order: c.order,
            collate: c.collate,
            transform: c.transform,
            transforms: c.transforms,
            metrics: c.metrics,
            runtime: c.runtime,
            workers: None,
            prefetch: None,
        }
    }
}

impl From<SavedConfig> for LoaderConfig {
    fn from(s: SavedConfig) -> Self {
        let mut runtime = s.runtime;
        runtime.workers = s.workers.unwrap_or(runtime.workers);
        runtime.prefetch = s.prefetch.unwrap_or(runtime.prefetch);
        LoaderConfig {
            datasets: s.datasets,
            order: s.order,
            collate: s.collate,
            transform: s.transform,
            transforms: s.transforms,
            metrics: s.metrics,
            runtime,
        }
    }
}

impl LoaderConfig {
    /// A configuration over `datasets` with the defaults of [`LoaderBuilder::new`].
    pub fn new(datasets: Vec<DatasetConfig>) -> Self {
        LoaderConfig {
            datasets,
            ..Default::default()
        }
    }

    /// Rows per rank per step.
    pub fn with_batch_size(mut self, batch: usize) -> Self {
        self.order.local_batch = batch;
        self
    }

    /// This process's rank in a world of `world` ranks. [`LoaderConfig::init`] and the other
    /// builds then refuse any other rank or world, rather than silently replace it.
    pub fn with_rank(mut self, rank: usize, world: usize) -> Self {
        self.order.rank = rank;
        self.order.world = world;
        self
    }

    /// Drops the last global batch of a limited stream when it is incomplete
    /// ([`OrderConfig::drop_last`]), so every rank takes the same full steps.
    pub fn with_drop_last(mut self, drop_last: bool) -> Self {
        self.order.drop_last = drop_last;
        self
    }

    /// Ends the stream after `epochs` passes over the mixture (fractions allowed).
    pub fn with_epochs(mut self, epochs: f64) -> Self {
        self.order.limit = StreamLimit::Epochs(epochs);
        self
    }

    /// The seed of every shuffle and draw.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.order.seed = seed;
        self
    }

    /// Padding or packing, sequence length, optional fields.
    pub fn with_collate(mut self, collate: CollateConfig) -> Self {
        self.collate = collate;
        self
    }

    /// Worker threads ([`RuntimeConfig::workers`]).
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.runtime.workers = workers;
        self
    }

    /// Every knob that does not change the stream.
    pub fn with_runtime(mut self, runtime: RuntimeConfig) -> Self {
        self.runtime = runtime;
        self
    }

    /// What decides the stream, as canonical JSON: the configuration without its
    /// [`RuntimeConfig`] and with rank 0. Ranks of one run agree on it; hand it to
    /// [`crate::collective::RunSpec::new`] so that the run-spec check compares streams, not
    /// thread counts.
    pub fn stream_spec(&self) -> serde_json::Value {
        let mut canonical = self.clone();
        canonical.order.rank = 0;
        let mut value =
            serde_json::to_value(&canonical).expect("a LoaderConfig serializes to JSON");
        if let Some(fields) = value.as_object_mut() {
            fields.remove("runtime");
        }
        value
    }

    /// An XXH64 of [`LoaderConfig::stream_spec`]: ranks that agree on it build the same stream
    /// (up to their rank), whatever their thread counts. The paths count as written, not the
    /// files' contents: the shards' own trailers guard those.
    pub fn fingerprint(&self) -> u64 {
        let json = serde_json::to_vec(&self.stream_spec()).expect("a JSON value serializes");
        crate::hash::xxh64(&json)
    }

    /// The order of rank `rank` of `world`: one source of truth, so a rank set with
    /// [`LoaderConfig::with_rank`] must be the one asked for.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the config holds another rank or world than `rank` of `world`
    /// (rank 0 of 1, the default, counts as unset).
    pub fn order_for(&self, rank: usize, world: usize) -> Result<OrderConfig> {
        let set = (self.order.rank, self.order.world);
        if set != (0, 1) && set != (rank, world) {
            return Err(Error::Config(format!(
                "the config says rank {} of {}, and the loader is built for rank {rank} of \
                 {world}: set the rank in one place (LoaderConfig::with_rank or init's arguments)",
                set.0, set.1
            )));
        }
        let mut order = self.order.clone();
        order.rank = rank;
        order.world = world;
        Ok(order)
    }

    /// Opens the datasets.
    ///
    /// # Errors
    ///
    /// A dataset's open errors ([`DatasetConfig::open`]).
    pub fn open(&self) -> Result<Vec<Source>> {
        self.datasets.iter().map(DatasetConfig::open).collect()
    }

    /// A builder for rank `rank` of `world` over `sources` opened from this config, to add what
    /// a config cannot hold (a resumed state, user metrics).
    ///
    /// # Errors
    ///
    /// As [`LoaderConfig::order_for`]; [`Error::Config`] for a named transform that `named`
    /// lacks.
    pub fn builder_over<T: TokenId>(
        &self,
        sources: Vec<Source>,
        rank: usize,
        world: usize,
        named: &NamedTransforms<T>,
    ) -> Result<LoaderBuilder<T>> {
        let mut config = self.clone();
        config.order = self.order_for(rank, world)?;
        let mut builder = LoaderBuilder::from_config(config, sources);
        for name in &self.transforms {
            let f = named.0.get(name).ok_or_else(|| {
                Error::Config(format!(
                    "the transform {name:?} is not registered; known: {}",
                    if named.0.is_empty() {
                        "none".to_string()
                    } else {
                        named.0.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                ))
            })?;
            builder = builder.with_user_arc(f.clone());
        }
        Ok(builder)
    }

    /// Opens the datasets and returns a builder for rank `rank` of `world`, to add what a
    /// config cannot hold (a resumed state, user metrics).
    ///
    /// # Errors
    ///
    /// A dataset's open errors; as [`LoaderConfig::builder_over`].
    pub fn builder_with<T: TokenId>(
        &self,
        rank: usize,
        world: usize,
        named: &NamedTransforms<T>,
    ) -> Result<LoaderBuilder<T>> {
        self.order_for(rank, world)?;
        self.builder_over(self.open()?, rank, world, named)
    }

    /// [`LoaderConfig::builder_with`] without named transforms.
    ///
    /// # Errors
    ///
    /// As [`LoaderConfig::builder_with`].
    pub fn builder<T: TokenId>(&self, rank: usize, world: usize) -> Result<LoaderBuilder<T>> {
        self.builder_with(rank, world, &NamedTransforms::new())
    }

    /// Builds the loader of rank `rank` in a world of `world`, with host batches.
    ///
    /// # Errors
    ///
    /// As [`LoaderConfig::builder_with`] and [`LoaderBuilder::build`].
    pub fn init<T: TokenId>(&self, rank: usize, world: usize) -> Result<Loader<T, HostSink>> {
        self.builder(rank, world)?.build_host()
    }

    /// Builds the loader of rank `rank` in a world of `world` into `sink`, with named transforms.
    ///
    /// # Errors
    ///
    /// As [`LoaderConfig::builder_with`] and [`LoaderBuilder::build`].
    pub fn init_with<T: TokenId, S: DeviceSink<T>>(
        &self,
        rank: usize,
        world: usize,
        sink: S,
        named: &NamedTransforms<T>,
    ) -> Result<Loader<T, S>> {
        self.builder_with(rank, world, named)?.build(sink)
    }
}

/// User transforms by name, for [`LoaderConfig::transforms`].
pub struct NamedTransforms<T: TokenId>(BTreeMap<String, UserTransform<T>>);

impl<T: TokenId> Default for NamedTransforms<T> {
    fn default() -> Self {
        NamedTransforms(BTreeMap::new())
    }
}

impl<T: TokenId> NamedTransforms<T> {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `f` as `name`.
    pub fn with(
        mut self,
        name: impl Into<String>,
        f: impl Fn(&SampleInfo<'_>, &mut Vec<T>) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.0.insert(name.into(), std::sync::Arc::new(f));
        self
    }
}
