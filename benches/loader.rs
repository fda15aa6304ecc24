//! The loader on a generated corpus (log-normal lengths, median 300 tokens, u16 ids, 50 M
//! tokens): batch 32, padded to a multiple of 8, full shuffle, workers 0, 1 and 2, beside
//! (a) a memcpy of the output bytes at this machine's bandwidth (the roofline) and (b) Burn
//! 0.22.1's own `DataLoader` (`DataLoaderBuilder` with a `Dataset` over the same shards and a
//! padding `Batcher`), all measured in this run.
//!
//! Then batches/s into Burn `Tensor<2, Int>` ids on Flex and wgpu: the Burn sink (host padding),
//! ragged ids padded on the device with Burn tensor ops, and Burn's `DataLoader` with a tensor
//! `Batcher`; and on Flex, both at 0, 1 and 2 workers against Burn's best configuration.
//!
//! `cargo bench --features burn --bench loader` (`-- --tensors-only` for the tensor figures)

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::{Dataset as BurnDataset, DatasetError};
use burn::tensor::{Device, Int, Tensor, TensorData};
use criterion::{Criterion, Throughput, criterion_group};
use shardflow::Dataset;
use shardflow::burn::{BurnShaderSink, BurnSink};
use shardflow::cli::measure;
use shardflow::collate::{CollateConfig, Padding, Pool, StagedBatch};
use shardflow::device::DeviceSink;
use shardflow::loader::{Loader, LoaderBuilder, Source};
use shardflow::order::{OrderConfig, Shuffle};
use shardflow::shard::synthetic::SyntheticCorpus;

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
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let written = SyntheticCorpus::single("bench", TOKENS, 300.0, 1)
        .write(dir.path(), |_| {})
        .unwrap();
    let data = Dataset::open(&[&written[0].prefix]).unwrap();
    Fixture { _dir: dir, data }
}

fn shardflow_loader(f: &Fixture, workers: usize) -> Loader<i32> {
    shardflow_builder(f, workers).build_host().unwrap()
}

fn shardflow_builder(f: &Fixture, workers: usize) -> LoaderBuilder<i32> {
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
    for workers in [0, 1, 2] {
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
        let bandwidth = measure::memcpy_roofline(workers.max(1)).best;
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
    tensor_figures(&f);
    flex_sweep(&f);
}

/// Batches per measured run into Burn tensors.
const TENSOR_BATCHES: usize = 300;

/// Padded ids as a Burn tensor, built by Burn's `DataLoader` the way a Burn user writes it.
#[derive(Clone)]
struct TensorBatcher;

impl Batcher<Vec<i32>, Tensor<2, Int>> for TensorBatcher {
    fn batch(&self, items: Vec<Vec<i32>>, device: &Device) -> Tensor<2, Int> {
        let Padded { ids, lengths } = PadBatcher.batch(items, device);
        let width = ids.len() / lengths.len();
        Tensor::from_data(TensorData::new(ids, [lengths.len(), width]), device)
    }
}

/// Ragged ids and row offsets uploaded as they are, then padded on the device with Burn tensor
/// ops: the alternative to padding on the host that the Burn sink measures against.
struct DevicePadSink(Device, Pool);

impl DeviceSink<i32> for DevicePadSink {
    type Prepared = (TensorData, TensorData, usize, usize);
    type Output = Tensor<2, Int>;

    fn device(&self) -> String {
        format!("{:?}", self.0)
    }

    fn staging(&self) -> &Pool {
        &self.1
    }

    fn bind(&mut self, _: &CollateConfig, _: usize) -> shardflow::Result<()> {
        Ok(())
    }

    fn prepare(&self, s: StagedBatch<i32>) -> shardflow::Result<Self::Prepared> {
        let tokens = TensorData::new(s.tokens.to_vec(), [s.tokens.len()]);
        let offsets: Vec<i32> = s.offsets.iter().map(|&o| o as i32).collect();
        Ok((
            tokens,
            TensorData::new(offsets, [s.rows + 1]),
            s.rows,
            s.width,
        ))
    }

    fn upload(
        &self,
        (tokens, offsets, rows, width): Self::Prepared,
        _: u64,
    ) -> shardflow::Result<Tensor<2, Int>> {
        let d = &self.0;
        let total = tokens.num_elements() as i64;
        let tokens = Tensor::<1, Int>::from_data(tokens, d);
        let offsets = Tensor::<1, Int>::from_data(offsets, d);
        let starts = offsets.clone().slice(0..rows).unsqueeze_dim::<2>(1);
        let ends = offsets.slice(1..rows + 1).unsqueeze_dim::<2>(1);
        let cols = Tensor::<1, Int>::arange(0..width as i64, d).unsqueeze_dim::<2>(0);
        let at = cols.repeat_dim(0, rows) + starts.clone();
        let pad = at.clone().greater_equal(ends.repeat_dim(1, width));
        let at = at.clamp_max(total - 1).reshape([rows * width]);
        let ids = tokens.select(0, at).reshape([rows, width]);
        Ok(ids.mask_fill(pad, 0))
    }
}

fn burn_tensor_loader(
    f: &Fixture,
    device: &Device,
    workers: usize,
) -> Arc<dyn DataLoader<Tensor<2, Int>>> {
    let mut b = DataLoaderBuilder::new(TensorBatcher)
        .batch_size(BATCH)
        .shuffle(1)
        .set_device(device.clone());
    if workers > 0 {
        b = b.num_workers(workers);
    }
    b.build(ShardItems(f.data.clone()))
}

/// Batches per second of `TENSOR_BATCHES` batches from `batches`, the device synced at the end;
/// the best of three runs.
fn tensor_rate<I: Iterator<Item = Tensor<2, Int>>>(
    device: &Device,
    mut run: impl FnMut() -> I,
) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t0 = Instant::now();
        let n = run().take(TENSOR_BATCHES).map(black_box).count();
        device.sync().unwrap();
        best = best.max(n as f64 / t0.elapsed().as_secs_f64());
    }
    best
}

/// Batches per second into Burn tensors on each device: the Burn sink (host padding), ragged
/// upload with device padding, and Burn's own `DataLoader`, as ratios in one run.
fn tensor_figures(f: &Fixture) {
    let mut devices = vec![("flex", Device::flex(), None)];
    match shardflow::burn::shared_wgpu() {
        Ok((device, ctx)) => devices.push(("wgpu", device, Some(ctx))),
        Err(e) => println!("  wgpu: skipped: {e}"),
    }
    println!(
        "\ninto Burn Tensor<2, Int> ids (batch {BATCH}, pad to {MULTIPLE}, 2 workers, {TENSOR_BATCHES} batches):"
    );
    for (name, device, ctx) in devices {
        let host = tensor_rate(&device, || {
            shardflow_builder(f, 2)
                .build(BurnSink::new(&device).unwrap())
                .unwrap()
                .map(|b| b.unwrap().ids)
        });
        let on_device = tensor_rate(&device, || {
            shardflow_builder(f, 2)
                .build(DevicePadSink(device.clone(), Pool::new()))
                .unwrap()
                .map(|b| b.unwrap())
        });
        let shader = ctx.map(|ctx| {
            tensor_rate(&device, || {
                shardflow_builder(f, 2)
                    .build(BurnShaderSink::new(&device, ctx.clone()).unwrap())
                    .unwrap()
                    .map(|b| b.unwrap().ids)
            })
        });
        let l = burn_tensor_loader(f, &device, 2);
        let burn = tensor_rate(&device, || {
            // One epoch is over 5,000 batches: one iterator serves a run.
            l.iter().map(|b| b.unwrap())
        });
        println!(
            "  {name:5} shardflow (host pad) {host:8.0} batches/s | ragged + device pad {on_device:8.0} \
             batches/s ({:.2}x) | Burn DataLoader {burn:8.0} batches/s; shardflow {:.2}x Burn",
            on_device / host,
            host / burn
        );
        if let Some(shader) = shader {
            println!(
                "        pad_collate.wgsl on the shared device, copied into Burn tensors: \
                 {shader:8.0} batches/s ({:.2}x host padding)",
                shader / host
            );
        }
    }
}

/// Flex tensors, the path a Burn user takes, at 0, 1 and 2 workers on both sides: shardflow's
/// Burn sink against Burn's `DataLoader`, and the ratio to Burn's best configuration.
fn flex_sweep(f: &Fixture) {
    let device = Device::flex();
    println!("\ninto Flex Tensor<2, Int> ids at 0, 1 and 2 workers ({TENSOR_BATCHES} batches):");
    let mut burn_best = 0.0f64;
    let mut ours = Vec::new();
    for workers in [0, 1, 2] {
        let l = burn_tensor_loader(f, &device, workers);
        let burn = tensor_rate(&device, || l.iter().map(|b| b.unwrap()));
        burn_best = burn_best.max(burn);
        let host = tensor_rate(&device, || {
            shardflow_builder(f, workers)
                .build(BurnSink::new(&device).unwrap())
                .unwrap()
                .map(|b| b.unwrap().ids)
        });
        ours.push((workers, host, burn));
    }
    for (workers, host, burn) in ours {
        println!(
            "  workers {workers}: shardflow {host:8.0} batches/s | Burn DataLoader {burn:8.0} \
             batches/s | shardflow {:.2}x Burn's best",
            host / burn_best
        );
    }
}

criterion_group!(loader_benches, benches);

fn main() {
    if std::env::args().any(|a| a == "--tensors-only") {
        let f = fixture();
        tensor_figures(&f);
        flex_sweep(&f);
        return;
    }
    loader_benches();
    Criterion::default().configure_from_args().final_summary();
}
