//! Metric throughput and reduce cost.
//!
//! - per-sample path: `Aggregator::record` for the six standard metrics of every sample;
//! - per-batch partials: the standard metric transform over a batch's document pieces (as loader
//!   workers run it), merged into a running aggregator;
//! - one fused reduce of 3 datasets x 6 metrics over an in-process world of 4: time, collective
//!   calls and bytes per rank;
//! - device sketches on wgpu (feature `wgpu`): 16 Mi f32 losses over 4 datasets, already on the
//!   device, binned by `shaders/sketch.wgsl` and brought back as sketches, in values per second
//!   of wall time and of the process's CPU time (on lavapipe the device is the CPU; its threads
//!   are `LP_NUM_THREADS`, by default one per core).
//!
//! `cargo bench --bench metrics`; the device sketch alone, without an optimized build of wgpu:
//! `cargo bench --profile dev --bench metrics -- device_sketch` (the filter skips the criterion
//! groups; the printed figures still run).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use shardflow::collate::DocRef;
use shardflow::collective::{Counting, in_process};
use shardflow::metrics::{Aggregator, Kind, standard_metrics};

const DATASETS: [&str; 3] = ["web", "code", "books"];
const SAMPLES: usize = 4096;
const BATCH: usize = 32;

fn docs() -> Vec<DocRef> {
    (0..SAMPLES)
        .map(|i| DocRef {
            sample: i as u64,
            epoch: (i / 1000) as u64,
            dataset: (i % 3) as u32,
            row: (i % BATCH) as u32,
            len: 50 + (i * 37 % 2000) as u32,
            doc_len: 50 + (i * 37 % 2000) as u32,
            flags: if i % 50 == 0 { DocRef::TRUNCATED } else { 0 },
            ..DocRef::default()
        })
        .collect()
}

fn per_sample(agg: &mut Aggregator, docs: &[DocRef]) {
    for d in docs {
        let name = DATASETS[d.dataset as usize];
        agg.record(name, "samples_seen", Kind::Sum, 1.0).unwrap();
        agg.record(name, "tokens_seen", Kind::Sum, d.len as f64)
            .unwrap();
        agg.record(name, "seq_len", Kind::Distribution, d.doc_len as f64)
            .unwrap();
        agg.record(name, "epoch", Kind::Max, d.epoch as f64)
            .unwrap();
        agg.record(
            name,
            "samples_truncated",
            Kind::Sum,
            (d.flags != 0) as u8 as f64,
        )
        .unwrap();
        agg.record(name, "samples_failed", Kind::Sum, 0.0).unwrap();
    }
}

fn per_batch(agg: &mut Aggregator, docs: &[DocRef], names: &[String]) {
    for batch in docs.chunks(BATCH) {
        let mut partial = Aggregator::new(agg.config().clone());
        standard_metrics(batch, names, &mut partial).unwrap();
        agg.merge(&partial).unwrap();
    }
}

/// Time, collective calls and bytes of one steady-state reduce on rank 0 of a world of 4.
fn reduce_once() -> (Duration, u64, u64) {
    let ranks = in_process(4, Duration::from_secs(30));
    let names: Vec<String> = DATASETS.iter().map(|s| s.to_string()).collect();
    let docs = docs();
    let results: Vec<(Duration, u64, u64)> = std::thread::scope(|s| {
        let hs: Vec<_> = ranks
            .into_iter()
            .enumerate()
            .map(|(r, rank)| {
                let (names, docs) = (&names, &docs);
                s.spawn(move || {
                    let c = Counting::new(rank);
                    let mut agg = Aggregator::default();
                    per_batch(&mut agg, &docs[r * 1000..r * 1000 + 1000], names);
                    agg.reduce(&c).unwrap(); // agree on the names once
                    let before = c.counts();
                    let t = Instant::now();
                    black_box(agg.reduce(&c).unwrap());
                    let after = c.counts();
                    (
                        t.elapsed(),
                        after.total() - before.total(),
                        after.bytes - before.bytes,
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    results[0]
}

fn benches(c: &mut Criterion) {
    let docs = docs();
    let names: Vec<String> = DATASETS.iter().map(|s| s.to_string()).collect();
    let mut g = c.benchmark_group("metrics");
    g.throughput(Throughput::Elements(SAMPLES as u64 * 6));
    g.bench_function("per_sample_updates", |b| {
        b.iter(|| {
            let mut agg = Aggregator::default();
            per_sample(&mut agg, &docs);
            agg
        })
    });
    g.bench_function("per_batch_partials", |b| {
        b.iter(|| {
            let mut agg = Aggregator::default();
            per_batch(&mut agg, &docs, &names);
            agg
        })
    });
    g.finish();
    c.bench_function("reduce_3x6_world4", |b| b.iter(reduce_once));

    println!("\nmeasured in this run:");
    let rate = |f: &dyn Fn()| {
        let t = Instant::now();
        for _ in 0..20 {
            f();
        }
        20.0 * SAMPLES as f64 * 6.0 / t.elapsed().as_secs_f64()
    };
    let ps = rate(&|| {
        let mut agg = Aggregator::default();
        per_sample(&mut agg, &docs);
        black_box(agg);
    });
    let pb = rate(&|| {
        let mut agg = Aggregator::default();
        per_batch(&mut agg, &docs, &names);
        black_box(agg);
    });
    println!("  per-sample path      {:6.1} M metric updates/s", ps / 1e6);
    println!(
        "  per-batch partials   {:6.1} M metric updates/s (batches of {BATCH})",
        pb / 1e6
    );
    let best = (0..10).map(|_| reduce_once()).min_by_key(|r| r.0).unwrap();
    println!(
        "  one reduce, 3 datasets x 6 metrics, world of 4: {:.3} ms, {} collectives, {} bytes per rank",
        best.0.as_secs_f64() * 1e3,
        best.1,
        best.2
    );
    #[cfg(feature = "wgpu")]
    device_sketch::print();
}

/// Device sketches on wgpu: values/s of `device_sketches` over values already on the device.
#[cfg(feature = "wgpu")]
mod device_sketch {
    use std::time::Instant;

    use shardflow::gpu::WgpuContext;
    use shardflow::metrics::Mapping;
    use shardflow::metrics::device::device_sketches;
    use wgpu::util::DeviceExt;

    /// Values binned per call.
    const VALUES: usize = 16 << 20;
    /// Datasets they belong to.
    const DATASETS: usize = 4;

    /// Loss-like values (log-normal around 2, a spread of about 20x) as f32 bits, and each one's
    /// dataset, spread pseudo-randomly.
    fn inputs() -> (Vec<u32>, Vec<u32>) {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        (0..VALUES)
            .map(|_| {
                // A sum of 4 uniforms: roughly normal, mean 2, sd about 0.58.
                let z: f32 = (0..4).map(|_| next() as f32 / (1u64 << 31) as f32).sum();
                let v = (1.5 * (z - 2.0)).exp() * 2.0;
                (v.to_bits(), next() % DATASETS as u32)
            })
            .unzip()
    }

    pub fn print() {
        let ctx = match WgpuContext::new() {
            Ok(ctx) => ctx,
            Err(e) => {
                println!("  device sketch: no wgpu adapter, nothing to measure: {e}");
                return;
            }
        };
        let (values, owners) = inputs();
        let storage = |data: &[u32]| {
            ctx.device()
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: None,
                    contents: bytemuck::cast_slice(data),
                    usage: wgpu::BufferUsages::STORAGE,
                })
        };
        let (v, o) = (storage(&values), storage(&owners));
        let names: Vec<String> = (0..DATASETS).map(|d| format!("d{d}")).collect();
        let map = Mapping::new(0.01);
        let run = || device_sketches(&ctx, &map, &v, &o, VALUES, &names).unwrap();
        let first = run();
        assert_eq!(first.iter().map(|s| s.count).sum::<u64>(), VALUES as u64);
        // Best of 5 by wall time, and by the process's CPU time (lavapipe's threads included),
        // which another load on the machine disturbs less.
        let (mut wall, mut cpu) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            let (t, c) = (Instant::now(), cpu_seconds());
            std::hint::black_box(run());
            wall = wall.min(t.elapsed().as_secs_f64());
            cpu = cpu.min(cpu_seconds() - c);
        }
        println!(
            "  device sketch on {}: {:.1} M values/s, {:.1} M values per CPU second \
             ({VALUES} values, {DATASETS} datasets, alpha 0.01, best of 5: {:.0} ms, {:.0} CPU ms)",
            ctx.name(),
            VALUES as f64 / wall / 1e6,
            VALUES as f64 / cpu / 1e6,
            wall * 1e3,
            cpu * 1e3
        );
    }

    /// User and system CPU time of the process so far, every thread included.
    fn cpu_seconds() -> f64 {
        // SAFETY: getrusage writes the zeroed struct it is given.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut usage);
            usage
        };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        secs(usage.ru_utime) + secs(usage.ru_stime)
    }
}

criterion_group!(metric_benches, benches);

fn main() {
    // Before any thread starts: keeps Mesa's adapter probe quiet without XDG_RUNTIME_DIR.
    #[cfg(feature = "wgpu")]
    shardflow::gpu::quiet_wayland_probe();
    metric_benches();
    Criterion::default().configure_from_args().final_summary();
}
