//! Megatron-LM indexed datasets: `PREFIX.idx` (header, lengths, pointers, document indices) and
//! `PREFIX.bin` (the raw ids), both memory-mapped and validated on open.
//!
//! The `.idx` layout, all little-endian:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 9 | magic `MMIDIDX\0\0` |
//! | 9 | 8 | u64 version, 1 |
//! | 17 | 1 | u8 dtype code (1 u8, 2 i8, 3 i16, 4 i32, 5 i64, 6 f64, 7 f32, 8 u16) |
//! | 18 | 8 | u64 sequence count N |
//! | 26 | 8 | u64 document index count D (documents + 1) |
//! | 34 | 4N | i32 sequence lengths, in tokens |
//! | 34 + 4N | 8N | i64 byte pointers into `.bin` |
//! | 34 + 12N | 8D | i64 document indices: sequence boundaries, first 0, last N |
//!
//! Bytes after the document indices (Megatron's multimodal sequence modes) are allowed; when they
//! are shardflow's integrity [trailer](super::trailer), the `.bin` is checked against it. The i64
//! arrays are usually not 8-aligned, so every read here is an unaligned little-endian read.

use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::dtype::{CodeMeaning, Dtype, TokenSlice};
use super::trailer::{Trailer, TrailerError, sample_hash};
use super::{Shard, map_file};
use crate::atomic::{Recovery, interrupted_pair, recover_pair};
use crate::error::{Error, Result};
use crate::hash::xxh64;

/// The 9-byte magic that opens every Megatron `.idx`.
pub(crate) const MAGIC: &[u8; 9] = b"MMIDIDX\0\0";
/// The only `.idx` version Megatron writes.
pub(crate) const VERSION: u64 = 1;
/// Header length: magic, version, dtype code, N, D.
pub(crate) const HEADER_LEN: usize = 34;

/// The prefix a user meant: `data/web.idx` and `data/web.bin` name the shard `data/web`
/// (unless `data/web.idx.idx` exists).
pub(crate) fn resolve_prefix(prefix: &Path) -> PathBuf {
    let named_file = prefix.extension().is_some_and(|e| e == "idx" || e == "bin");
    if named_file && !shard_paths(prefix).0.exists() {
        prefix.with_extension("")
    } else {
        prefix.to_path_buf()
    }
}

/// The paths of a shard's two files, from its prefix.
pub(crate) fn shard_paths(prefix: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut s = prefix.as_os_str().to_owned();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".idx"), with(".bin"))
}

/// Puts back the pair of the shard at `prefix` when a killed write left it apart (its `.idx`
/// missing, the old files moved aside, perhaps the new `.bin` in place with its complete `.idx`
/// under a temporary name): rolled back to the old pair or forward to the new one, by renames
/// only, choosing files that validate together (trailer included). [`IndexedShard::open`] and
/// [`IndexedWriter::create`](super::IndexedWriter::create) call it; nothing is ever deleted here.
///
/// # Errors
///
/// [`Error::Io`] when a rename fails (a read-only directory), naming the file.
pub fn recover_shard(prefix: &Path) -> Result<Recovery> {
    let (idx, bin) = shard_paths(prefix);
    recover(&idx, &bin)
}

fn recover(idx: &Path, bin: &Path) -> Result<Recovery> {
    recover_pair(bin, idx, &|bin, idx| {
        IndexedShard::open_pair(idx.to_path_buf(), bin.to_path_buf()).is_ok()
    })
}

/// A memory-mapped, validated Megatron shard.
///
/// # Example
///
/// ```
/// # fn main() -> shardflow::Result<()> {
/// use shardflow::{Dtype, IndexedShard, IndexedWriter, Shard};
/// let dir = tempfile::tempdir().unwrap();
/// let prefix = dir.path().join("tiny");
/// let mut w = IndexedWriter::create(&prefix, Some(Dtype::U16))?;
/// w.add_sequence(&[5u32, 6, 7])?;
/// w.end_document()?;
/// w.finish()?;
///
/// let shard = IndexedShard::open(&prefix)?;
/// let mut ids = [0i32; 3];
/// shard.get(0).unwrap().decode_into(&mut ids)?;
/// assert_eq!(ids, [5, 6, 7]);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct IndexedShard {
    idx_path: PathBuf,
    bin_path: PathBuf,
    idx: Mmap,
    bin: Mmap,
    dtype: Dtype,
    sequences: usize,
    doc_entries: usize,
    trailer: Option<Trailer>,
}

impl IndexedShard {
    /// Opens `PREFIX.idx` and `PREFIX.bin` and validates them. A prefix given with its `.idx`
    /// or `.bin` extension is taken without it.
    ///
    /// # Errors
    ///
    /// Each failure names the file and the byte offset: [`Error::MissingFile`],
    /// [`Error::NotAFile`], [`Error::UnpairedShard`] (one file missing, or a `.bin` that is not
    /// the one the `.idx` was written for), [`Error::BadTrailer`], [`Error::BadMagic`],
    /// [`Error::UnsupportedVersion`], [`Error::UnknownDtype`], [`Error::NotTokenIds`],
    /// [`Error::TruncatedIndex`], [`Error::NegativeLength`], [`Error::BadPointer`],
    /// [`Error::SequenceOutOfBin`], [`Error::BadDocumentIndex`].
    pub fn open(prefix: impl AsRef<Path>) -> Result<Self> {
        let (idx_path, bin_path) = shard_paths(&resolve_prefix(prefix.as_ref()));
        let unpaired = |reason: &str| Error::UnpairedShard {
            idx: idx_path.clone(),
            bin: bin_path.clone(),
            reason: reason.into(),
        };
        let mut not_recovered = None;
        if !idx_path.exists() && interrupted_pair(&bin_path, &idx_path) {
            // A write was killed while its pair was apart: put a whole pair back first.
            not_recovered = recover(&idx_path, &bin_path).err();
        }
        match (idx_path.exists(), bin_path.exists()) {
            (false, true) => {
                return Err(unpaired(&match not_recovered {
                    Some(e) => format!(
                        "the .idx is missing beside an existing .bin: a write was interrupted \
                         and its pair cannot be put back here ({e}); open it once where the \
                         directory is writable, or write the shard again"
                    ),
                    None => "the .idx is missing beside an existing .bin, and no moved-aside or \
                             complete temporary .idx of an interrupted write pairs with it; \
                             write the shard again"
                        .into(),
                }));
            }
            (true, false) => return Err(unpaired("the .bin is missing")),
            _ => {}
        }
        Self::open_pair(idx_path, bin_path)
    }

    /// Opens and validates a given `.idx` and `.bin`, whatever their names.
    fn open_pair(idx_path: PathBuf, bin_path: PathBuf) -> Result<Self> {
        let unpaired = |reason: &str| Error::UnpairedShard {
            idx: idx_path.clone(),
            bin: bin_path.clone(),
            reason: reason.into(),
        };
        let idx = map_file(&idx_path)?;
        let header = Header::parse(&idx, &idx_path)?;
        let bin = map_file(&bin_path)?;
        let trailer =
            Trailer::parse(&idx[header.docs_end..]).map_err(|TrailerError::Checksum| {
                Error::BadTrailer {
                    path: idx_path.clone(),
                    offset: header.docs_end as u64,
                    reason:
                        "shardflow's integrity trailer is damaged (its checksum does not match)"
                            .into(),
                }
            })?;
        if let Some(t) = trailer {
            if t.bin_len != bin.len() as u64 {
                return Err(unpaired(&format!(
                    "the .idx was written for a .bin of {} bytes, but this .bin holds {} (a file \
                     of another write, or a partial copy)",
                    t.bin_len,
                    bin.len()
                )));
            }
            if t.bin_sample != sample_hash(&bin) {
                return Err(unpaired(
                    "the .bin's content is not the one the .idx was written for (its sampled \
                     hash differs): a file of another write",
                ));
            }
            if t.idx_hash != xxh64(&idx[..header.docs_end]) {
                return Err(Error::BadTrailer {
                    path: idx_path.clone(),
                    offset: (header.docs_end + 32) as u64,
                    reason: "the index bytes changed after they were written (their hash does \
                             not match the trailer's)"
                        .into(),
                });
            }
        }
        let shard = IndexedShard {
            idx_path,
            bin_path,
            idx,
            bin,
            dtype: header.dtype,
            sequences: header.sequences,
            doc_entries: header.doc_entries,
            trailer,
        };
        shard.validate_sequences()?;
        shard.validate_documents()?;
        Ok(shard)
    }

    /// shardflow's integrity trailer, when the writer left one (shards of other tools have
    /// none).
    pub fn trailer(&self) -> Option<&Trailer> {
        self.trailer.as_ref()
    }

    /// Reads the whole `.bin` and checks it against the full hash in the trailer (opening checks
    /// only a sample). Returns whether there was a trailer to check against.
    ///
    /// # Errors
    ///
    /// [`Error::UnpairedShard`] when the content differs from what was written.
    pub fn verify(&self) -> Result<bool> {
        let Some(t) = &self.trailer else {
            return Ok(false);
        };
        let found = xxh64(&self.bin);
        if found != t.bin_hash {
            return Err(Error::UnpairedShard {
                idx: self.idx_path.clone(),
                bin: self.bin_path.clone(),
                reason: format!(
                    "the .bin's XXH64 is {found:016x}, but the .idx was written for \
                     {:016x}: the .bin changed or is another write's",
                    t.bin_hash
                ),
            });
        }
        Ok(true)
    }

    /// The `.idx` path.
    pub fn idx_path(&self) -> &Path {
        &self.idx_path
    }

    /// The `.bin` path.
    pub fn bin_path(&self) -> &Path {
        &self.bin_path
    }

    /// The whole mapped `.bin`: every sequence's ids, back to back.
    pub fn bin_bytes(&self) -> &[u8] {
        &self.bin
    }

    /// Number of documents (document index entries less one).
    pub fn documents(&self) -> usize {
        self.doc_entries - 1
    }

    /// The sequences of document `d`, as a range of sequence indices.
    pub fn document(&self, d: usize) -> Option<Range<usize>> {
        (d < self.documents()).then(|| self.doc_entry(d) as usize..self.doc_entry(d + 1) as usize)
    }

    /// The document indices: sequence boundaries, first 0, last [`Shard::len`].
    pub fn document_boundaries(&self) -> impl ExactSizeIterator<Item = usize> + '_ {
        (0..self.doc_entries).map(|e| self.doc_entry(e) as usize)
    }

    fn lengths_offset(&self) -> usize {
        HEADER_LEN
    }

    fn pointers_offset(&self) -> usize {
        HEADER_LEN + 4 * self.sequences
    }

    fn docs_offset(&self) -> usize {
        HEADER_LEN + 12 * self.sequences
    }

    fn raw_length(&self, i: usize) -> i32 {
        read_i32(&self.idx, self.lengths_offset() + 4 * i)
    }

    fn raw_pointer(&self, i: usize) -> i64 {
        read_i64(&self.idx, self.pointers_offset() + 8 * i)
    }

    fn doc_entry(&self, e: usize) -> i64 {
        read_i64(&self.idx, self.docs_offset() + 8 * e)
    }

    /// Byte where the sequences before `i` end: the pointer of `i`, or the end of the last one.
    fn end_of(&self, i: usize) -> u64 {
        if i < self.sequences {
            self.raw_pointer(i) as u64
        } else if i == 0 {
            0
        } else {
            let last = i - 1;
            self.raw_pointer(last) as u64 + self.raw_length(last) as u64 * self.dtype.size() as u64
        }
    }

    /// Checks every length and pointer: lengths non-negative, each pointer where the lengths
    /// before it end (Megatron writes them as a running sum), every sequence inside `.bin`.
    fn validate_sequences(&self) -> Result<()> {
        let size = self.dtype.size() as i128;
        let bin_len = self.bin.len() as u64;
        let mut expected: i128 = 0;
        for i in 0..self.sequences {
            let len_off = (self.lengths_offset() + 4 * i) as u64;
            let length = self.raw_length(i);
            if length < 0 {
                return Err(Error::NegativeLength {
                    path: self.idx_path.clone(),
                    offset: len_off,
                    sequence: i as u64,
                    length: length as i64,
                });
            }
            let pointer = self.raw_pointer(i);
            if pointer as i128 != expected {
                return Err(Error::BadPointer {
                    path: self.idx_path.clone(),
                    offset: (self.pointers_offset() + 8 * i) as u64,
                    sequence: i as u64,
                    found: pointer,
                    expected: expected as i64,
                });
            }
            expected += length as i128 * size;
            if expected > bin_len as i128 {
                return Err(Error::SequenceOutOfBin {
                    path: self.idx_path.clone(),
                    offset: len_off,
                    sequence: i as u64,
                    bin: self.bin_path.clone(),
                    end: expected as u128,
                    bin_len,
                });
            }
        }
        Ok(())
    }

    /// Checks the document indices: start at 0, never fall, end at N.
    fn validate_documents(&self) -> Result<()> {
        let bad = |entry: usize, value: i64, rule: String| Error::BadDocumentIndex {
            path: self.idx_path.clone(),
            offset: (self.docs_offset() + 8 * entry) as u64,
            entry: entry as u64,
            value,
            rule,
        };
        if self.doc_entries == 0 {
            return Err(bad(
                0,
                0,
                "the document index is empty; it must start with 0".into(),
            ));
        }
        let first = self.doc_entry(0);
        if first != 0 {
            return Err(bad(0, first, "the first document index must be 0".into()));
        }
        let mut prev = 0;
        for e in 1..self.doc_entries {
            let value = self.doc_entry(e);
            if value < prev {
                let rule =
                    format!("document indices must rise monotonically (entry before: {prev})");
                return Err(bad(e, value, rule));
            }
            prev = value;
        }
        if prev != self.sequences as i64 {
            let last = self.doc_entries - 1;
            let rule = format!(
                "the last document index must equal the sequence count {}",
                self.sequences
            );
            return Err(bad(last, prev, rule));
        }
        Ok(())
    }
}

impl Shard for IndexedShard {
    fn len(&self) -> usize {
        self.sequences
    }

    fn get(&self, i: usize) -> Option<TokenSlice<'_>> {
        if i >= self.sequences {
            return None;
        }
        let start = self.raw_pointer(i) as usize;
        let end = start + self.raw_length(i) as usize * self.dtype.size();
        Some(TokenSlice::new(
            &self.bin[start..end],
            self.dtype,
            &self.bin_path,
            start as u64,
        ))
    }

    fn sequence_len(&self, i: usize) -> Option<usize> {
        (i < self.sequences).then(|| self.raw_length(i) as usize)
    }

    fn tokens(&self) -> u64 {
        self.end_of(self.sequences) / self.dtype.size() as u64
    }

    fn path(&self) -> &Path {
        &self.idx_path
    }

    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn advise(&self, access: super::Access) {
        super::advise_map(&self.bin, access);
    }

    fn prefetch_entry(&self, i: usize) {
        if i < self.sequences {
            super::dtype::prefetch_byte(&self.idx[self.lengths_offset() + 4 * i]);
            super::dtype::prefetch_byte(&self.idx[self.pointers_offset() + 8 * i]);
        }
    }

    fn will_need(&self, i: usize) {
        if i < self.sequences {
            let start = self.raw_pointer(i) as usize;
            super::will_need_range(
                &self.bin,
                start,
                self.raw_length(i) as usize * self.dtype.size(),
            );
        }
    }

    fn populate(&self) {
        super::populate_map(&self.idx);
        super::populate_map(&self.bin);
    }

    fn evict(&self) -> Result<()> {
        super::evict_map(&self.bin, &self.bin_path)
    }
}

/// The parsed fixed header, with the array bounds already checked against the file length.
struct Header {
    dtype: Dtype,
    sequences: usize,
    doc_entries: usize,
    /// Where the document indices end (and a trailer may start).
    docs_end: usize,
}

impl Header {
    fn parse(idx: &[u8], path: &Path) -> Result<Self> {
        let head = &idx[..idx.len().min(MAGIC.len())];
        if head != &MAGIC[..head.len()] {
            return Err(Error::BadMagic {
                path: path.to_path_buf(),
                found: hex(head),
            });
        }
        let truncated = |what, needed: u128| Error::TruncatedIndex {
            path: path.to_path_buf(),
            what,
            needed,
            len: idx.len() as u64,
        };
        if idx.len() < HEADER_LEN {
            return Err(truncated("header", HEADER_LEN as u128));
        }
        let version = read_u64(idx, 9);
        if version != VERSION {
            return Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                offset: 9,
                version,
            });
        }
        let dtype = match Dtype::from_megatron_code(idx[17]) {
            CodeMeaning::Int(d) => d,
            CodeMeaning::Float(dtype) => {
                return Err(Error::NotTokenIds {
                    path: path.to_path_buf(),
                    offset: 17,
                    dtype,
                });
            }
            CodeMeaning::Unknown => {
                return Err(Error::UnknownDtype {
                    path: path.to_path_buf(),
                    offset: 17,
                    code: idx[17],
                });
            }
        };
        let n = read_u64(idx, 18) as u128;
        let d = read_u64(idx, 26) as u128;
        let len = idx.len() as u128;
        let lengths_end = HEADER_LEN as u128 + 4 * n;
        let pointers_end = lengths_end + 8 * n;
        let docs_end = pointers_end + 8 * d;
        for (what, end) in [
            ("lengths", lengths_end),
            ("pointers", pointers_end),
            ("document indices", docs_end),
        ] {
            if end > len {
                return Err(truncated(what, end));
            }
        }
        // Both counts fit usize now: their arrays lie inside a mapped file.
        Ok(Header {
            dtype,
            sequences: n as usize,
            doc_entries: d as usize,
            docs_end: docs_end as usize,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn read_i64(b: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn read_i32(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
