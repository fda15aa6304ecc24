//! A loader configuration users can hold, save and compare: [`LoaderConfig`], which builds a
//! loader with `.init(rank, world)` as Burn's configs build modules.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Loader, LoaderBuilder, Source};
use crate::collate::CollateConfig;
use crate::device::{DeviceSink, HostSink};
use crate::error::{Error, Result};
use crate::metrics::MetricsConfig;
use crate::order::{Classes, OrderConfig, RankRanges, StreamLimit};
use crate::shard::{Dataset, TokenId, prefix_name, resolve_prefix};
use crate::transform::{SampleInfo, TransformConfig, UserTransform};

/// One dataset of a [`LoaderConfig`]: shard prefixes and directories of shards, read as one
/// dataset, with a mixture weight.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DatasetConfig {
    /// The name checkpoints and metrics use; by default the first path's file name.
    #[serde(default)]
    pub name: Option<String>,
    /// Shard prefixes (`data/web`, `data/web.idx`) and directories (every shard in them, sorted
    /// by name), in order.
    pub paths: Vec<PathBuf>,
    /// The mixture weight (finite, positive; normalized over the datasets).
    #[serde(default = "one")]
    pub weight: f64,
    /// Each rank's `[start, end)` sample ranges, for the range partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranges: Option<RankRanges>,
    /// A class file (one little-endian u32 per sequence), for the stratified partition and the
    /// standard `class` metric. The stratified partition reads the files beside the shards
    /// when none is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<PathBuf>,
}

fn one() -> f64 {
    1.0
}

impl DatasetConfig {
    /// The shards at `path` (a prefix or a directory), weight 1, named after it.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DatasetConfig {
            name: None,
            paths: vec![path.into()],
            weight: 1.0,
            ranges: None,
            classes: None,
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
        if self.ranges.is_some() && self.classes.is_some() {
            return Err(Error::Config(format!(
                "the dataset {name} gives both ranges and classes: the range partition takes \
                 ranges, the stratified one classes"
            )));
        }
        let mut source = Source::new(name, Dataset::open(&prefixes)?, self.weight);
        if let Some(ranges) = &self.ranges {
            source = source.with_ranges(ranges.clone());
        }
        if let Some(path) = &self.classes {
            source = source.with_classes(Classes::read(path)?);
        }
        Ok(source)
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

/// Everything that decides a loader's stream, as data: datasets with weights, order, collation,
/// transforms (by name), metrics, workers and prefetch. Save it beside a checkpoint, compare
/// it across ranks ([`LoaderConfig::fingerprint`]), and build the loader with
/// [`LoaderConfig::init`].
///
/// # Example
///
/// ```
/// # fn main() -> shardflow::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # shardflow::shard::synthetic::SyntheticCorpus::single("web", 20_000, 50.0, 1)
/// #     .write(dir.path(), |_| {})?;
/// use shardflow::loader::{DatasetConfig, LoaderConfig};
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
#[serde(default)]
pub struct LoaderConfig {
    /// The datasets of the mixture.
    pub datasets: Vec<DatasetConfig>,
    /// Seed, shuffle, mixture, partition, local batch size, limit (rank and world are set by
    /// [`LoaderConfig::init`]).
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
    /// Worker threads (0: on the caller's thread).
    pub workers: usize,
    /// Batches built ahead of the caller at most.
    pub prefetch: usize,
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
            workers: 2,
            prefetch: 4,
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

    /// This process's rank in a world of `world` ranks.
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

    /// Worker threads.
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// An XXH64 of the configuration's canonical JSON: ranks that agree on it build the same
    /// stream (up to their rank). The paths count as written, not the files' contents: the
    /// shards' own trailers guard those.
    pub fn fingerprint(&self) -> u64 {
        let mut canonical = self.clone();
        canonical.order.rank = 0;
        let json = serde_json::to_vec(&canonical).expect("a LoaderConfig serializes to JSON");
        crate::shard::trailer::xxh64(&json)
    }

    /// Opens the datasets and returns a builder for rank `rank` of `world`, to add what a
    /// config cannot hold (a resumed state, user metrics, a watchdog).
    ///
    /// # Errors
    ///
    /// A dataset's open errors; [`Error::Config`] for a named transform that `named` lacks.
    pub fn builder_with<T: TokenId>(
        &self,
        rank: usize,
        world: usize,
        named: &NamedTransforms<T>,
    ) -> Result<LoaderBuilder<T>> {
        let sources = self
            .datasets
            .iter()
            .map(DatasetConfig::open)
            .collect::<Result<Vec<_>>>()?;
        let mut order = self.order.clone();
        order.rank = rank;
        order.world = world;
        let mut builder = LoaderBuilder::new(sources)
            .with_order(order)
            .with_collate(self.collate.clone())
            .with_transform(self.transform.clone())
            .with_metrics(self.metrics.clone())
            .with_workers(self.workers)
            .with_prefetch(self.prefetch);
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
