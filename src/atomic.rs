//! Atomic file writes: write to a temporary name in the destination's directory, fsync, rename
//! over the destination, fsync the directory. A crash leaves the old file or the new one, never
//! half of one; an `AtomicFile` dropped before [`AtomicFile::commit`] removes its temporary file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// A file being written under a temporary name, renamed into place by [`AtomicFile::commit`].
#[derive(Debug)]
pub struct AtomicFile {
    out: BufWriter<NamedTempFile>,
    dest: PathBuf,
}

impl AtomicFile {
    /// Starts writing what will become `dest`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the temporary file cannot be created in `dest`'s directory.
    pub fn create(dest: impl AsRef<Path>) -> Result<Self> {
        let dest = dest.as_ref().to_path_buf();
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(parent_dir(&dest))
            .map_err(|e| Error::io(&dest, "create a temporary file for", e))?;
        Ok(AtomicFile {
            out: BufWriter::with_capacity(1 << 20, tmp),
            dest,
        })
    }

    /// The destination path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// The temporary file's path (its content is complete only after a flush).
    pub fn temp_path(&self) -> &Path {
        self.out.get_ref().path()
    }

    /// Appends bytes.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming the destination.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io(&self.dest, "write", e))
    }

    /// Flushes buffered bytes to the temporary file.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming the destination.
    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .map_err(|e| Error::io(&self.dest, "write", e))
    }

    /// Flushes, fsyncs, renames over the destination and fsyncs the directory.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming the destination; the temporary file is removed.
    pub fn commit(self) -> Result<()> {
        let dest = self.dest;
        let tmp = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&dest, "write", e.into_error()))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::io(&dest, "fsync", e))?;
        tmp.persist(&dest)
            .map_err(|e| Error::io(&dest, "rename into place", e.error))?;
        sync_dir(parent_dir(&dest)).map_err(|e| Error::io(&dest, "fsync the directory of", e))
    }
}

/// Writes `bytes` to `dest` atomically.
///
/// # Errors
///
/// [`Error::Io`] naming `dest`.
pub fn write_atomic(dest: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(dest)?;
    f.write_all(bytes)?;
    f.commit()
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
