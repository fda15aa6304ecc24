//! Planning throughput: rows planned per second for a three-dataset shuffled mixture, as one
//! rank of eight takes its rows (it still draws the whole global batch) and as the whole global
//! batch is mapped.
//!
//! `cargo bench --bench order`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group};
use shardflow::order::{DatasetSpec, OrderConfig, Planner, Shuffle};

const STEPS: u64 = 200;

fn planner(shuffle: Shuffle, rank: usize) -> Planner {
    let plan = OrderConfig {
        seed: 1,
        shuffle,
        world: 8,
        rank,
        local_batch: 64,
        ..Default::default()
    }
    .init(vec![
        DatasetSpec::new("web", 40_000_000, 0.6),
        DatasetSpec::new("code", 5_000_000, 0.3),
        DatasetSpec::new("books", 200_000, 0.1),
    ])
    .unwrap();
    Planner::new(Arc::new(plan))
}

fn run(p: &mut Planner, global: bool, rows: &mut Vec<shardflow::order::Row>) {
    for _ in 0..STEPS {
        if global {
            p.next_global(rows)
        } else {
            p.next_rows(rows)
        };
        black_box(&rows[..]);
    }
}

fn benches(c: &mut Criterion) {
    let global_rows = STEPS * 8 * 64;
    let mut g = c.benchmark_group("plan_mixture_3_datasets");
    g.sample_size(20);
    let mut rows = Vec::new();
    for (name, shuffle) in [
        ("full", Shuffle::Full),
        ("block4096", Shuffle::Block(4096)),
        ("none", Shuffle::None),
    ] {
        g.throughput(Throughput::Elements(global_rows));
        g.bench_function(format!("{name}/global_batch"), |b| {
            let mut p = planner(shuffle, 0);
            b.iter(|| run(&mut p, true, &mut rows))
        });
        g.bench_function(format!("{name}/one_rank_of_8"), |b| {
            let mut p = planner(shuffle, 3);
            b.iter(|| run(&mut p, false, &mut rows))
        });
    }
    g.finish();

    println!("\nrows planned per second, measured in this run (world 8, local batch 64):");
    for (name, shuffle) in [
        ("full", Shuffle::Full),
        ("block:4096", Shuffle::Block(4096)),
        ("none", Shuffle::None),
    ] {
        for (what, global) in [("global batch", true), ("one rank", false)] {
            let mut p = planner(shuffle, 3);
            let t = Instant::now();
            for _ in 0..20 {
                run(&mut p, global, &mut rows);
            }
            let s = t.elapsed().as_secs_f64();
            let rank_rows = if global { global_rows } else { global_rows / 8 };
            println!(
                "  shuffle {name:<10} {what:<12} {:7.1} M global rows/s drawn, {:7.1} M rows/s mapped",
                20.0 * global_rows as f64 / s / 1e6,
                20.0 * rank_rows as f64 / s / 1e6
            );
        }
    }
}

criterion_group!(order_benches, benches);

fn main() {
    order_benches();
    Criterion::default().configure_from_args().final_summary();
}
