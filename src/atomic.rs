//! Atomic file writes: write to a temporary name in the destination's directory, fsync, rename
//! over the destination, fsync the directory. A crash leaves the old file or the new one, never
//! half of one.
//!
//! - [`AtomicFile`]: one file. Dropped before [`AtomicFile::commit`], it removes its temporary.
//! - [`commit_pair`]: two files that only make sense together (a shard's `.bin` and `.idx`). The
//!   old pair is moved aside first, so at no moment does an old file sit beside a new one: a
//!   reader sees the old pair, the new pair, or a missing file, which it reports.
//! - Temporary files are named `.NAME.XXXXXX.tmp` beside their destination and held under an
//!   exclusive lock while their writer lives, so [`remove_stale`] can tell the leftovers of a
//!   killed write (unlocked) from a write in progress (locked). Every new write to a
//!   destination removes the leftovers first.
//! - [`interrupt`] removes every temporary file of this process (the command calls it on Ctrl-C
//!   and SIGTERM); a commit in progress finishes first, so nothing is left half renamed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// Suffix of a temporary file being written.
const TMP_SUFFIX: &str = ".tmp";
/// Suffix of a destination moved aside during a pair commit.
const OLD_SUFFIX: &str = ".old";

/// What this process is writing now; [`interrupt`] removes it.
#[derive(Default)]
struct Live {
    closed: bool,
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

static LIVE: Mutex<Live> = Mutex::new(Live {
    closed: false,
    files: Vec::new(),
    dirs: Vec::new(),
});

/// Held while files are renamed into place, so that [`interrupt`] waits for a commit to finish.
/// Lock order: `COMMIT`, then `LIVE`.
static COMMIT: Mutex<()> = Mutex::new(());

fn live() -> MutexGuard<'static, Live> {
    // The registry holds paths only; a panic elsewhere cannot leave it inconsistent.
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts a commit: waits for other commits, and fails once [`interrupt`] has run.
fn begin_commit(dest: &Path) -> Result<MutexGuard<'static, ()>> {
    let guard = COMMIT.lock().unwrap_or_else(|e| e.into_inner());
    if live().closed {
        return Err(Error::Interrupted {
            path: dest.to_path_buf(),
        });
    }
    Ok(guard)
}

/// Removes every temporary file and directory this process is writing, and refuses new ones: for
/// the command's Ctrl-C and SIGTERM handler, which exits right after. A commit in progress holds
/// the registry, so it completes (or restores the old files) before this runs. Returns the number
/// of paths removed.
pub fn interrupt() -> usize {
    let _commit = COMMIT.lock().unwrap_or_else(|e| e.into_inner());
    let mut live = live();
    live.closed = true;
    let mut removed = 0;
    for f in live.files.drain(..) {
        removed += std::fs::remove_file(&f).is_ok() as usize;
    }
    for d in live.dirs.drain(..) {
        removed += std::fs::remove_dir_all(&d).is_ok() as usize;
    }
    removed
}

/// A registration in the live set, removed when dropped.
#[derive(Debug)]
struct Registered(PathBuf);

impl Registered {
    fn file(path: &Path, dest: &Path) -> Result<Self> {
        Self::add(path, dest, false)
    }

    fn add(path: &Path, dest: &Path, dir: bool) -> Result<Self> {
        let mut live = live();
        if live.closed {
            return Err(Error::Interrupted {
                path: dest.to_path_buf(),
            });
        }
        if dir { &mut live.dirs } else { &mut live.files }.push(path.to_path_buf());
        Ok(Registered(path.to_path_buf()))
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut live = live();
        live.files.retain(|p| *p != self.0);
        live.dirs.retain(|p| *p != self.0);
    }
}

/// A temporary directory (see [`tempfile::TempDir`]) that [`interrupt`] removes too; it is
/// removed when dropped.
#[derive(Debug)]
pub struct TempDir {
    // Field order: deregister before the directory goes.
    _reg: Registered,
    dir: tempfile::TempDir,
}

impl TempDir {
    /// A new temporary directory under the system's temporary directory.
    ///
    /// # Errors
    ///
    /// [`Error::Io`]; [`Error::Interrupted`] after [`interrupt`].
    pub fn new() -> Result<Self> {
        let base = std::env::temp_dir();
        let dir = tempfile::Builder::new()
            .prefix("shardflow-")
            .tempdir_in(&base)
            .map_err(|e| Error::io(&base, "create a temporary directory in", e))?;
        Ok(TempDir {
            _reg: Registered::add(dir.path(), dir.path(), true)?,
            dir,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A file being written under a temporary name, renamed into place by [`AtomicFile::commit`].
#[derive(Debug)]
pub struct AtomicFile {
    out: BufWriter<NamedTempFile>,
    dest: PathBuf,
    _reg: Registered,
}

/// A temporary file whose bytes are complete and on disk, waiting to be renamed.
struct Synced {
    tmp: NamedTempFile,
    dest: PathBuf,
    _reg: Registered,
}

impl AtomicFile {
    /// Starts writing what will become `dest`.
    ///
    /// # Errors
    ///
    /// [`Error::MissingDirectory`] when `dest`'s directory does not exist; [`Error::NotAFile`]
    /// when `dest` exists and is not a regular file; [`Error::Config`] when `dest` names no file;
    /// [`Error::Io`] when the temporary file cannot be created; [`Error::Interrupted`] after
    /// [`interrupt`].
    pub fn create(dest: impl AsRef<Path>) -> Result<Self> {
        let dest = dest.as_ref().to_path_buf();
        check_destination(&dest)?;
        // Leftovers of killed writes to the same file go (live writers keep theirs).
        remove_stale(&dest)?;
        let dir = parent_dir(&dest);
        let prefix = format!(".{}.", file_name(&dest));
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(TMP_SUFFIX);
        // A file for others to read, like any a command creates (0666 less the umask), not the
        // owner-only mode of a temporary file.
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        let tmp = builder
            .tempfile_in(dir)
            .map_err(|e| Error::io(dir, "create a temporary file in", e))?;
        // The lock tells a later write that this file's writer still lives. A file system
        // without locks only loses that distinction.
        let _ = tmp.as_file().try_lock();
        Ok(AtomicFile {
            _reg: Registered::file(tmp.path(), &dest)?,
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

    /// The temporary file, for reading back what was written (after [`AtomicFile::flush`]).
    pub fn temp_file(&self) -> &File {
        self.out.get_ref().as_file()
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

    /// Flushes and fsyncs the temporary file.
    fn sync(self) -> Result<Synced> {
        let AtomicFile { out, dest, _reg } = self;
        let tmp = out
            .into_inner()
            .map_err(|e| Error::io(&dest, "write", e.into_error()))?;
        fault("fsync a temporary file")
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| Error::io(&dest, "fsync", e))?;
        Ok(Synced { tmp, dest, _reg })
    }

    /// Flushes, fsyncs, renames over the destination and fsyncs the directory.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming the destination; the temporary file is removed.
    pub fn commit(self) -> Result<()> {
        let synced = self.sync()?;
        let dest = synced.dest.clone();
        let commit = begin_commit(&dest)?;
        synced.rename()?;
        drop(commit);
        sync_dir(&dest)
    }
}

/// Writes go to the temporary file; nothing reaches `dest` before [`AtomicFile::commit`]. For
/// encoders that take a [`std::io::Write`] (a Parquet writer).
impl std::io::Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl Synced {
    /// Renames the temporary file over the destination. On error the temporary file is removed.
    fn rename(self) -> Result<()> {
        let Synced { tmp, dest, _reg } = self;
        fault("rename a temporary file into place")
            .map_err(|e| Error::io(&dest, "rename into place", e))?;
        tmp.persist(&dest)
            .map_err(|e| Error::io(&dest, "rename into place", e.error))?;
        Ok(())
    }
}

/// Writes `bytes` to `dest` atomically.
///
/// # Errors
///
/// As [`AtomicFile::create`] and [`AtomicFile::commit`].
pub fn write_atomic(dest: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(dest)?;
    f.write_all(bytes)?;
    f.commit()
}

/// Commits two files that belong together, `first` then `second` (a shard's `.bin`, then its
/// `.idx`), so that no moment shows an old file beside a new one:
///
/// 1. both temporary files are fsynced;
/// 2. the old `second`, then the old `first`, are renamed aside (hidden `.NAME.XXXXXX.old`
///    files), and the directory is fsynced: from here a reader finds `second` missing;
/// 3. the new `first` is renamed into place, the directory fsynced; `second` is still missing;
/// 4. the new `second` is renamed into place, the directory fsynced: the new pair;
/// 5. the old files are removed.
///
/// A crash at any step leaves the old pair, the new pair, or a pair with `second` missing (and
/// the old files under their hidden names, which the next write removes). A failed step restores
/// the old pair before returning its error. [`interrupt`] waits until the commit is over.
///
/// # Errors
///
/// [`Error::Io`] naming the file and the step; the old pair is back in place.
pub fn commit_pair(first: AtomicFile, second: AtomicFile) -> Result<()> {
    let first = first.sync()?;
    let second = second.sync()?;
    let commit = begin_commit(&second.dest)?;
    let dir = parent_dir(&second.dest).to_path_buf();
    let first_dest = first.dest.clone();
    let mut aside: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut first_placed = false;
    let result = (|| -> Result<()> {
        for dest in [&second.dest, &first.dest] {
            if std::fs::symlink_metadata(dest).is_ok() {
                let old = aside_name(dest);
                fault("move an old file aside")
                    .and_then(|()| std::fs::rename(dest, &old))
                    .map_err(|e| Error::io(dest, "move the old file aside", e))?;
                aside.push((dest.clone(), old));
            }
        }
        if !aside.is_empty() {
            sync_dir(&second.dest)?;
        }
        first.rename()?;
        first_placed = true;
        sync_dir(&first_dest)?;
        second.rename()
    })();
    if let Err(e) = result {
        // Put the old pair back: an old file replaces the new first file, if it was renamed;
        // without an old one, the new first file goes.
        let first_had_old = aside.iter().any(|(d, _)| *d == first_dest);
        if first_placed && !first_had_old {
            let _ = std::fs::remove_file(&first_dest);
        }
        for (dest, old) in aside.iter().rev() {
            if let Err(restore) = std::fs::rename(old, dest) {
                tracing::error!(file = %dest.display(), error = %restore, "cannot restore the old file");
            }
        }
        if !aside.is_empty() {
            let _ = File::open(&dir).and_then(|d| d.sync_all());
        }
        return Err(e);
    }
    drop(commit);
    // The new pair is in place. Remove the old files even when an fsync fails, then report the
    // first error.
    let mut first_error = sync_dir_path(&dir)
        .map_err(|e| Error::io(&dir, "fsync the directory", e))
        .err();
    for (_, old) in &aside {
        match fault("remove an old file").and_then(|()| std::fs::remove_file(old)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                first_error.get_or_insert(Error::io(old, "remove the replaced file", e));
            }
            _ => {}
        }
    }
    if !aside.is_empty()
        && let Err(e) = sync_dir_path(&dir)
    {
        first_error.get_or_insert(Error::io(&dir, "fsync the directory", e));
    }
    first_error.map_or(Ok(()), Err)
}

/// The leftovers of earlier writes to one destination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stale {
    /// Files of writes that died (their lock is free), removed, with their sizes in bytes.
    pub removed: Vec<(PathBuf, u64)>,
    /// Temporary files whose writer still holds them: a write in progress.
    pub busy: Vec<PathBuf>,
}

/// Removes the temporary and moved-aside files that killed writes to `dest` left behind
/// (`.NAME.XXXXXX.tmp`, `.NAME.XXXXXX.old` whose lock nobody holds), and lists those still held
/// by a live writer.
///
/// # Errors
///
/// [`Error::Io`] when the directory cannot be listed or a stale file cannot be removed.
pub fn remove_stale(dest: &Path) -> Result<Stale> {
    let dir = parent_dir(dest);
    let stem = format!(".{}.", file_name(dest));
    let mut stale = Stale::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(stale),
        Err(e) => return Err(Error::io(dir, "list", e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, "list", e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(middle) = name.strip_prefix(&stem) else {
            continue;
        };
        // `.NAME.XXXXXX.tmp` only: `.NAME.idx.XXXXXX.tmp` belongs to another destination.
        let Some(random) = middle
            .strip_suffix(TMP_SUFFIX)
            .or_else(|| middle.strip_suffix(OLD_SUFFIX))
        else {
            continue;
        };
        if random.contains('.') {
            continue;
        }
        let path = entry.path();
        let Ok(file) = File::open(&path) else {
            continue;
        };
        match file.try_lock() {
            Ok(()) => {
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(&path)
                    .map_err(|e| Error::io(&path, "remove the stale temporary file", e))?;
                tracing::warn!(file = %path.display(), bytes = len, "removed a stale temporary file of an interrupted write");
                stale.removed.push((path, len));
            }
            Err(std::fs::TryLockError::WouldBlock) => stale.busy.push(path),
            Err(std::fs::TryLockError::Error(_)) => {}
        }
    }
    stale.removed.sort();
    stale.busy.sort();
    Ok(stale)
}

/// A hidden, unique name beside `dest` for the file it replaces.
fn aside_name(dest: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tag = format!(
        "{:x}{:x}{:x}",
        std::process::id(),
        nanos,
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    parent_dir(dest).join(format!(".{}.{tag}{OLD_SUFFIX}", file_name(dest)))
}

/// Checks that `dest` can be written: it names a file, its directory exists, and it is not
/// something other than a regular file.
///
/// # Errors
///
/// As [`AtomicFile::create`].
pub(crate) fn check_destination(dest: &Path) -> Result<()> {
    let ends_with_separator = dest.as_os_str().to_string_lossy().ends_with(['/', '\\']);
    if dest.file_name().is_none() || ends_with_separator {
        return Err(Error::Config(format!(
            "{}: names a directory, not a file",
            dest.display()
        )));
    }
    let dir = parent_dir(dest);
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(m) => {
            return Err(Error::Config(format!(
                "{}: is {}, not a directory",
                dir.display(),
                describe(&m)
            )));
        }
        Err(_) => {
            return Err(Error::MissingDirectory {
                path: dir.to_path_buf(),
            });
        }
    }
    match std::fs::metadata(dest) {
        Ok(m) if !m.is_file() => Err(Error::NotAFile {
            path: dest.to_path_buf(),
            found: describe(&m),
        }),
        _ => Ok(()),
    }
}

/// What a non-regular file is, for [`Error::NotAFile`].
pub(crate) fn describe(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a named pipe";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_block_device() || t.is_char_device() {
            return "a device";
        }
    }
    if meta.is_dir() {
        "a directory"
    } else if meta.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Fsyncs the directory holding `file`.
pub(crate) fn sync_dir(file: &Path) -> Result<()> {
    let dir = parent_dir(file);
    sync_dir_path(dir).map_err(|e| Error::io(file, "fsync the directory of", e))
}

fn sync_dir_path(dir: &Path) -> std::io::Result<()> {
    fault("fsync a directory")?;
    File::open(dir)?.sync_all()
}

/// A step of a write that a test may stop (feature `fault-injection`): the `n`-th call (from 0)
/// with `SHARDFLOW_FAULT_AT=n` exits the process at once (`SHARDFLOW_FAULT_MODE=crash`, the
/// default: no destructor runs, as in a kill) or fails the step with an I/O error
/// (`SHARDFLOW_FAULT_MODE=error`). Each point is named on stderr when it stops the process or
/// when `SHARDFLOW_FAULT_TRACE` is set.
#[cfg(feature = "fault-injection")]
pub(crate) fn fault(step: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    static PLAN: OnceLock<(Option<u64>, bool, bool)> = OnceLock::new();
    let (at, crash, trace) = *PLAN.get_or_init(|| {
        let at = std::env::var("SHARDFLOW_FAULT_AT")
            .ok()
            .and_then(|v| v.parse().ok());
        let crash = std::env::var("SHARDFLOW_FAULT_MODE").map_or(true, |m| m != "error");
        (
            at,
            crash,
            std::env::var_os("SHARDFLOW_FAULT_TRACE").is_some(),
        )
    });
    let n = COUNT.fetch_add(1, Ordering::SeqCst);
    let mut err = std::io::stderr().lock();
    if trace {
        let _ = writeln!(err, "fault point {n}: {step}");
    }
    if at == Some(n) {
        let _ = writeln!(err, "fault injected at point {n}: {step}");
        if crash {
            std::process::exit(86);
        }
        return Err(std::io::Error::other(format!("injected fault at {step}")));
    }
    Ok(())
}

/// A step of a write that a test may stop; without the `fault-injection` feature, nothing.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn fault(_step: &str) -> std::io::Result<()> {
    Ok(())
}
