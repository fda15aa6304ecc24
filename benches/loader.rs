//! The loader on a generated corpus (log-normal lengths, median 300 tokens, u16 ids, 50 M
//! tokens): batch 32, padded to a multiple of 8, full shuffle, workers 0, 1 and 2, beside
//! (a) a memcpy of the output bytes at this machine's bandwidth (the roofline) and (b) Burn
//! 0.22.1's own `DataLoader` (`DataLoaderBuilder` with a `Dataset` over the same shards and a
//! padding `Batcher`), all measured in this run.
//!
//! `cargo bench --features burn --bench loader`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::{Dataset as BurnDataset, DatasetError};
use burn::tensor::Device;
use criterion::{Criterion, Throughput, criterion_group};
use shardflow::cli::measure;
use shardflow::collate::{CollateConfig, Padding};
use shardflow::loader::{Loader, LoaderBuilder, Source};
use shardflow::order::{OrderConfig, Shuffle};
use shardflow::shard::synthetic::SyntheticCorpus;
use shardflow::{Dataset, IndexedShard};

const TOKENS: u64 = 50_000_000;
const BATCH: usize = 32;
const MULTIPLE: usize = 8;
/// Batches per measured iteration.
const BATCHES: usize = 1000;

/// The shards as Burn sees them: sample i decoded into a fresh `Vec<i32>`.
struct ShardItems(Dataset);

impl BurnDataset<Vec<i32>> for ShardItems {
    fn get(&self, index: usize) -> Result<Vec<i32>, DatasetError> {
        let seq = self.0.get(index).ok_or_else(|| {
            DatasetError::new(shardflow::Error::Config(format!(
                "index {index} out of range"
            )))
        })?;
        let mut ids = vec![0i32; seq.len()];
        seq.decode_into(&mut ids).map_err(DatasetError::new)?;
        Ok(ids)
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// A padded host batch, as the shardflow host sink makes (ids and lengths).
#[derive(Clone, Debug)]
struct Padded {
    ids: Vec<i32>,
    lengths: Vec<u32>,
}

#[derive(Clone)]
struct PadBatcher;

impl Batcher<Vec<i32>, Padded> for PadBatcher {
    fn batch(&self, items: Vec<Vec<i32>>, _device: &Device) -> Padded {
        let longest = items.iter().map(Vec::len).max().unwrap_or(0).clamp(1, 2048);
        let width = longest.div_ceil(MULTIPLE) * MULTIPLE;
        let mut ids = vec![0i32; items.len() * width];
        let mut lengths = Vec::with_capacity(items.len());
        for (row, item) in ids.chunks_exact_mut(width).zip(&items) {
            let n = item.len().min(width);
            row[..n].copy_from_slice(&item[..n]);
            lengths.push(n as u32);
        }
        Padded { ids, lengths }
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    data: Dataset,
    shard: IndexedShard,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let written = SyntheticCorpus::single("bench", TOKENS, 300.0, 1)
        .write(dir.path(), |_| {})
        .unwrap();
    let data = Dataset::open(&[&written[0].prefix]).unwrap();
    let shard = IndexedShard::open(&written[0].prefix).unwrap();
    Fixture {
        _dir: dir,
        data,
        shard,
    }
}

fn shardflow_loader(f: &Fixture, workers: usize) -> Loader<i32> {
    LoaderBuilder::new(vec![Source::new("bench", f.data.clone(), 1.0)])
        .with_order(OrderConfig {
            seed: 1,
            shuffle: Shuffle::Full,
            local_batch: BATCH,
            ..Default::default()
        })
        .with_collate(CollateConfig {
            seq_len: 2048,
            padding: Padding::Multiple(MULTIPLE),
            attention_mask: false,
            labels: false,
            position_ids: false,
            ..Default::default()
        })
        .with_workers(workers)
        .with_prefetch(2 * workers.max(1) + 2)
        .build_host()
        .unwrap()
}

fn burn_loader(f: &Fixture, workers: usize) -> Arc<dyn DataLoader<Padded>> {
    let mut b = DataLoaderBuilder::new(PadBatcher)
        .batch_size(BATCH)
        .shuffle(1);
    if workers > 0 {
        b = b.num_workers(workers);
    }
    b.build(ShardItems(f.data.clone()))
}

/// (real tokens, padded tokens) of `BATCHES` shardflow batches.
fn run_shardflow(loader: &mut Loader<i32>) -> (u64, u64) {
    let (mut real, mut padded) = (0, 0);
    for b in loader.by_ref().take(BATCHES) {
        let b = b.unwrap();
        real += b.real_tokens() as u64;
        padded += b.ids.len() as u64;
        black_box(&b.ids[..1]);
    }
    (real, padded)
}

/// (real tokens, padded tokens) of `BATCHES` Burn batches, starting new epochs as needed.
fn run_burn(loader: &Arc<dyn DataLoader<Padded>>) -> (u64, u64) {
    let (mut real, mut padded, mut n) = (0, 0, 0);
    while n < BATCHES {
        for b in loader.iter().take(BATCHES - n) {
            let b = b.unwrap();
            real += b.lengths.iter().map(|&l| l as u64).sum::<u64>();
            padded += b.ids.len() as u64;
            black_box(&b.ids[..1]);
            n += 1;
        }
    }
    (real, padded)
}

/// Real tokens/s, padded tokens/s, CPU ns per real token: best of three timed runs.
fn measure_run(mut run: impl FnMut() -> (u64, u64)) -> (f64, f64, f64) {
    run(); // warm the page cache and the pools
    let mut best = (0.0, 0.0, f64::MAX);
    for _ in 0..3 {
        let (t0, c0) = (Instant::now(), measure::cpu_time());
        let (real, padded) = run();
        let (secs, cpu) = (t0.elapsed().as_secs_f64(), measure::cpu_time() - c0);
        if real as f64 / secs > best.0 {
            best = (
                real as f64 / secs,
                padded as f64 / secs,
                cpu.as_nanos() as f64 / real as f64,
            );
        }
    }
    best
}

fn benches(c: &mut Criterion) {
    let f = fixture();
    let mut g = c.benchmark_group("loader_batch32_pad8");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    let probe = run_shardflow(&mut shardflow_loader(&f, 0));
    g.throughput(Throughput::Elements(probe.0));
    for workers in [0, 1, 2] {
        let mut l = shardflow_loader(&f, workers);
        g.bench_function(format!("shardflow/workers{workers}"), |b| {
            b.iter(|| run_shardflow(&mut l))
        });
    }
    for workers in [0, 2] {
        let l = burn_loader(&f, workers);
        g.bench_function(format!("burn/workers{workers}"), |b| {
            b.iter(|| run_burn(&l))
        });
    }
    g.finish();

    println!(
        "\nmeasured in this run ({} M tokens corpus, batch {BATCH}, pad to {MULTIPLE}, {BATCHES} batches per run):",
        TOKENS / 1_000_000
    );
    let mut burn_best = 0.0f64;
    for workers in [0, 2] {
        let l = burn_loader(&f, workers);
        let (real, _, cpu) = measure_run(|| run_burn(&l));
        burn_best = burn_best.max(real);
        println!(
            "  burn      workers {workers}: {:7.1} M real tokens/s, {cpu:5.2} CPU ns/real token",
            real / 1e6
        );
    }
    for workers in [0, 1, 2] {
        let mut l = shardflow_loader(&f, workers);
        let (real, padded, cpu) = measure_run(|| run_shardflow(&mut l));
        let bandwidth = measure::memcpy_bandwidth(&[f.shard.bin_bytes()], workers.max(1), 5);
        // The roofline: copying the i32 output bytes at memcpy bandwidth.
        let roofline = bandwidth / (4.0 * padded / real);
        println!(
            "  shardflow workers {workers}: {:7.1} M real tokens/s, {cpu:5.2} CPU ns/real token, \
             {:.2} of the memcpy roofline ({:.1} GB/s), {:.2}x Burn's best",
            real / 1e6,
            real / roofline,
            bandwidth / 1e9,
            real / burn_best
        );
    }
}

criterion_group!(loader_benches, benches);

fn main() {
    loader_benches();
    Criterion::default().configure_from_args().final_summary();
}
