//! Atomic file writes: write to a temporary name in the destination's directory, fsync, rename
//! over the destination, fsync the directory. A crash leaves the old file or the new one, never
//! half of one.
//!
//! - [`AtomicFile`]: one file. Dropped before [`AtomicFile::commit`], it removes its temporary.
//! - [`commit_pair`]: two files that only make sense together (a shard's `.bin` and `.idx`). The
//!   old pair is moved aside first, so at no moment does an old file sit beside a new one: a
//!   reader sees the old pair, the new pair, or a missing file, which it reports.
//! - [`recover_pair`]: puts back the pair that a killed [`commit_pair`] left apart (the old pair
//!   rolled back, or the new one rolled forward), by renames only; readers and writers call it
//!   when they find a shard's second file missing.
//! - Temporary files are named `.NAME.XXXXXX.tmp` beside their destination and held under an
//!   exclusive lock while their writer lives, so a later write can tell the leftovers of a
//!   killed write (unlocked) from a write in progress (locked). A write removes the leftovers
//!   of earlier writes only once its own file (or pair) is in place: until then they may be
//!   all that is left of the old version.
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
/// removed when dropped. The command's corpora live in one.
#[cfg(feature = "cli")]
#[derive(Debug)]
pub(crate) struct TempDir {
    // Field order: deregister before the directory goes.
    _reg: Registered,
    dir: tempfile::TempDir,
}

#[cfg(feature = "cli")]
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
        let dir = parent_dir(&dest);
        let prefix = format!(".{}.", file_name(&dest));
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(TMP_SUFFIX);
        // A file for others to read, like any a command creates (0666 less the umask), not the
        // owner-only mode of a temporary file.
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        // The lock tells a later write that this file's writer still lives. Between creating
        // the file and locking it, another write's cleanup may find it unlocked and remove it
        // (it holds the lock while it removes): then the path no longer names this file, and a
        // new one is made. A file system without locks only loses that distinction.
        let mut attempts = 0;
        let tmp = loop {
            // The directory exists (checked above): a "not found" here means the file system
            // takes no new files (`/proc`), not a missing path, so it is reported as it is.
            let tmp = builder.tempfile_in(dir).map_err(|e| Error::Io {
                path: dir.to_path_buf(),
                action: "create a new file here",
                error: e,
            })?;
            let locked = tmp.as_file().lock().is_ok();
            attempts += 1;
            if !locked || still_named(&tmp) || attempts == 8 {
                break tmp;
            }
        };
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
        sync_dir(&dest)?;
        // The new file is in place: what killed writes to it left behind can go now.
        remove_stale(&dest).map(drop)
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
/// 1. both temporary files are fsynced (complete on disk under their hidden `.tmp` names);
/// 2. the old `second`, then the old `first`, are renamed aside (hidden `.NAME.TAG.old` files,
///    one tag for both), and the directory is fsynced: from here a reader finds `second` missing;
/// 3. the new `first` is renamed into place, the directory fsynced; `second` is still missing;
/// 4. the new `second` is renamed into place, the directory fsynced: the new pair;
/// 5. the old files, and what earlier killed writes left, are removed.
///
/// Steps 2 to 4 run under a lock on the directory, which [`recover_pair`] takes too, so a reader
/// never repairs a pair that a live writer is committing. A crash at any step leaves the old
/// pair, the new pair, or `second` missing with the old files aside (and the new `second`
/// complete under its temporary name): [`recover_pair`] rolls that back to the old pair, or
/// forward to the new one, by renames alone. A failed step restores the old pair before
/// returning its error. [`interrupt`] waits until the commit is over.
///
/// # Errors
///
/// [`Error::Io`] naming the file and the step; the old pair is back in place unless the error
/// came after step 4 (an fsync or a removal), when the new pair is.
pub fn commit_pair(first: AtomicFile, second: AtomicFile) -> Result<()> {
    let first = first.sync()?;
    let second = second.sync()?;
    let dir = parent_dir(&second.dest).to_path_buf();
    // The directory first, with a deadline: waiting on another process's lock must not hold the
    // commit mutex every atomic write of this process needs.
    let lock = DirLock::new(&dir)?;
    let commit = begin_commit(&second.dest)?;
    let first_dest = first.dest.clone();
    let second_dest = second.dest.clone();
    let tag = aside_tag();
    let mut aside: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut first_placed = false;
    let result = (|| -> Result<()> {
        for dest in [&second.dest, &first.dest] {
            if std::fs::symlink_metadata(dest).is_ok() {
                let old = aside_name(dest, &tag);
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
    // The new pair is in place. Remove the old files and the leftovers of earlier killed writes
    // (still under the directory lock, so that no other commit's moved-aside files are taken
    // for leftovers) even when an fsync fails, then report the first error.
    let mut first_error = sync_dir_path(&dir)
        .map_err(|e| Error::io(&dir, "fsync the directory", e))
        .err();
    for dest in [&second_dest, &first_dest] {
        if let Err(e) = remove_stale(dest) {
            first_error.get_or_insert(e);
        }
    }
    if !aside.is_empty()
        && let Err(e) = sync_dir_path(&dir)
    {
        first_error.get_or_insert(Error::io(&dir, "fsync the directory", e));
    }
    drop(lock);
    first_error.map_or(Ok(()), Err)
}

/// What [`recover_pair`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// `second` was in place (or nothing could be paired): nothing was renamed.
    Untouched,
    /// The old pair, moved aside by an interrupted commit, is back in place.
    RolledBack,
    /// The new pair of an interrupted commit (its `second` complete under a temporary name) is
    /// in place.
    RolledForward,
}

/// Repairs a pair that a [`commit_pair`] killed between its steps 2 and 4 left apart: `second`
/// missing, the old files aside under `.NAME.TAG.old`, perhaps the new `first` in place and the
/// new `second` complete under `.NAME.XXXXXX.tmp`. `pairs(first, second)` says whether two files
/// belong together (for a shard: the `.idx` validates against the `.bin`, trailer included).
///
/// Tried in order, under the directory lock that commits hold: a file for `second` (moved aside,
/// or the temporary of a dead writer) that pairs with the `first` in place is renamed into place
/// (rolling forward when it is the new one, back when the old `first` was never moved); else a
/// moved-aside `first` and `second` that pair are renamed back, `first` then `second`. Only
/// renames: nothing is deleted, so a crash here too leaves a state this function repairs. The
/// leftovers are removed by the next successful write. Does nothing when `second` exists.
///
/// # Errors
///
/// [`Error::Io`] when a rename fails (a read-only directory, say), naming the file.
pub fn recover_pair(
    first: &Path,
    second: &Path,
    pairs: &dyn Fn(&Path, &Path) -> bool,
) -> Result<Recovery> {
    if std::fs::symlink_metadata(second).is_ok() {
        return Ok(Recovery::Untouched);
    }
    let dir = parent_dir(second);
    let _lock = DirLock::new(dir)?;
    if std::fs::symlink_metadata(second).is_ok() {
        // A commit finished while this waited for the lock.
        return Ok(Recovery::Untouched);
    }
    let old_seconds = leftovers(second, OLD_SUFFIX)?;
    let old_firsts = leftovers(first, OLD_SUFFIX)?;
    let restore = |from: &Path, to: &Path| -> Result<()> {
        fault("rename a file back into place")
            .and_then(|()| std::fs::rename(from, to))
            .map_err(|e| Error::io(to, "restore (from an interrupted write)", e))?;
        sync_dir(to)
    };
    if std::fs::metadata(first).is_ok_and(|m| m.is_file()) {
        // The `first` in place is the old one only if its commit did not move it aside (no
        // moved-aside `first` shares the old `second`'s tag): an old `second` is never put
        // beside a new `first`, however well they seem to validate (a `second` without a
        // trailer is checked against the structure alone).
        let first_is_old = |s: &PathBuf| !old_firsts.iter().any(|f| tag_of(f) == tag_of(s));
        if let Some(old) = old_seconds
            .iter()
            .find(|s| first_is_old(s) && pairs(first, s))
        {
            restore(old, second)?;
            tracing::warn!(file = %second.display(), "rolled back an interrupted write: the old pair is in place");
            return Ok(Recovery::RolledBack);
        }
        let dead_temporaries: Vec<PathBuf> = leftovers(second, TMP_SUFFIX)?
            .into_iter()
            .filter(|t| unlocked(t))
            .collect();
        if let Some(new) = dead_temporaries.iter().find(|s| pairs(first, s)) {
            restore(new, second)?;
            tracing::warn!(file = %second.display(), "rolled an interrupted write forward: the new pair is in place");
            return Ok(Recovery::RolledForward);
        }
    }
    // The old pair, both aside: the files one commit moved share its tag.
    let old_pair = old_seconds.iter().find_map(|s| {
        let f = old_firsts.iter().find(|f| tag_of(f) == tag_of(s))?;
        pairs(f, s).then_some((f, s))
    });
    if let Some((old_first, old_second)) = old_pair {
        restore(old_first, first)?;
        restore(old_second, second)?;
        tracing::warn!(file = %second.display(), "rolled back an interrupted write: the old pair is in place");
        return Ok(Recovery::RolledBack);
    }
    Ok(Recovery::Untouched)
}

/// Whether an interrupted pair commit left files for `second` aside (`.NAME.TAG.old`), or a
/// dead writer's temporary beside an existing `first`: the signs that [`recover_pair`] may
/// restore a pair whose `second` is missing.
pub(crate) fn interrupted_pair(first: &Path, second: &Path) -> bool {
    let old = leftovers(second, OLD_SUFFIX).is_ok_and(|o| !o.is_empty());
    old || (first.is_file()
        && leftovers(second, TMP_SUFFIX).is_ok_and(|t| t.iter().any(|p| unlocked(p))))
}

/// The hidden files `.NAME.XXXXXX{suffix}` beside `dest`, sorted.
fn leftovers(dest: &Path, suffix: &str) -> Result<Vec<PathBuf>> {
    let dir = parent_dir(dest);
    let stem = format!(".{}.", file_name(dest));
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, "list", e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, "list", e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // `.NAME.XXXXXX.tmp` only: `.NAME.idx.XXXXXX.tmp` belongs to another destination.
        let random = name
            .strip_prefix(&stem)
            .and_then(|middle| middle.strip_suffix(suffix));
        if random.is_some_and(|r| !r.is_empty() && !r.contains('.')) {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Whether nobody holds `path`'s lock (its writer is gone). A file that cannot be opened or
/// locked counts as held: it is left alone.
fn unlocked(path: &Path) -> bool {
    open_to_lock(path).is_ok_and(|f| f.try_lock().is_ok())
}

/// Opens a leftover to test its lock: for writing too, since NFS emulates `flock` with POSIX
/// locks, which refuse an exclusive lock on a file opened for reading only.
fn open_to_lock(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
}

/// An exclusive lock on a directory, held while a pair is committed or recovered there. A file
/// system without locks only loses the exclusion between processes (a commit in this process
/// still excludes others through `COMMIT`).
struct DirLock(#[allow(dead_code)] Option<File>);

/// How long a commit or a recovery waits for another process's hold on the directory (a commit
/// holds it for a few renames and fsyncs).
const DIR_LOCK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

impl DirLock {
    /// Takes the lock, waiting at most [`DIR_LOCK_DEADLINE`].
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming the directory when another process holds it past the deadline.
    fn new(dir: &Path) -> Result<Self> {
        let Ok(file) = File::open(dir) else {
            return Ok(DirLock(None));
        };
        let started = std::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(DirLock(Some(file))),
                Err(std::fs::TryLockError::WouldBlock) => {}
                // No locks on this file system.
                Err(std::fs::TryLockError::Error(_)) => return Ok(DirLock(None)),
            }
            if started.elapsed() > DIR_LOCK_DEADLINE {
                return Err(Error::Io {
                    path: dir.to_path_buf(),
                    action: "lock the directory for a shard commit (another process has held it \
                             for 120 s: a write or recovery that is stuck)",
                    error: std::io::ErrorKind::TimedOut.into(),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// The leftovers of earlier writes to one destination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stale {
    /// Files of writes that died (their lock is free), removed, with their sizes in bytes.
    pub removed: Vec<(PathBuf, u64)>,
    /// Temporary files whose writer still holds them: a write in progress.
    pub busy: Vec<PathBuf>,
}

/// Removes the temporary and moved-aside files that earlier, killed writes to `dest` left behind
/// (`.NAME.XXXXXX.tmp`, `.NAME.XXXXXX.old` whose lock nobody holds), and lists those still held
/// by a live writer. Writers call it once their own file is in place, never before: until then a
/// moved-aside file may be all that is left of the old version.
///
/// # Errors
///
/// [`Error::Io`] when the directory cannot be listed or a stale file cannot be removed.
pub(crate) fn remove_stale(dest: &Path) -> Result<Stale> {
    scan_stale(dest, true)
}

/// Lists the leftovers of `dest` by their locks: unlocked ones in [`Stale::removed`] (removed
/// first when `remove` is set, while the lock is held: a writer that created the file a moment
/// ago and locks it now finds its path gone and makes another, see `still_named`), locked ones
/// in [`Stale::busy`].
fn scan_stale(dest: &Path, remove: bool) -> Result<Stale> {
    let mut stale = Stale::default();
    let mut found = leftovers(dest, TMP_SUFFIX)?;
    found.extend(leftovers(dest, OLD_SUFFIX)?);
    for path in found {
        let Ok(file) = open_to_lock(&path) else {
            continue;
        };
        match file.try_lock() {
            Ok(()) => {
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                if remove {
                    match fault("remove a leftover file").and_then(|()| std::fs::remove_file(&path))
                    {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(Error::io(
                                &path,
                                "remove the leftover of an interrupted write",
                                e,
                            ));
                        }
                        _ => {}
                    }
                    tracing::debug!(file = %path.display(), bytes = len, "removed the leftover of an earlier write");
                }
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

/// Whether the temporary file's path still names the file it was created as (a cleanup of
/// another write may have removed it before it was locked).
fn still_named(tmp: &NamedTempFile) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let (Ok(by_path), Ok(open)) = (std::fs::metadata(tmp.path()), tmp.as_file().metadata())
        else {
            return false;
        };
        by_path.dev() == open.dev() && by_path.ino() == open.ino()
    }
    #[cfg(not(unix))]
    {
        tmp.path().exists()
    }
}

/// Lists what [`remove_stale`] would remove (in [`Stale::removed`]) and the temporary files of
/// live writers, without removing anything.
///
/// # Errors
///
/// [`Error::Io`] when the directory cannot be listed.
pub(crate) fn find_stale(dest: &Path) -> Result<Stale> {
    scan_stale(dest, false)
}

/// A tag for the files one pair commit moves aside: unique in this process and across processes
/// (pid, clock, sequence).
fn aside_tag() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{:x}{:x}{:x}",
        std::process::id(),
        nanos,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The hidden name beside `dest` for the file it replaces: `.NAME.TAG.old`.
fn aside_name(dest: &Path, tag: &str) -> PathBuf {
    parent_dir(dest).join(format!(".{}.{tag}{OLD_SUFFIX}", file_name(dest)))
}

/// The tag of a moved-aside file's name (`.NAME.TAG.old`).
fn tag_of(aside: &Path) -> Option<String> {
    let name = aside.file_name()?.to_string_lossy().into_owned();
    let rest = name.strip_suffix(OLD_SUFFIX)?;
    Some(rest.rsplit_once('.')?.1.to_owned())
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
