//! The MPI engine under `mpiexec -n N` (a world of one under plain `cargo test`): the collective
//! calls, and the metric reduce, which must equal the in-process world's on the same per-rank
//! data, in 3 collectives in the steady state, and fail on every rank when one rank's sketch
//! settings differ.

use std::time::Duration;

use shardflow::collective::{Collective, Counting, ReduceOp, in_process};
use shardflow::loader::{DatasetConfig, LoaderConfig};
use shardflow::metrics::{Aggregator, Kind, MetricsConfig, Report};
use shardflow::shard::synthetic::SyntheticCorpus;
use shardflow_mpi::MpiCollective;

/// Rank `r`'s metrics: integers and halves, so every sum is exact in any order.
fn record(agg: &mut Aggregator, r: usize) {
    agg.record("web", "tokens", Kind::Sum, (r as f64 + 1.0) * 10.0)
        .unwrap();
    agg.record("web", "longest", Kind::Max, 100.0 + r as f64)
        .unwrap();
    agg.record("code", "shortest", Kind::Min, 5.0 - r as f64)
        .unwrap();
    for j in 0..100 {
        let v = ((r * 7 + j) % 50) as f64 + 0.5;
        agg.record("web", "seq_len", Kind::Distribution, v).unwrap();
        agg.record("code", "loss", Kind::Mean, v / 2.0).unwrap();
    }
    // Categories that only some ranks have: the first reduce agrees on the names.
    agg.record_category("web", "lang", &format!("lang{}", r % 3))
        .unwrap();
}

/// The same world's reduce over in-process ranks (threads), the reference.
fn reference(world: usize) -> Report {
    let ranks = in_process(world, Duration::from_secs(30));
    let reports: Vec<Report> = std::thread::scope(|s| {
        let hs: Vec<_> = ranks
            .into_iter()
            .enumerate()
            .map(|(r, c)| {
                s.spawn(move || {
                    let mut agg = Aggregator::new(MetricsConfig::default());
                    record(&mut agg, r);
                    agg.reduce(&c).unwrap().report()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    reports.into_iter().next().unwrap()
}

/// A loader's data metrics after `steps` batches of rank `rank` of `world`, over the built-in
/// corpus in `dir`.
fn loader_metrics(dir: &std::path::Path, rank: usize, world: usize) -> Aggregator {
    let config = LoaderConfig::new(
        ["web", "code", "books"]
            .iter()
            .map(|n| DatasetConfig::new(dir.join(n)))
            .collect(),
    )
    .with_batch_size(4)
    .with_seed(3)
    .with_workers(1);
    let mut loader = config.init::<i32>(rank, world).unwrap();
    for _ in 0..25 {
        loader.next().unwrap().unwrap();
    }
    loader.metrics().clone()
}

fn main() {
    let mpi = Counting::new(MpiCollective::world().expect("MPI initializes"));
    let (rank, world) = (mpi.rank(), mpi.world());

    // The calls themselves.
    let mut f = [rank as f64, -(rank as f64), 1.5];
    mpi.all_reduce_f64(&mut f, ReduceOp::Sum).unwrap();
    let n = world as f64;
    assert_eq!(f, [n * (n - 1.0) / 2.0, -n * (n - 1.0) / 2.0, 1.5 * n]);
    let mut f = [rank as f64, -(rank as f64)];
    mpi.all_reduce_f64(&mut f, ReduceOp::Max).unwrap();
    assert_eq!(f, [n - 1.0, 0.0]);
    let mut u = [rank as u64 + 1, 7];
    mpi.all_reduce_u64(&mut u, ReduceOp::Min).unwrap();
    assert_eq!(u, [1, 7]);
    let mut u = [u64::MAX, rank as u64];
    mpi.all_reduce_u64(&mut u, ReduceOp::Sum).unwrap();
    assert_eq!(u[1], (world * (world - 1) / 2) as u64);
    let mine = vec![rank as u8; rank + 1];
    let all = mpi.all_gather_bytes(&mine).unwrap();
    for (r, bytes) in all.iter().enumerate() {
        assert_eq!(bytes, &vec![r as u8; r + 1], "rank {r}'s bytes");
    }
    assert_eq!(
        mpi.all_gather_bytes(&[]).unwrap(),
        vec![Vec::<u8>::new(); world]
    );
    mpi.barrier().unwrap();

    // The metric reduce equals the in-process world's, then costs 3 collectives (the header,
    // the SUM and the MAX buffers).
    let mut agg = Aggregator::new(MetricsConfig::default());
    record(&mut agg, rank);
    let before = mpi.counts().total();
    let first = agg.reduce(&mpi).unwrap().report();
    let first_calls = mpi.counts().total() - before;
    assert_eq!(
        first,
        reference(world),
        "rank {rank}: MPI reduce = in-process reduce"
    );
    let before = mpi.counts().total();
    let again = agg.reduce(&mpi).unwrap().report();
    assert_eq!(
        mpi.counts().total() - before,
        3,
        "steady state: three collectives"
    );
    assert_eq!(again, first);

    // A real loader's data metrics: every rank loads its slice, MPI reduces, and the totals
    // equal those of the same world run as threads of one process.
    let dir = std::env::temp_dir().join(format!("shardflow-mpi-{}-{rank}", std::process::id()));
    let mut corpus = SyntheticCorpus::demo();
    for d in &mut corpus.datasets {
        d.documents /= 10;
    }
    std::fs::create_dir_all(&dir).unwrap();
    corpus.write(&dir, |_| {}).unwrap();
    let over_mpi = loader_metrics(&dir, rank, world)
        .reduce(&mpi)
        .unwrap()
        .report();
    let ranks = in_process(world, Duration::from_secs(60));
    let threads: Report = std::thread::scope(|s| {
        let hs: Vec<_> = ranks
            .into_iter()
            .enumerate()
            .map(|(r, c)| {
                let dir = &dir;
                s.spawn(move || loader_metrics(dir, r, world).reduce(&c).unwrap().report())
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).next().unwrap()
    });
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        over_mpi, threads,
        "rank {rank}: loader metrics over MPI = in one process"
    );
    let samples: f64 = ["web", "code", "books"]
        .iter()
        .filter_map(|d| over_mpi.number(d, "samples_seen"))
        .sum();
    assert_eq!(samples, (25 * 4 * world) as f64);

    // One rank with other sketch settings: an error on every rank, naming it.
    if world > 1 {
        let alpha = if rank == world - 1 { 0.0100001 } else { 0.01 };
        let mut odd = Aggregator::new(MetricsConfig {
            alpha,
            ..Default::default()
        });
        odd.record("web", "tokens", Kind::Sum, 1.0).unwrap();
        let err = odd.reduce(&mpi).unwrap_err().to_string();
        assert!(
            err.contains(&format!("rank {} (mapping", world - 1)),
            "rank {rank}: {err}"
        );
    }
    mpi.barrier().unwrap();
    println!(
        "rank {rank} of {world}: MPI collectives and the metric reduce agree with the \
         in-process world (first reduce {first_calls} collectives, then 3)"
    );
}
