//! Times `BurnLoader::iter()` start (to the first batch) on a corpus of 10^6 sequences:
//! `cargo run --release --all-features --example burn_iter_start`. A figure, not a test:
//! timings are never asserted.

#[cfg(feature = "burn")]
fn main() -> shardflow::Result<()> {
    use burn::data::dataloader::DataLoader;
    use burn::tensor::Device;
    use shardflow::burn::{BurnBatch, BurnLoader};
    use shardflow::loader::{DatasetConfig, LoaderConfig};

    let dir = tempfile::tempdir()
        .map_err(|e| shardflow::Error::io(std::path::Path::new("tempdir"), "create", e))?;
    let prefix = dir.path().join("big");
    let mut w = shardflow::IndexedWriter::create(&prefix, Some(shardflow::Dtype::U16))?;
    for s in 0..1_000_000i64 {
        w.add_sequence(&[s % 50_000, 1, 2, 3])?;
        w.end_document()?;
    }
    w.finish()?;
    let config = LoaderConfig::new(vec![DatasetConfig::new(&prefix)])
        .with_batch_size(8)
        .with_epochs(1.0)
        .with_workers(1);
    let loader = BurnLoader::new(config, 0, 1, &Device::flex(), |b: BurnBatch| b.rows)?;
    let mut times = Vec::new();
    for _ in 0..9 {
        let t = std::time::Instant::now();
        let rows = loader
            .iter()
            .next()
            .expect("a batch")
            .expect("a good batch");
        times.push(t.elapsed());
        assert_eq!(rows, 8);
    }
    times.sort();
    println!(
        "BurnLoader iter() to first batch, 10^6 sequences: median {:?} (min {:?}, max {:?})",
        times[4], times[0], times[8]
    );
    Ok(())
}

#[cfg(not(feature = "burn"))]
fn main() {
    eprintln!("burn_iter_start needs the feature `burn`");
}
