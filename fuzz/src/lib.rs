//! What the fuzz targets share: a scratch directory per process, the fixture datasets that
//! checkpoints and `bench` arguments run against, and the input encodings.

use std::path::Path;
use std::sync::OnceLock;

use shardflow::loader::Source;
use shardflow::{Dtype, IndexedWriter};

/// A directory for this process's files, removed when the process ends normally.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a scratch directory"))
        .path()
}

/// Token j of sample s of dataset d (as the tests' corpora).
fn token(d: usize, s: usize, j: usize) -> i64 {
    (d * 100_000 + s * 100 + j) as i64
}

/// The tests' mixture: `web` (60 samples), `code` (25), `books` (40), weights 3:1:2, written
/// once per process. Checkpoints in the seed corpus come from loaders over it.
pub fn mixture() -> &'static [Source] {
    static SOURCES: OnceLock<Vec<Source>> = OnceLock::new();
    SOURCES.get_or_init(|| {
        let dir = scratch().join("mixture");
        std::fs::create_dir_all(&dir).expect("the fixture directory");
        [
            ("web", 60, 30, 3.0),
            ("code", 25, 45, 1.0),
            ("books", 40, 70, 2.0),
        ]
        .iter()
        .enumerate()
        .map(|(d, &(name, n, max, weight))| {
            let prefix = dir.join(name);
            let mut w = IndexedWriter::create(&prefix, Some(Dtype::I32)).expect("writer");
            for s in 0..n {
                let len = 1 + (s * 7 + d * 3) % max;
                let ids: Vec<i64> = (0..len).map(|j| token(d, s, j)).collect();
                w.add_sequence(&ids).expect("a sequence");
                w.end_document().expect("a document");
            }
            w.finish().expect("the fixture shard");
            Source::open(&prefix, weight).expect("the fixture opens")
        })
        .collect()
    })
}

/// An `idx` target input: a little-endian u16 length of the `.bin`, the `.bin`, the `.idx`.
pub fn split_pair(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 2 {
        return (&[], data);
    }
    let n = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    (&data[2..2 + n], &data[2 + n..])
}

/// A `cli_args` target input: arguments separated by NUL bytes.
pub fn split_args(data: &[u8]) -> Vec<String> {
    data.split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}
