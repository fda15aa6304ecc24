//! Test corpora whose token ids say where they come from, and the command's runners.
#![allow(dead_code)]

#[cfg(feature = "ingest")]
pub mod bpe;
pub mod cmd;
pub mod conformance;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod device_suite;
#[cfg(feature = "wgpu")]
pub mod gpu;

use std::path::Path;

use shardflow::loader::Source;
use shardflow::{Dataset, Dtype, IndexedWriter};

/// What a device test needs (an adapter, NVRTC, a CUDA device), as `probe` found it; without it
/// the test is skipped with `what` and the reason printed, unless `require` is set to `1` (CI),
/// which makes it fail. The one skip-or-require rule of every device test.
pub fn available<R, E: std::fmt::Display>(
    require: &str,
    what: &str,
    probe: Result<R, E>,
) -> Option<R> {
    match probe {
        Ok(found) => Some(found),
        Err(e) if std::env::var(require).as_deref() == Ok("1") => {
            panic!("{require}=1, but {what}: {e}")
        }
        Err(e) => {
            eprintln!("skipped ({what}): {e}");
            None
        }
    }
}

/// Token j of sample s of dataset d.
pub fn token(d: usize, s: usize, j: usize) -> i64 {
    (d * 100_000 + s * 100 + j) as i64
}

/// Writes dataset `d` at `dir/name` with the given sample lengths (each sample one document).
pub fn write_dataset(dir: &Path, name: &str, d: usize, lengths: &[usize]) -> Dataset {
    let prefix = dir.join(name);
    let mut w = IndexedWriter::create(&prefix, Some(Dtype::I32)).unwrap();
    for (s, &len) in lengths.iter().enumerate() {
        let ids: Vec<i64> = (0..len).map(|j| token(d, s, j)).collect();
        w.add_sequence(&ids).unwrap();
        w.end_document().unwrap();
    }
    w.finish().unwrap();
    Dataset::open(&[&prefix]).unwrap()
}

/// Lengths 1..=max cycling with a stride, so rows differ.
pub fn lengths(n: usize, max: usize, salt: usize) -> Vec<usize> {
    (0..n).map(|s| 1 + (s * 7 + salt * 3) % max).collect()
}

/// Three datasets `web` (60 samples), `code` (25), `books` (40) with weights 3:1:2.
pub fn mixture(dir: &Path) -> Vec<Source> {
    vec![
        Source::new(
            "web",
            write_dataset(dir, "web", 0, &lengths(60, 30, 0)),
            3.0,
        ),
        Source::new(
            "code",
            write_dataset(dir, "code", 1, &lengths(25, 45, 1)),
            1.0,
        ),
        Source::new(
            "books",
            write_dataset(dir, "books", 2, &lengths(40, 70, 2)),
            2.0,
        ),
    ]
}
