//! Runs the host loader over the demo corpus and prints a few batches and the stats.
//!
//! `cargo run --release --example loader_smoke`

use shardflow::collate::{CollateConfig, Padding};
use shardflow::loader::{LoaderBuilder, Source};
use shardflow::order::OrderConfig;
use shardflow::shard::synthetic::SyntheticCorpus;

fn main() -> shardflow::Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let corpus = SyntheticCorpus::demo();
    let written = corpus.write(dir.path(), |_| {})?;
    let sources: Vec<Source> = written
        .iter()
        .zip([0.5, 0.3, 0.2])
        .map(|(s, w)| Source::open(&s.prefix, w))
        .collect::<shardflow::Result<_>>()?;
    let loader = LoaderBuilder::<i32>::new(sources)
        .with_order(OrderConfig {
            local_batch: 8,
            ..Default::default()
        })
        .with_collate(CollateConfig {
            seq_len: 1024,
            padding: Padding::Multiple(8),
            ..Default::default()
        })
        .with_workers(2)
        .build_host()?;
    let mut loader = loader;
    for _ in 0..3 {
        let b = loader.next().unwrap()?;
        println!(
            "batch {}: {}x{}, lengths {:?}",
            b.step,
            b.rows,
            b.width,
            &b.lengths[..]
        );
    }
    let n = loader.by_ref().take(500).count();
    println!("then {n} more; stats {:?}", loader.stats());
    Ok(())
}
