//! The wgpu sink beside the host sink, in one run, on a generated corpus (log-normal lengths,
//! median 300 tokens, u16 ids): batch 32, padded to a multiple of 8, full shuffle, one worker.
//! Reports batches/s through each sink (the wgpu sink's batches waited for on the device) and
//! the bytes that cross to the device per batch, ragged against what a host-padded upload
//! sends, for ids only and for every field. On lavapipe the device is the CPU, so only the
//! ratios mean anything there.
//!
//! `cargo bench --bench wgpu` (needs a wgpu adapter; says so and stops without one)

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use shardflow::collate::{CollateConfig, Padding};
use shardflow::device::{DeviceSink, WgpuSink};
use shardflow::gpu::WgpuContext;
use shardflow::loader::{Loader, LoaderBuilder, Source};
use shardflow::order::{OrderConfig, Shuffle};
use shardflow::shard::synthetic::SyntheticCorpus;

const TOKENS: u64 = 10_000_000;
const BATCH: usize = 32;
/// Batches per measured iteration.
const BATCHES: usize = 200;

fn builder(sources: &[Source], all_fields: bool) -> LoaderBuilder<i32> {
    LoaderBuilder::new(sources.to_vec())
        .with_order(OrderConfig {
            shuffle: Shuffle::Full,
            local_batch: BATCH,
            ..Default::default()
        })
        .with_collate(CollateConfig {
            seq_len: 2048,
            padding: Padding::Multiple(8),
            attention_mask: all_fields,
            labels: all_fields,
            position_ids: all_fields,
            ..Default::default()
        })
        .with_workers(1)
}

/// Takes `BATCHES` batches, finishing each (waiting for the device).
fn run<S: DeviceSink<i32>>(l: &mut Loader<i32, S>, finish: impl Fn(S::Output)) {
    for b in l.by_ref().take(BATCHES) {
        finish(b.unwrap());
    }
}

fn batches_per_s(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t0 = Instant::now();
        f();
        best = best.max(BATCHES as f64 / t0.elapsed().as_secs_f64());
    }
    best
}

fn benches(c: &mut Criterion) {
    let ctx = match WgpuContext::new() {
        Ok(ctx) => ctx,
        Err(e) => {
            println!("no wgpu adapter, nothing to measure: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let written = SyntheticCorpus::single("bench", TOKENS, 300.0, 0)
        .write(dir.path(), |_| {})
        .unwrap();
    let sources: Vec<Source> = written
        .iter()
        .map(|s| Source::open(&s.prefix, 1.0).unwrap())
        .collect();

    let mut g = c.benchmark_group("sink_batch32_pad8");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Elements(BATCHES as u64));
    let mut host = builder(&sources, true).build_host().unwrap();
    g.bench_function("host", |b| b.iter(|| run(&mut host, drop)));
    let mut device = builder(&sources, true)
        .build(WgpuSink::new(ctx.clone()).unwrap())
        .unwrap();
    g.bench_function("wgpu", |b| {
        b.iter(|| run(&mut device, |x| x.wait().unwrap()))
    });
    g.finish();

    println!(
        "\nmeasured in this run on {} ({} M tokens, batch {BATCH}, pad to 8, 1 worker):",
        ctx.name(),
        TOKENS / 1_000_000
    );
    for all_fields in [false, true] {
        let mut host = builder(&sources, all_fields).build_host().unwrap();
        let host_rate = batches_per_s(|| run(&mut host, drop));
        let sink = WgpuSink::new(ctx.clone()).unwrap();
        let mut device = builder(&sources, all_fields).build(sink).unwrap();
        let device_rate = batches_per_s(|| run(&mut device, |x| x.wait().unwrap()));
        let s = device.sink().stats();
        println!(
            "  {:<10} host {host_rate:8.0} batches/s, wgpu {device_rate:8.0} batches/s ({:.3}x); \
             to the device per batch {:.0} bytes ragged vs {:.0} padded ({:.2}x); {} wgpu buffers \
             created over {} batches",
            if all_fields { "all fields" } else { "ids only" },
            device_rate / host_rate,
            s.bytes_uploaded as f64 / s.uploads as f64,
            s.padded_bytes as f64 / s.uploads as f64,
            s.padded_bytes as f64 / s.bytes_uploaded as f64,
            s.buffers_created,
            s.uploads,
        );
    }
}

criterion_group!(wgpu_benches, benches);

fn main() {
    wgpu_benches();
    Criterion::default().configure_from_args().final_summary();
}
