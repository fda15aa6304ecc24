//! The metrics history at scale: writes 10 M per-sample rows (a loss per sample, 64 samples a
//! step) through a `HistoryWriter` with the default buffer, printing the process's resident
//! memory every million rows (flat: the buffer is bounded, parts go to disk), the write rate,
//! then summarizes the 10 M rows with `--top 10` by streaming over the row groups.
//!
//! `cargo bench --bench history` (`-- --rows N` for another count).

use std::time::Instant;

use shardflow::collate::DocRef;
use shardflow::history::{HistoryConfig, HistoryFiles, HistoryWriter, summarize};

/// Resident memory of this process in MiB (Linux; 0 elsewhere).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rows: u64 = args
        .iter()
        .position(|a| a == "--rows")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(10_000_000);
    let dir = tempfile::tempdir().unwrap();
    let config = HistoryConfig::new(dir.path(), "bench", 0);
    let max_rows = config.max_rows;
    let mut w = HistoryWriter::create(config).unwrap();
    let names = ["web".to_string(), "code".to_string(), "books".to_string()];
    let per_step = 64u64;
    let start = Instant::now();
    let mut docs = vec![DocRef::default(); per_step as usize];
    let mut values = vec![0.0; per_step as usize];
    let mut largest_buffer = 0;
    println!("history: {rows} sample rows, {per_step} per step, parts of {max_rows} rows");
    println!("{:>12} {:>10} {:>14}", "rows", "RSS MiB", "buffer bytes");
    for step in 0..rows / per_step {
        for (i, (d, v)) in docs.iter_mut().zip(values.iter_mut()).enumerate() {
            let sample = step * per_step + i as u64;
            *d = DocRef {
                dataset: (sample % 3) as u32,
                sample,
                epoch: step / 10_000,
                len: 1,
                ..DocRef::default()
            };
            *v = ((sample * 2_654_435_761) % 10_007) as f64 / 1000.0;
        }
        w.record_batch_values(step, &docs, &names, "loss", &values)
            .unwrap();
        largest_buffer = largest_buffer.max(w.buffered_bytes());
        let written = (step + 1) * per_step;
        if written % 1_000_000 < per_step {
            println!(
                "{written:>12} {:>10.1} {:>14}",
                rss_mib(),
                w.buffered_bytes()
            );
        }
    }
    w.flush().unwrap();
    let seconds = start.elapsed().as_secs_f64();
    let bytes: u64 = std::fs::read_dir(dir.path().join("samples"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    println!(
        "wrote {rows} rows in {seconds:.2} s: {:.2} M rows/s, {:.1} MB on disk ({:.2} bytes/row), \
         largest buffer {largest_buffer} bytes",
        rows as f64 / seconds / 1e6,
        bytes as f64 / 1e6,
        bytes as f64 / rows as f64
    );
    let start = Instant::now();
    let s = summarize(dir.path(), HistoryFiles::Parts, Some((10, "loss"))).unwrap();
    println!(
        "summarized {} rows with --top 10 in {:.2} s ({:.2} M rows/s), RSS {:.1} MiB; top loss {:?}",
        s.samples,
        start.elapsed().as_secs_f64(),
        s.samples as f64 / start.elapsed().as_secs_f64() / 1e6,
        rss_mib(),
        s.top.first().and_then(|r| r.value)
    );
}
