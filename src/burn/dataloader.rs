//! Burn's `DataLoader<O>` over a shardflow loader.

use std::sync::{Arc, Mutex, Weak};

use ::burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use ::burn::data::dataset::DatasetError;
use ::burn::tensor::Device;

use super::{BurnBatch, BurnSink};
use crate::error::{Error, Result};
use crate::loader::{
    LastBatch, Loader, LoaderConfig, LoaderState, NamedTransforms, Source, fill_owners, specs,
};
use crate::order::Plan;

/// The user's conversion from a [`BurnBatch`] to their training step's input.
type Convert<O> = Arc<dyn Fn(BurnBatch) -> O + Send + Sync>;

/// Burn's [`DataLoader`] over a shardflow stream of a [`LoaderConfig`], any partition.
///
/// - [`BurnLoader::new`] opens the datasets (and reads the class files a stratified partition
///   needs) once; every `iter()` builds a loader over those opened datasets, so an epoch's start
///   neither re-opens nor re-validates a shard.
/// - Items are this rank's samples (rows): [`DataLoader::num_items`] counts those of the
///   configured budget, so the stream must be finite (`limit` epochs or samples).
/// - `iter()` yields batches on the device last given to [`DataLoader::to_device`], converted
///   by the user's function; its `progress()` counts samples.
/// - `slice(start, end)` keeps the batches whose first item lies in `start..end` (relative to
///   this loader's items): slices that tile the items cover every batch, hence every item,
///   once. Packed streams cannot be sliced (a packed batch depends on every batch before it);
///   their slices' iterators yield one error.
/// - A pipeline error reaches Burn as a [`DatasetError`] carrying our message, once; the
///   iterator ends after it.
/// - [`BurnLoader::state`] is the checkpoint after the last batch yielded; hand it to
///   [`BurnLoader::resume`] to continue exactly there.
pub struct BurnLoader<O> {
    config: LoaderConfig,
    rank: usize,
    world: usize,
    /// The datasets, opened once, with the owners the partition needs.
    sources: Arc<[Source]>,
    device: Device,
    convert: Convert<O>,
    /// Rows per batch (the local batch).
    batch: u64,
    /// This rank's items over the whole stream.
    total: u64,
    /// The batches this loader covers.
    first: u64,
    end: u64,
    resume: Option<LoaderState>,
    named: Arc<NamedTransforms<i32>>,
    names: Vec<String>,
    live: Arc<Mutex<Live>>,
}

/// A loader an iterator is reading, shared so that [`BurnLoader::state`] can ask it.
type Slot = Arc<Mutex<Option<Loader<i32, BurnSink>>>>;

/// Where [`BurnLoader::state`] looks: the latest iterator's loader while it lives, else the
/// state that iterator left when it ended.
#[derive(Default)]
struct Live {
    current: Weak<Mutex<Option<Loader<i32, BurnSink>>>>,
    last: Option<LoaderState>,
}

impl<O> Clone for BurnLoader<O> {
    fn clone(&self) -> Self {
        BurnLoader {
            config: self.config.clone(),
            rank: self.rank,
            world: self.world,
            sources: self.sources.clone(),
            device: self.device.clone(),
            convert: self.convert.clone(),
            batch: self.batch,
            total: self.total,
            first: self.first,
            end: self.end,
            resume: self.resume.clone(),
            named: self.named.clone(),
            names: self.names.clone(),
            live: Arc::default(),
        }
    }
}

impl<O> BurnLoader<O> {
    /// Items of batches `first..end`.
    fn items(&self, first: u64, end: u64) -> u64 {
        (end * self.batch).min(self.total) - (first * self.batch).min(self.total)
    }
}

impl<O: 'static> BurnLoader<O> {
    /// Rank `rank` of `world`'s stream of `config`, landing on `device`, each batch converted
    /// by `convert`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an endless stream (Burn counts items: give the order a limit), a
    /// packed one, or a config set to another rank ([`LoaderConfig::order_for`]); the datasets'
    /// and class files' open errors and the plan's errors.
    pub fn new(
        config: LoaderConfig,
        rank: usize,
        world: usize,
        device: &Device,
        convert: impl Fn(BurnBatch) -> O + Send + Sync + 'static,
    ) -> Result<Self> {
        if config.collate.pack {
            return Err(Error::Config(
                "Burn's DataLoader counts items before it starts, and a packed stream's row count \
                 depends on every document's length: use a padded stream here, or iterate a \
                 Loader built with BurnSink directly"
                    .into(),
            ));
        }
        // The same path as the builder's: owners filled in, then the plan's specs.
        let order = config.order_for(rank, world)?;
        let sources = fill_owners(config.open()?, order.partition)?;
        let plan = order.init(specs(&sources))?;
        let total = rank_items(&plan, rank).ok_or_else(|| {
            Error::Config(
                "an endless stream has no item count, and Burn's DataLoader counts items: set the \
                 order's limit (LoaderConfig::with_epochs, or StreamLimit::Samples)"
                    .into(),
            )
        })?;
        let batch = plan.config().local_batch as u64;
        Ok(BurnLoader {
            config,
            rank,
            world,
            sources: sources.into(),
            device: device.clone(),
            convert: Arc::new(convert),
            batch,
            total,
            first: 0,
            end: total.div_ceil(batch),
            resume: None,
            named: Arc::new(NamedTransforms::new()),
            names: plan.names().to_vec(),
            live: Arc::default(),
        })
    }

    /// Continues from `state` (a [`BurnLoader::state`] or a loader's checkpoint); `None` starts
    /// from the beginning. Batches before the state's position are not yielded again.
    pub fn resume(mut self, state: impl Into<Option<LoaderState>>) -> Self {
        self.resume = state.into();
        self
    }

    /// The user transforms that [`LoaderConfig::transforms`] names.
    pub fn with_transforms(mut self, named: NamedTransforms<i32>) -> Self {
        self.named = Arc::new(named);
        self
    }

    /// The dataset names, indexed as [`crate::collate::DocRef::dataset`] indexes them.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The checkpoint after the last batch the latest iterator yielded (`None` before any).
    pub fn state(&self) -> Option<LoaderState> {
        // One lock at a time: the iterator takes its slot's, then this one's.
        let (current, last) = {
            let live = lock(&self.live);
            (live.current.upgrade(), live.last.clone())
        };
        match current {
            Some(slot) => lock(&slot).as_ref().map(Loader::state).or(last),
            None => last,
        }
    }

    /// Runs `f` on the batch the latest iterator yielded last ([`Loader::last_batch`]: its
    /// step, the samples it skipped, the metrics so far), for the training loop to record after
    /// each batch; `None` when no iterator is live (before `iter()`, or once its iterator has
    /// ended or been dropped). With a metrics history's recorder, after each batch:
    /// `loader.with_last_batch(|b| recorder.after_batch(b.step, b.skipped, b.metrics, None))`.
    pub fn with_last_batch<R>(&self, f: impl FnOnce(LastBatch<'_>) -> R) -> Option<R> {
        // One lock at a time, as in `state`.
        let current = lock(&self.live).current.upgrade()?;
        let mut slot = lock(&current);
        slot.as_mut().map(|loader| f(loader.last_batch()))
    }

    /// The configuration it builds its loaders from.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    fn loader(&self) -> Result<(Loader<i32, BurnSink>, u64)> {
        let sink = BurnSink::new(&self.device)?;
        let builder = self.config.builder_over::<i32>(
            self.sources.to_vec(),
            self.rank,
            self.world,
            &self.named,
        )?;
        match &self.resume {
            Some(state) if state.position.batches >= self.first => {
                let at = state.position.batches;
                Ok((builder.resume(state.clone()).build(sink)?, at))
            }
            _ => Ok((builder.starting_at(self.first).build(sink)?, self.first)),
        }
    }
}

impl<O: 'static> DataLoader<O> for BurnLoader<O> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<O> + 'a> {
        let (loader, at) = match self.loader() {
            Ok((loader, at)) => (Some(loader), at),
            Err(e) => {
                return Box::new(BurnIter {
                    owner: self,
                    loader: Arc::new(Mutex::new(None)),
                    error: Some(e),
                    batch: self.first,
                    done: self.items(self.first, self.first),
                });
            }
        };
        let slot: Slot = Arc::new(Mutex::new(loader));
        lock(&self.live).current = Arc::downgrade(&slot);
        Box::new(BurnIter {
            owner: self,
            loader: slot,
            error: None,
            batch: at,
            done: self.items(self.first, at.min(self.end)),
        })
    }

    fn num_items(&self) -> usize {
        self.items(self.first, self.end) as usize
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<O>> {
        let mut moved = self.clone();
        moved.device = device.clone();
        Arc::new(moved)
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<O>> {
        let mut part = self.clone();
        let base = self.first * self.batch;
        let to_batch = |item: usize| (base + item as u64).div_ceil(self.batch).min(self.end);
        part.first = to_batch(start);
        part.end = to_batch(end).max(part.first);
        Arc::new(part)
    }
}

/// The iterator of a [`BurnLoader`].
struct BurnIter<'a, O> {
    owner: &'a BurnLoader<O>,
    loader: Slot,
    error: Option<Error>,
    /// The next batch's index.
    batch: u64,
    /// Items yielded so far, counting those before a resume point.
    done: u64,
}

impl<O> Iterator for BurnIter<'_, O> {
    type Item = std::result::Result<O, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.error.take() {
            return Some(Err(DatasetError::new(e)));
        }
        let next = {
            let mut slot = lock(&self.loader);
            let loader = slot.as_mut()?;
            if self.batch >= self.owner.end {
                None
            } else {
                loader.next()
            }
        };
        match next {
            Some(Ok(batch)) => {
                self.batch += 1;
                self.done += batch.rows as u64;
                Some(Ok((self.owner.convert)(batch)))
            }
            Some(Err(e)) => {
                self.finish();
                Some(Err(DatasetError::new(e)))
            }
            None => {
                self.finish();
                None
            }
        }
    }
}

impl<O> BurnIter<'_, O> {
    /// Leaves the loader's final state where [`BurnLoader::state`] finds it, and drops the
    /// loader (joining its threads).
    fn finish(&mut self) {
        let Some(loader) = lock(&self.loader).take() else {
            return;
        };
        lock(&self.owner.live).last = Some(loader.state());
    }
}

impl<O> Drop for BurnIter<'_, O> {
    fn drop(&mut self) {
        self.finish();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<O> DataLoaderIterator<O> for BurnIter<'_, O> {
    fn progress(&self) -> Progress {
        Progress {
            items_processed: self.done as usize,
            items_total: self.owner.items(self.owner.first, self.owner.end) as usize,
            unit: Some("samples".into()),
        }
    }
}

/// Rank `rank`'s rows over the whole stream, `None` when it is endless. In the global mode a
/// last partial global batch gives its rows to the first ranks.
pub(crate) fn rank_items(plan: &Plan, rank: usize) -> Option<u64> {
    let steps = plan.steps()?;
    let total = plan.position_of(steps)?;
    let local = plan.config().local_batch as u64;
    if plan.rows_per_step() == plan.global_batch() {
        let g = plan.global_batch();
        let rest = (total % g).saturating_sub(rank as u64 * local).min(local);
        Some(total / g * local + rest)
    } else {
        Some(steps * local)
    }
}
