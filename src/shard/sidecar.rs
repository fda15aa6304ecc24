//! Files that lie beside shards and describe their samples for the order: class files and range
//! partition files.
//!
//! | file | format | becomes |
//! |---|---|---|
//! | `PREFIX.classes` beside `PREFIX.idx` | one little-endian u32 per sequence, nothing else (numpy: `classes.astype("<u4").tofile(path)`) | [`crate::order::Classes`] (`Classes::new`) |
//! | a range file | JSON: per dataset name, every rank's `[start, end)` ranges ([`RangeFile`]) | [`crate::order::RankRanges`] ([`RangeFile::ranges`]) |
//!
//! The files are read here, into plain data; [`crate::order`] builds its partitions from that
//! data and reads no file itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::Dataset;
use crate::error::{Error, Result};

/// The extension of a class file beside a shard: `web.idx` has `web.classes`.
pub const CLASS_EXTENSION: &str = "classes";

/// The class file beside the shard file `shard`: `data/web.idx` has `data/web.classes`.
pub fn class_file_beside(shard: &Path) -> PathBuf {
    shard.with_extension(CLASS_EXTENSION)
}

/// Reads a class file: one little-endian u32 per sequence, nothing else.
///
/// # Errors
///
/// [`Error::Io`] naming the file; [`Error::BadClassFile`] naming it when its length is not a
/// multiple of 4.
pub fn read_class_file(path: &Path) -> Result<Vec<u32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, "read", e))?;
    if !bytes.len().is_multiple_of(4) {
        return Err(Error::BadClassFile {
            path: path.to_path_buf(),
            offset: (bytes.len() / 4 * 4) as u64,
            reason: format!(
                "a class file holds one little-endian u32 per sequence, but its {} bytes are \
                 not a multiple of 4",
                bytes.len()
            ),
        });
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("chunks_exact gives 4 bytes")))
        .collect())
}

/// The classes in the class files beside a dataset's shards ([`class_file_beside`]),
/// concatenated in shard order: one class per sample of the dataset.
///
/// # Errors
///
/// A missing or unreadable file, named; [`Error::BadClassFile`] for a file whose count of
/// classes is not its shard's count of sequences.
pub fn read_classes_beside(data: &Dataset) -> Result<Vec<u32>> {
    let mut all = Vec::with_capacity(data.len());
    for shard in data.shards() {
        let path = class_file_beside(shard.path());
        let classes = read_class_file(&path)?;
        if classes.len() != shard.len() {
            return Err(Error::BadClassFile {
                offset: 4 * classes.len().min(shard.len()) as u64,
                reason: format!(
                    "{} classes for the {} sequences of {}",
                    classes.len(),
                    shard.len(),
                    shard.path().display()
                ),
                path,
            });
        }
        all.extend_from_slice(&classes);
    }
    Ok(all)
}

/// A range partition file: per dataset name, every rank's ranges.
///
/// ```json
/// {"allow_gaps": false, "datasets": {"web": [[[0, 600]], [[600, 1000]]],
///                                     "code": [[[0, 40], [80, 100]], [[40, 80]]]}}
/// ```
///
/// [`RangeFile::ranges`] gives one dataset's ranges as the order's [`crate::order::RankRanges`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeFile {
    /// Applies to every dataset of the file.
    #[serde(default)]
    pub allow_gaps: bool,
    /// Per dataset, per rank, `[start, end)` ranges.
    pub datasets: BTreeMap<String, Vec<Vec<[u64; 2]>>>,
}

impl RangeFile {
    /// Reads a range partition file (JSON, as above).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming the file; [`Error::Config`] naming it and saying what does not
    /// parse.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "read", e))?;
        serde_json::from_str(&text).map_err(|e| {
            Error::Config(format!(
                "range partition file {}: {e} (expected {{\"allow_gaps\": false, \"datasets\": \
                 {{\"NAME\": [[[start, end], ...] per rank]}}}})",
                path.display()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_file_reads_little_endian_and_refuses_a_partial_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.classes");
        std::fs::write(&path, [1, 0, 0, 0, 0, 1, 0, 0]).unwrap();
        assert_eq!(read_class_file(&path).unwrap(), [1, 256]);
        std::fs::write(&path, [1, 0, 0, 0, 7]).unwrap();
        let e = read_class_file(&path).unwrap_err();
        assert!(matches!(&e, Error::BadClassFile { offset: 4, .. }), "{e:?}");
        assert_eq!(
            class_file_beside(Path::new("data/web.idx")),
            Path::new("data/web.classes")
        );
    }

    #[test]
    fn a_range_file_names_itself_when_it_does_not_parse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ranges.json");
        std::fs::write(&path, r#"{"datasets": {"web": [[[0, 6]], [[6, 10]]]}}"#).unwrap();
        let file = RangeFile::read(&path).unwrap();
        assert_eq!(file.datasets["web"], vec![vec![[0, 6]], vec![[6, 10]]]);
        assert!(!file.allow_gaps);
        std::fs::write(&path, r#"{"ranks": []}"#).unwrap();
        let e = RangeFile::read(&path).unwrap_err().to_string();
        assert!(e.contains("ranges.json") && e.contains("allow_gaps"), "{e}");
    }
}
