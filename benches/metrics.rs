//! Metric throughput and reduce cost.
//!
//! - per-sample path: `Aggregator::record` for the six standard metrics of every sample;
//! - per-batch partials: the standard metric transform over a batch's document pieces (as loader
//!   workers run it), merged into a running aggregator;
//! - one fused reduce of 3 datasets x 6 metrics over an in-process world of 4: time, collective
//!   calls and bytes per rank.
//!
//! `cargo bench --bench metrics`

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
}

criterion_group!(metric_benches, benches);

fn main() {
    metric_benches();
    Criterion::default().configure_from_args().final_summary();
}
