//! The multi-process demo with MPI: `mpiexec -n 2 target/debug/examples/mpi_demo`.
//!
//! Every rank agrees on the config with the others (an all-gather of the configs over MPI),
//! loads its slice of the same global batches from the built-in corpus, and reduces its data
//! metrics over MPI. Rank 0 then runs the same world as threads of one process and checks that
//! the reduced totals are identical.

use std::time::Duration;

use shardflow::collective::{Collective, RunSpec, World, agree, in_process};
use shardflow::loader::{DatasetConfig, LoaderConfig};
use shardflow::metrics::Report;
use shardflow::shard::synthetic::SyntheticCorpus;
use shardflow_mpi::MpiCollective;

const STEPS: usize = 40;

fn config(dir: &std::path::Path) -> LoaderConfig {
    LoaderConfig::new(
        [("web", 0.5), ("code", 0.3), ("books", 0.2)]
            .iter()
            .map(|(n, w)| DatasetConfig::new(dir.join(n)).with_weight(*w))
            .collect(),
    )
    .with_batch_size(8)
    .with_seed(2026)
    .with_workers(1)
}

/// Rank `rank`'s data metrics after `STEPS` batches, reduced through `collective`.
fn run(
    config: &LoaderConfig,
    rank: usize,
    world: usize,
    collective: &dyn Collective,
) -> shardflow::Result<Report> {
    let mut loader = config.init::<i32>(rank, world)?;
    for _ in 0..STEPS {
        loader.next().expect("an endless stream")?;
    }
    Ok(loader.metrics_mut().reduce(collective)?.report())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mpi = MpiCollective::world()?;
    let (rank, world) = (mpi.rank(), mpi.world());
    let env = World::from_env()?;
    assert_eq!(
        (env.rank, env.size),
        (rank, world),
        "the launcher and MPI agree"
    );
    // Each rank writes its own copy of the deterministic corpus (no shared disk is assumed).
    let dir =
        std::env::temp_dir().join(format!("shardflow-mpi-demo-{}-{rank}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    SyntheticCorpus::demo().write(&dir, |_| {})?;
    // The paths differ per rank, so the agreed config names the corpus by its datasets only.
    let spec = RunSpec::new(&config(std::path::Path::new("corpus")).stream_spec(), 2026)?;
    agree(&mpi, &spec)?;
    let config = config(&dir);
    let reduced = run(&config, rank, world, &mpi)?;
    println!(
        "rank {rank} of {world}: run {}, metrics reduced over MPI",
        spec.run_name
    );
    if rank == 0 {
        let threads = in_process(world, Duration::from_secs(60));
        let single: Vec<Report> = std::thread::scope(|s| {
            let hs: Vec<_> = threads
                .into_iter()
                .enumerate()
                .map(|(r, c)| {
                    let config = &config;
                    s.spawn(move || run(config, r, world, &c))
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("a rank thread"))
                .collect::<shardflow::Result<Vec<_>>>()
        })?;
        if reduced != single[0] {
            return Err("the MPI-reduced metrics differ from the single-process totals".into());
        }
        for (d, metrics) in &reduced.datasets {
            let n = |m: &str| reduced.number(d, m).unwrap_or(0.0);
            println!(
                "  {d:<6} samples {:>6}  tokens {:>9}  (x{} metrics)",
                n("samples_seen"),
                n("tokens_seen"),
                metrics.len()
            );
        }
        println!("MPI-reduced metrics equal the single-process totals of {world} ranks");
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
