//! The Megatron shard writer: sequences in, `PREFIX.idx` and `PREFIX.bin` out, atomically.

use std::path::{Path, PathBuf};

use super::dtype::Dtype;
use super::indexed::recover_shard;
use super::indexed::{HEADER_LEN, MAGIC, VERSION, shard_paths};
use super::trailer::{self, Trailer};
use crate::atomic::{AtomicFile, check_destination, commit_pair, find_stale};
use crate::error::{Error, Result};
use crate::hash::Xxh64;

/// What a finished shard holds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ShardSummary {
    /// The shard's prefix.
    pub prefix: PathBuf,
    /// The dtype written.
    pub dtype: Dtype,
    /// Number of sequences.
    pub sequences: u64,
    /// Number of documents.
    pub documents: u64,
    /// Number of tokens.
    pub tokens: u64,
}

/// Writes a Megatron indexed dataset.
///
/// Both files are written under temporary names and moved into place by
/// [`IndexedWriter::finish`] with [`commit_pair`]: the old pair is moved aside, then the new
/// `.bin` and the new `.idx` are renamed in, so a crash at any moment leaves the old pair, the
/// new pair, or a missing `.idx` that opening reports, never an old file beside a new one. The
/// `.idx` ends with an integrity [trailer](super::Trailer) (the `.bin`'s length and hashes) that
/// opening checks. A writer dropped before `finish` leaves nothing behind. A killed write leaves
/// hidden temporary (and, during the commit, moved-aside) files: the next reader or writer puts
/// a whole pair back by renames ([`recover_shard`](super::recover_shard)), and the next write
/// removes them once its own pair is in place.
///
/// With the automatic dtype (`None`), ids are stored as u16 while every id fits, and the file
/// written so far is widened once to i32 (or i64) when the first id that does not fit arrives.
#[derive(Debug)]
pub struct IndexedWriter {
    prefix: PathBuf,
    bin: AtomicFile,
    idx_dest: PathBuf,
    dtype: Dtype,
    auto: bool,
    lengths: Vec<i32>,
    doc_idx: Vec<i64>,
    tokens: u64,
    scratch: Vec<u8>,
    removed_stale: Vec<(PathBuf, u64)>,
}

impl IndexedWriter {
    /// Starts a shard at `prefix` with ids stored as `dtype`, or chosen automatically when `None`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for [`Dtype::U32`], which Megatron cannot store, for a prefix that is a
    /// directory, and while another write to the same prefix is in progress;
    /// [`Error::MissingDirectory`]; [`Error::NotAFile`] when `PREFIX.idx` or `PREFIX.bin` exists
    /// and is not a regular file; [`Error::Io`] when the directory is not writable.
    pub fn create(prefix: impl AsRef<Path>, dtype: Option<Dtype>) -> Result<Self> {
        let prefix = prefix.as_ref().to_path_buf();
        if let Some(d) = dtype.filter(|d| d.megatron_code().is_none()) {
            return Err(Error::Config(format!(
                "dtype {d} has no Megatron code; use u16, i32 or i64 for a .bin/.idx shard"
            )));
        }
        let is_dir = prefix.as_os_str().to_string_lossy().ends_with(['/', '\\'])
            || prefix.is_dir()
            || prefix.file_name().is_none();
        if is_dir {
            return Err(Error::Config(format!(
                "output prefix {}: is a directory; a prefix names the shard inside it, like \
                 {}/NAME (which writes NAME.idx and NAME.bin)",
                prefix.display(),
                prefix.display().to_string().trim_end_matches(['/', '\\'])
            )));
        }
        let (idx_dest, bin_dest) = shard_paths(&prefix);
        // A killed earlier write may have left the pair apart: put it back together first, so
        // that whatever happens to this write, the last complete version stays readable.
        recover_shard(&prefix)?;
        let mut removed_stale = Vec::new();
        for dest in [&bin_dest, &idx_dest] {
            let stale = find_stale(dest)?;
            if let Some(busy) = stale.busy.first() {
                return Err(Error::Config(format!(
                    "another write to {} is in progress (its temporary file {} is held open); \
                     wait for it to finish or stop it",
                    prefix.display(),
                    busy.display()
                )));
            }
            removed_stale.extend(stale.removed);
        }
        // Check the .idx destination now, so that a bad one fails before any work.
        check_destination(&idx_dest)?;
        Ok(IndexedWriter {
            bin: AtomicFile::create(bin_dest)?,
            removed_stale,
            prefix,
            idx_dest,
            dtype: dtype.unwrap_or(Dtype::U16),
            auto: dtype.is_none(),
            lengths: Vec::new(),
            doc_idx: vec![0],
            tokens: 0,
            scratch: Vec::new(),
        })
    }

    /// The dtype ids are stored as now (with the automatic dtype, it may still widen).
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Sequences written so far.
    pub fn sequences(&self) -> usize {
        self.lengths.len()
    }

    /// The leftovers of earlier, killed writes to this prefix (temporary and moved-aside files)
    /// that [`IndexedWriter::create`] found, with their sizes in bytes. They stay until this
    /// write's pair is in place: [`IndexedWriter::finish`] removes them then, never before.
    pub fn removed_stale(&self) -> &[(PathBuf, u64)] {
        &self.removed_stale
    }

    /// Appends one sequence.
    ///
    /// # Errors
    ///
    /// [`Error::TokenOutOfRange`] when an id does not fit a fixed dtype (nothing of the sequence is
    /// written); [`Error::Config`] for a sequence of more than `i32::MAX` tokens; [`Error::Io`].
    pub fn add_sequence<T: Copy + Into<i64>>(&mut self, tokens: &[T]) -> Result<()> {
        let length = i32::try_from(tokens.len()).map_err(|_| {
            Error::Config(format!(
                "a sequence of {} tokens exceeds the i32 length field",
                tokens.len()
            ))
        })?;
        if let Some(j) = tokens.iter().position(|&t| !self.dtype.holds(t.into())) {
            let token = tokens[j].into();
            if !self.auto {
                let offset = (self.tokens + j as u64) * self.dtype.size() as u64;
                let (_, bin_dest) = shard_paths(&self.prefix);
                return Err(Error::TokenOutOfRange {
                    path: bin_dest,
                    offset,
                    token,
                    target: self.dtype.name(),
                });
            }
            let (lo, hi) = tokens.iter().fold((token, token), |(lo, hi), &t| {
                let t = t.into();
                (lo.min(t), hi.max(t))
            });
            self.widen_to(if Dtype::I32.holds(lo) && Dtype::I32.holds(hi) {
                Dtype::I32
            } else {
                Dtype::I64
            })?;
        }
        self.scratch.clear();
        self.dtype.extend_le(tokens, &mut self.scratch);
        self.bin.write_all(&self.scratch)?;
        self.lengths.push(length);
        self.tokens += tokens.len() as u64;
        Ok(())
    }

    /// Ends the current document: the sequences added since the last call form one document.
    ///
    /// # Errors
    ///
    /// None today; kept fallible so that a future buffered index can report I/O errors.
    pub fn end_document(&mut self) -> Result<()> {
        self.doc_idx.push(self.lengths.len() as i64);
        Ok(())
    }

    /// Writes the `.idx` (with its integrity trailer) and moves both files into place. Sequences
    /// added after the last [`IndexedWriter::end_document`] form a final document.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming the file; on error the old pair (if any) is back in place and no new
    /// file is left at its final name.
    pub fn finish(mut self) -> Result<ShardSummary> {
        if self.doc_idx.last().copied() != Some(self.lengths.len() as i64) {
            self.end_document()?;
        }
        self.bin.flush()?;
        let (_, bin_dest) = shard_paths(&self.prefix);
        // Read back in chunks, not mapped: the temporary file is this writer's own (hidden
        // name, exclusively locked), complete after the flush.
        let bin_hashes = trailer::bin_hashes(self.bin.temp_file())
            .map_err(|e| Error::io(&bin_dest, "read back", e))?;
        let mut idx = IndexWriter {
            file: AtomicFile::create(&self.idx_dest)?,
            hash: Xxh64::new(0),
        };
        let code = self
            .dtype
            .megatron_code()
            .expect("the writer only holds Megatron dtypes");
        let mut head = Vec::with_capacity(HEADER_LEN);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.push(code);
        head.extend_from_slice(&(self.lengths.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.doc_idx.len() as u64).to_le_bytes());
        idx.put(&head)?;
        idx.put_all(self.lengths.iter().map(|l| l.to_le_bytes()))?;
        let size = self.dtype.size() as i64;
        let pointers = self.lengths.iter().scan(0i64, |at, &l| {
            let p = *at;
            *at += l as i64 * size;
            Some(p.to_le_bytes())
        });
        idx.put_all(pointers)?;
        idx.put_all(self.doc_idx.iter().map(|d| d.to_le_bytes()))?;
        let trailer = Trailer::with_hashes(bin_hashes, idx.hash.finish());
        idx.file.write_all(&trailer.to_bytes())?;
        commit_pair(self.bin, idx.file)?;
        Ok(ShardSummary {
            prefix: self.prefix,
            dtype: self.dtype,
            sequences: self.lengths.len() as u64,
            documents: self.doc_idx.len() as u64 - 1,
            tokens: self.tokens,
        })
    }

    /// Rewrites the `.bin` written so far in the wider `dtype`.
    fn widen_to(&mut self, dtype: Dtype) -> Result<()> {
        self.bin.flush()?;
        let (_, bin_dest) = shard_paths(&self.prefix);
        let old = std::fs::read(self.bin.temp_path())
            .map_err(|e| Error::io(&bin_dest, "read back", e))?;
        let mut wide = AtomicFile::create(&bin_dest)?;
        let mut buf = Vec::with_capacity(old.len() / self.dtype.size() * dtype.size());
        for chunk in old.chunks_exact(self.dtype.size()) {
            dtype.write_le(self.dtype.read(chunk), &mut buf);
        }
        wide.write_all(&buf)?;
        tracing::debug!(prefix = %self.prefix.display(), from = %self.dtype, to = %dtype, "widened shard dtype");
        self.bin = wide;
        self.dtype = dtype;
        Ok(())
    }
}

/// The `.idx` being written, hashed as it goes (the trailer records the hash).
struct IndexWriter {
    file: AtomicFile,
    hash: Xxh64,
}

impl IndexWriter {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.hash.update(bytes);
        self.file.write_all(bytes)
    }

    /// Writes little-endian values through a small buffer.
    fn put_all<const N: usize>(&mut self, values: impl Iterator<Item = [u8; N]>) -> Result<()> {
        let mut buf = Vec::with_capacity(1 << 16);
        for v in values {
            buf.extend_from_slice(&v);
            if buf.len() >= 1 << 16 {
                self.put(&buf)?;
                buf.clear();
            }
        }
        self.put(&buf)
    }
}
