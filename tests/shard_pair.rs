//! A shard is a pair of files: whatever happens while one is written (a crash or a failed call
//! at any rename, fsync or removal, Ctrl-C, SIGTERM, a copy of one file from elsewhere), a
//! later open reads the old pair, the new pair, or fails naming the file; never tokens of
//! neither. The writes here run the `shardflow` binary, so a crash is a real process exit.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::cmd::{p, shardflow};

use shardflow::shard::{TRAILER_LEN, TRAILER_MAGIC};
use shardflow::{Dtype, Error, IndexedShard, IndexedWriter, Shard};

/// Every sequence's tokens, or the error opening gives.
fn read(prefix: &Path) -> Result<Vec<Vec<i64>>, Error> {
    let shard = IndexedShard::open(prefix)?;
    Ok((0..shard.len())
        .map(|i| shard.get(i).unwrap().to_vec())
        .collect())
}

/// Byte-level tokens of each paragraph, as `write` makes them (EOD 256 after each).
#[cfg(feature = "fault-injection")]
fn tokens_of(paragraphs: &[&str]) -> Vec<Vec<i64>> {
    paragraphs
        .iter()
        .map(|t| t.bytes().map(i64::from).chain([256]).collect())
        .collect()
}

/// Hidden files (temporaries, moved-aside files) in `dir`.
fn hidden(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

fn write(input: &Path, prefix: &Path, fault: Option<(u64, &str)>) -> Output {
    let mut cmd = shardflow();
    cmd.args(["write", "--input", p(input), "--output", p(prefix)]);
    cmd.env("SHARDFLOW_FAULT_TRACE", "1");
    if let Some((at, mode)) = fault {
        cmd.env("SHARDFLOW_FAULT_AT", at.to_string())
            .env("SHARDFLOW_FAULT_MODE", mode);
    }
    cmd.output().unwrap()
}

/// Runs `shardflow ARGS` with a fault injected at point `at` (crash or error), or none.
#[cfg(feature = "fault-injection")]
fn faulted(args: &[&str], fault: Option<(u64, &str)>) -> (Output, bool) {
    let mut cmd = shardflow();
    cmd.args(args).env("SHARDFLOW_FAULT_TRACE", "1");
    if let Some((at, mode)) = fault {
        cmd.env("SHARDFLOW_FAULT_AT", at.to_string())
            .env("SHARDFLOW_FAULT_MODE", mode);
    }
    let out = cmd.output().unwrap();
    let hit = String::from_utf8_lossy(&out.stderr).contains("fault injected");
    (out, hit)
}

/// Every file of `dir` with its bytes (to put a crash state back between runs).
#[cfg(feature = "fault-injection")]
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    files
}

#[cfg(feature = "fault-injection")]
fn restore(dir: &Path, files: &[(PathBuf, Vec<u8>)]) {
    for e in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    for (p, bytes) in files {
        std::fs::write(p, bytes).unwrap();
    }
}

/// What a reader may find after a write was stopped: for an overwrite the old or the new pair,
/// always (an interrupted commit is rolled back or forward); for a first write the new pair or
/// nothing, named. Returns the version read, if any.
#[cfg(feature = "fault-injection")]
fn readable_version(
    prefix: &Path,
    overwrite: bool,
    old: &[Vec<i64>],
    new: &[Vec<i64>],
    case: &str,
) -> Option<Vec<Vec<i64>>> {
    match read(prefix) {
        Ok(tokens) => {
            assert!(
                tokens == new || (overwrite && tokens == old),
                "tokens of neither version; {case}"
            );
            Some(tokens)
        }
        Err(e) => {
            assert!(
                !overwrite,
                "an interrupted overwrite is recovered: {e}; {case}"
            );
            let named = matches!(&e, Error::UnpairedShard { .. } | Error::MissingFile { .. });
            assert!(named, "{e}; {case}");
            assert!(e.to_string().contains("shard.idx"), "{e}; {case}");
            None
        }
    }
}

/// The crash states of a pair write (README, "A pair that can never mix"), each reached by
/// stopping `write` at every rename, fsync and removal, by a kill and by a failed call:
/// afterwards a reader gets the old or the new pair (an interrupted commit is rolled back or
/// forward by the next reader or writer, by renames, before anything is deleted); a following
/// write that fails on bad input leaves that version in place; a reader's own recovery,
/// stopped at each of its steps, leaves a state the next one recovers; the next good write
/// succeeds and leaves no hidden file.
#[cfg(feature = "fault-injection")]
#[test]
fn a_write_stopped_at_any_step_leaves_the_old_pair_the_new_pair_or_an_error() {
    let old_text = ["the old shard", "two paragraphs"];
    let new_text = ["a new shard of", "three paragraphs", "with other lengths!"];
    let (old, new) = (tokens_of(&old_text), tokens_of(&new_text));
    let dir = tempfile::tempdir().unwrap();
    let old_input = dir.path().join("old.txt");
    let new_input = dir.path().join("new.txt");
    let bad_input = dir.path().join("bad.jsonl");
    std::fs::write(&old_input, old_text.join("\n\n")).unwrap();
    std::fs::write(&new_input, new_text.join("\n\n")).unwrap();
    std::fs::write(&bad_input, "{\"text\": \"fine\"}\n{not json\n").unwrap();
    let mut points_seen = 0;
    let mut recovery_points = 0;
    let mut states = std::collections::BTreeSet::new();
    // The old pair: none, shardflow's (with its trailer), or another tool's (no trailer: only the
    // structure can tell which .bin its .idx belongs to, and the new .bin is longer).
    for old_pair in ["none", "ours", "foreign"] {
        let overwrite = old_pair != "none";
        for mode in ["crash", "error"] {
            for at in 0.. {
                let out_dir = tempfile::tempdir().unwrap();
                let prefix = out_dir.path().join("shard");
                if overwrite {
                    assert!(write(&old_input, &prefix, None).status.success());
                }
                if old_pair == "foreign" {
                    let idx = prefix.with_extension("idx");
                    let bytes = std::fs::read(&idx).unwrap();
                    std::fs::write(&idx, &bytes[..bytes.len() - TRAILER_LEN]).unwrap();
                    assert!(IndexedShard::open(&prefix).unwrap().trailer().is_none());
                }
                let run = write(&new_input, &prefix, Some((at, mode)));
                let stderr = String::from_utf8_lossy(&run.stderr).to_string();
                let case = format!("{mode} at point {at} (old pair: {old_pair}): {stderr}");
                if !stderr.contains("fault injected") {
                    // Past the last fault point: the write went through.
                    assert!(run.status.success(), "{case}");
                    assert_eq!(read(&prefix).unwrap(), new, "{case}");
                    assert_eq!(hidden(out_dir.path()), Vec::<String>::new(), "{case}");
                    points_seen = points_seen.max(at);
                    break;
                }
                assert!(!run.status.success(), "{case}");
                let mut state = hidden(out_dir.path());
                state.iter_mut().for_each(|n| {
                    *n = n
                        .split('.')
                        .filter(|p| !p.is_empty())
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(".")
                        + if n.ends_with(".old") { ".old" } else { ".tmp" }
                });
                state.sort();
                states.insert((prefix.with_extension("idx").exists(), state));
                if mode == "error" && !stderr.contains("remove a leftover file") {
                    // A failed call cleans up after itself at once.
                    assert_eq!(hidden(out_dir.path()), Vec::<String>::new(), "{case}");
                }
                let crashed = snapshot(out_dir.path());

                // (a) A reader first: it recovers; a failing write then changes nothing.
                let version = readable_version(&prefix, overwrite, &old, &new, &case);
                let bad = write(&bad_input, &prefix, None);
                assert!(!bad.status.success(), "{case}");
                let after = readable_version(&prefix, overwrite, &old, &new, &case);
                assert_eq!(after, version, "a failed write changed the shard; {case}");

                // (b) A failing write first: it recovers the pair before anything is deleted.
                restore(out_dir.path(), &crashed);
                let bad = write(&bad_input, &prefix, None);
                assert!(!bad.status.success(), "{case}");
                let after = readable_version(&prefix, overwrite, &old, &new, &case);
                assert_eq!(after, version, "the failed write lost a version; {case}");

                // (c) The reader's recovery stopped at each of its own steps.
                for rat in 0.. {
                    restore(out_dir.path(), &crashed);
                    let (_, hit) = faulted(&["inspect", p(&prefix)], Some((rat, mode)));
                    let rcase = format!("recovery {mode} at {rat}; {case}");
                    let got = readable_version(&prefix, overwrite, &old, &new, &rcase);
                    assert_eq!(got, version, "{rcase}");
                    if !hit {
                        recovery_points = recovery_points.max(rat);
                        break;
                    }
                }

                // The next good write cleans up and succeeds.
                let again = write(&new_input, &prefix, None);
                assert!(again.status.success(), "{case}");
                assert_eq!(read(&prefix).unwrap(), new, "{case}");
                assert_eq!(hidden(out_dir.path()), Vec::<String>::new(), "{case}");
            }
        }
    }
    assert!(
        points_seen >= 9,
        "an overwrite passes every rename, fsync and removal: {points_seen} points"
    );
    // Recovery renames the .bin and the .idx back (each followed by a directory fsync).
    assert!(recovery_points >= 2, "{recovery_points} recovery points");
    // The states the README lists: the .idx missing with the old pair aside, with the new .bin
    // in place and the new .idx complete under its temporary name, and the new pair with the
    // old files still aside.
    let apart = states.iter().filter(|(idx, _)| !idx).count();
    assert!(apart >= 3, "{states:?}");
}

#[test]
fn a_bin_from_another_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let write_shard = |name: &str, seqs: &[&[u32]]| {
        let prefix = dir.path().join(name);
        let mut w = IndexedWriter::create(&prefix, Some(Dtype::U16)).unwrap();
        for s in seqs {
            w.add_sequence(s).unwrap();
        }
        w.finish().unwrap();
        prefix
    };
    let a = write_shard("a", &[&[1, 2, 3], &[4, 5]]);
    let longer = write_shard("longer", &[&[1, 2, 3], &[4, 5, 6]]);
    let same_len = write_shard("same", &[&[9, 8], &[7, 6, 5]]);
    let a_bin = a.with_extension("bin");

    std::fs::copy(longer.with_extension("bin"), &a_bin).unwrap();
    let e = read(&a).unwrap_err();
    assert!(matches!(e, Error::UnpairedShard { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("a.idx") && msg.contains("a.bin"), "{msg}");
    assert!(
        msg.contains("written for a .bin of 10 bytes, but this .bin holds 12"),
        "{msg}"
    );

    // Same length, other layout: the ids would be cut in the wrong places.
    std::fs::copy(same_len.with_extension("bin"), &a_bin).unwrap();
    let e = read(&a).unwrap_err();
    assert!(e.to_string().contains("its sampled hash differs"), "{e}");
}

#[test]
fn a_changed_index_or_trailer_is_refused_and_verify_reads_the_whole_bin() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("big");
    let mut w = IndexedWriter::create(&prefix, Some(Dtype::U16)).unwrap();
    // 200 000 tokens: more than the 64 KiB the open-time sample reads.
    for s in 0..100u32 {
        let seq: Vec<u32> = (0..2000).map(|j| (s * 7 + j) % 60_000).collect();
        w.add_sequence(&seq).unwrap();
        w.end_document().unwrap();
    }
    w.finish().unwrap();
    let (idx_path, bin_path) = (prefix.with_extension("idx"), prefix.with_extension("bin"));
    let shard = IndexedShard::open(&prefix).unwrap();
    assert!(shard.trailer().is_some());
    assert!(shard.verify().unwrap());
    drop(shard);

    // The trailer is the last 48 bytes and opens with its magic.
    let idx = std::fs::read(&idx_path).unwrap();
    let docs_end = idx.len() - TRAILER_LEN;
    assert_eq!(docs_end, 34 + 12 * 100 + 8 * 101);
    assert_eq!(&idx[docs_end..docs_end + 8], TRAILER_MAGIC);

    // A byte of the .bin that the sample skips: opening passes, verify does not.
    let mut bin = std::fs::read(&bin_path).unwrap();
    bin[4096 + 100] ^= 0x55;
    std::fs::write(&bin_path, &bin).unwrap();
    let shard = IndexedShard::open(&prefix).unwrap();
    let e = shard.verify().unwrap_err();
    assert!(matches!(e, Error::UnpairedShard { .. }), "{e}");
    assert!(e.to_string().contains("XXH64"), "{e}");
    drop(shard);
    bin[4096 + 100] ^= 0x55;
    std::fs::write(&bin_path, &bin).unwrap();

    // A changed length that is still valid Megatron: the index hash catches it.
    let mut changed = idx.clone();
    changed[34 + 12 * 100 + 8 * 50] ^= 1; // a document boundary, 50 -> 51
    std::fs::write(&idx_path, &changed).unwrap();
    let e = read(&prefix).unwrap_err();
    assert!(matches!(e, Error::BadTrailer { .. }), "{e}");
    assert!(e.to_string().contains("the index bytes changed"), "{e}");

    // A damaged trailer.
    let mut changed = idx.clone();
    changed[docs_end + 20] ^= 1;
    std::fs::write(&idx_path, &changed).unwrap();
    let e = read(&prefix).unwrap_err();
    assert!(e.to_string().contains("trailer is damaged"), "{e}");

    // Without the trailer the shard is plain Megatron: it opens, with nothing to verify.
    std::fs::write(&idx_path, &idx[..docs_end]).unwrap();
    let shard = IndexedShard::open(&prefix).unwrap();
    assert!(shard.trailer().is_none());
    assert!(!shard.verify().unwrap());
}

#[test]
fn stale_temporaries_are_removed_and_a_live_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("web");
    let stale = dir.path().join(".web.bin.Ab12Cd.tmp");
    let aside = dir.path().join(".web.idx.1f2e3d.old");
    let other = dir.path().join(".web.bin.idx.Zz99Yy.tmp"); // not this prefix's
    std::fs::write(&stale, vec![0u8; 1000]).unwrap();
    std::fs::write(&aside, b"old").unwrap();
    std::fs::write(&other, b"keep").unwrap();
    let mut w = IndexedWriter::create(&prefix, None).unwrap();
    let mut removed: Vec<(PathBuf, u64)> = w.removed_stale().to_vec();
    removed.sort();
    assert_eq!(removed, vec![(stale.clone(), 1000), (aside.clone(), 3)]);
    // Nothing is removed before this write's own pair is complete: the moved-aside file may be
    // all that is left of an earlier version.
    assert!(stale.exists() && aside.exists());
    assert!(other.exists());
    w.add_sequence(&[1u32, 2]).unwrap();

    // While this writer lives, its temporary file is locked: a second write is refused.
    let e = IndexedWriter::create(&prefix, None).unwrap_err();
    assert!(e.to_string().contains("another write to"), "{e}");
    w.finish().unwrap();
    assert_eq!(read(&prefix).unwrap(), vec![vec![1, 2]]);
    assert!(
        !stale.exists() && !aside.exists(),
        "removed once the pair is in place"
    );
    assert!(other.exists());

    // Shard files get the mode any new file gets (0666 less the umask), not a temporary
    // file's owner-only 0600.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&prefix.with_extension("bin")), mode(&plain));
        assert_eq!(mode(&prefix.with_extension("idx")), mode(&plain));
    }
}

#[test]
fn bad_output_prefixes_fail_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "hello").unwrap();
    let err = |out: Output| {
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };

    // A missing output directory is created, as `demo` and `launch` create theirs.
    let made = write(&input, &dir.path().join("missing/deeper/x"), None);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    assert_eq!(read(&dir.path().join("missing/deeper/x")).unwrap().len(), 1);

    // A directory that exists but takes no new files: the system's reason, not "not found".
    if Path::new("/proc/self").exists() {
        let msg = err(write(&input, Path::new("/proc/o1"), None));
        assert!(
            msg.contains("/proc: cannot create a new file here"),
            "{msg}"
        );
        assert!(!msg.contains("file not found"), "{msg}");
    }

    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let mut slash = sub.as_os_str().to_owned();
    slash.push("/");
    let msg = err(write(&input, Path::new(&slash), None));
    assert!(
        msg.contains("is a directory; a prefix names the shard inside it"),
        "{msg}"
    );
    let msg = err(write(&input, &sub, None));
    assert!(msg.contains("is a directory"), "{msg}");
    assert_eq!(
        std::fs::read_dir(&sub).unwrap().count(),
        0,
        "no hidden .bin/.idx"
    );

    // P.idx is a directory: refused up front, and P.bin is not left behind.
    std::fs::create_dir(dir.path().join("p.idx")).unwrap();
    let msg = err(write(&input, &dir.path().join("p"), None));
    assert!(
        msg.contains("p.idx: is a directory, not a regular file"),
        "{msg}"
    );
    assert!(!dir.path().join("p.bin").exists());
    assert_eq!(hidden(dir.path()), Vec::<String>::new());
}

#[test]
fn sigterm_and_sigint_remove_a_write_in_progress() {
    for (signal, status) in [("TERM", 143), ("INT", 130)] {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("piped");
        let mut child = shardflow()
            .args(["write", "--input", "-", "--output", p(&prefix)])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, b"some text\n\nmore text\n").unwrap();
        // Wait until the write has started (its temporary .bin exists).
        let started = std::time::Instant::now();
        while !hidden(dir.path())
            .iter()
            .any(|n| n.starts_with(".piped.bin."))
        {
            assert!(started.elapsed().as_secs() < 20, "the write did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let kill = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let out = child.wait_with_output().unwrap();
        drop(stdin);
        assert_eq!(out.status.code(), Some(status), "SIG{signal}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("removed 1 temporary file"), "{stderr}");
        assert_eq!(hidden(dir.path()), Vec::<String>::new(), "SIG{signal}");
        assert!(!prefix.with_extension("bin").exists());
    }
}
