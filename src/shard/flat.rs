//! Flat token files: raw little-endian u16 or u32 ids with no header, as nanoGPT's `train.bin`,
//! read as non-overlapping fixed-length windows.

use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::dtype::{Dtype, TokenSlice};
use super::{Shard, map_file};
use crate::error::{Error, Result};

/// A flat token file seen as windows of `window` tokens: sample i holds tokens
/// `i*window .. (i+1)*window`; a trailing partial window is left out.
///
/// For next-token training, take `window = seq_len + 1` so that inputs and shifted labels both
/// fit one window.
#[derive(Debug)]
pub struct FlatShard {
    path: PathBuf,
    map: Mmap,
    dtype: Dtype,
    window: usize,
}

impl FlatShard {
    /// Maps `path` as ids of `dtype` (u16 or u32) in windows of `window` tokens.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for another dtype or a zero window; [`Error::MissingFile`];
    /// [`Error::BadFlatFile`] when the file length is not a whole number of ids.
    pub fn open(path: impl AsRef<Path>, dtype: Dtype, window: usize) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if !matches!(dtype, Dtype::U16 | Dtype::U32) {
            return Err(Error::Config(format!(
                "flat token files hold u16 or u32 ids, not {dtype} ({})",
                path.display()
            )));
        }
        if window == 0 {
            return Err(Error::Config(format!(
                "{}: the window must hold at least one token",
                path.display()
            )));
        }
        let map = map_file(&path)?;
        let rest = map.len() % dtype.size();
        if rest != 0 {
            return Err(Error::BadFlatFile {
                offset: (map.len() - rest) as u64,
                reason: format!(
                    "{} bytes is not a whole number of {dtype} ids ({rest} trailing bytes)",
                    map.len()
                ),
                path,
            });
        }
        Ok(FlatShard {
            path,
            map,
            dtype,
            window,
        })
    }

    /// Tokens in the file, including a trailing partial window.
    pub fn file_tokens(&self) -> u64 {
        (self.map.len() / self.dtype.size()) as u64
    }

    /// The window length in tokens.
    pub fn window(&self) -> usize {
        self.window
    }
}

impl Shard for FlatShard {
    fn len(&self) -> usize {
        self.map.len() / self.dtype.size() / self.window
    }

    fn get(&self, i: usize) -> Option<TokenSlice<'_>> {
        if i >= self.len() {
            return None;
        }
        let bytes = self.window * self.dtype.size();
        let start = i * bytes;
        Some(TokenSlice::new(
            &self.map[start..start + bytes],
            self.dtype,
            &self.path,
            start as u64,
        ))
    }

    fn sequence_len(&self, i: usize) -> Option<usize> {
        (i < self.len()).then_some(self.window)
    }

    fn tokens(&self) -> u64 {
        (self.len() * self.window) as u64
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn advise(&self, access: super::Access) {
        super::advise_map(&self.map, access);
    }

    fn will_need(&self, i: usize) {
        if i < self.len() {
            let bytes = self.window * self.dtype.size();
            super::will_need_range(&self.map, i * bytes, bytes);
        }
    }

    fn populate(&self) {
        super::populate_map(&self.map);
    }

    fn evict(&self) -> crate::Result<()> {
        super::evict_map(&self.map, &self.path)
    }
}
