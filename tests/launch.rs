//! `shardflow launch`: every rank's variables, prefixed output, and a failing rank that stops
//! the others and is named; the multi-process demo; `shardflow devices`.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::cmd::shardflow;

#[test]
fn every_rank_gets_its_variables_and_its_prefix() {
    let store = tempfile::tempdir().unwrap();
    let out = shardflow()
        .args(["launch", "--nproc", "3", "--store"])
        .arg(store.path())
        .args(["--", "sh", "-c"])
        .arg("echo \"$RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $SHARDFLOW_STORE\"; echo e$RANK >&2")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort();
    let dir = store.path().display();
    assert_eq!(
        lines,
        [
            format!("[rank 0] 0 3 0 3 {dir}"),
            format!("[rank 1] 1 3 1 3 {dir}"),
            format!("[rank 2] 2 3 2 3 {dir}"),
        ]
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    for r in 0..3 {
        assert!(stderr.contains(&format!("[rank {r}] e{r}\n")), "{stderr}");
    }
}

#[test]
fn a_failing_rank_stops_the_others_and_is_named() {
    let start = Instant::now();
    let out = shardflow()
        .args(["launch", "--nproc", "4", "--", "sh", "-c"])
        .arg("if [ \"$RANK\" = 2 ]; then sleep 0.3; exit 7; fi; sleep 60")
        .output()
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "the others were not stopped: {:?}",
        start.elapsed()
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("rank 2 failed (exit status 7); the other 3 ranks were stopped"),
        "{stderr}"
    );
}

#[test]
fn a_command_that_cannot_start_and_a_bad_count_are_errors() {
    let out = shardflow()
        .args(["launch", "--nproc", "2", "--", "/nonexistent/program"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("cannot start \"/nonexistent/program\" for rank 0"),
        "{stderr}"
    );
    // A count out of range is a usage error, in clap's words.
    let out = shardflow()
        .args(["launch", "--nproc", "0", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().starts_with(
        "error: invalid value '0' for '--nproc <NPROC>': start 1 to 1024 processes\n"
    ));
}

/// Starts `launch ARGS` in `cwd` with stdout piped, and waits until every one of `ranks`
/// printed `ready`.
fn launch_until_ready(cwd: &Path, args: &[&str], ranks: usize) -> (Child, BufReader<ChildStdout>) {
    let mut child = shardflow()
        .current_dir(cwd)
        .arg("launch")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut ready = 0;
    let mut line = String::new();
    while ready < ranks {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the launcher ended early"
        );
        if line.ends_with("] ready\n") {
            ready += 1;
        }
    }
    (child, out)
}

/// Sends `sig` (`TERM`, `INT`) to process `pid`.
fn kill(sig: &str, pid: u32) {
    let status = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// What is left of the launcher after it ended: its status, the rest of its stdout, its stderr.
fn finish(mut child: Child, mut out: BufReader<ChildStdout>) -> (Option<i32>, String, String) {
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap().code(), rest, err)
}

#[test]
fn a_signal_is_passed_on_and_the_ranks_are_waited_for_before_the_store_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    // Each rank saves a "checkpoint" on SIGTERM, slowly.
    let script = "trap 'sleep 1; echo saved > ckpt.$RANK; exit 0' TERM; echo ready; \
                  while :; do sleep 0.1; done";
    let (child, out) =
        launch_until_ready(dir.path(), &["--nproc", "2", "--", "sh", "-c", script], 2);
    assert_eq!(entries(dir.path()).len(), 1, "the launcher's store");
    kill("TERM", child.id());
    let (code, _, err) = finish(child, out);
    assert_eq!(code, Some(143), "{err}");
    assert!(
        err.ends_with(
            "interrupted by signal 15; passed it on to the ranks and waited for them to exit; \
             removed the job's store\n"
        ),
        "{err}"
    );
    for rank in 0..2 {
        assert_eq!(
            std::fs::read_to_string(dir.path().join(format!("ckpt.{rank}"))).unwrap(),
            "saved\n"
        );
    }
    assert_eq!(
        entries(dir.path()),
        ["ckpt.0", "ckpt.1"],
        "no .shardflow-launch-* left"
    );
}

#[test]
fn ranks_that_do_not_exit_are_killed_after_the_grace_period_or_a_second_signal() {
    let dir = tempfile::tempdir().unwrap();
    let script = "trap '' TERM INT; echo ready; while :; do sleep 0.1; done";
    let start = Instant::now();
    let (child, out) = launch_until_ready(
        dir.path(),
        &["--nproc", "2", "--grace", "1", "--", "sh", "-c", script],
        2,
    );
    kill("TERM", child.id());
    let (code, _, err) = finish(child, out);
    assert_eq!(code, Some(143), "{err}");
    assert!(err.contains("exit (2 killed with SIGKILL)"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );

    // A second signal does not wait for the grace period.
    let start = Instant::now();
    let (child, out) = launch_until_ready(
        dir.path(),
        &["--nproc", "1", "--grace", "600", "--", "sh", "-c", script],
        1,
    );
    kill("INT", child.id());
    std::thread::sleep(Duration::from_millis(300));
    kill("INT", child.id());
    let (code, _, err) = finish(child, out);
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("(1 killed with SIGKILL)"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
}

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn a_closed_stdout_ends_the_job_quietly_with_141() {
    let dir = tempfile::tempdir().unwrap();
    // `launch ... | head -2`
    let script = "echo ready; i=0; while :; do echo line $i; i=$((i+1)); done";
    let (child, out) =
        launch_until_ready(dir.path(), &["--nproc", "1", "--", "sh", "-c", script], 1);
    let mut out = out;
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "[rank 0] line 0\n");
    drop(out);
    let mut child = child;
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(141), "{err}");
    assert_eq!(err, "");
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn a_full_stdout_is_the_launchers_error_not_the_ranks() {
    for script in ["echo hi", "while :; do echo hi; done"] {
        let out = shardflow()
            .args(["launch", "--nproc", "1", "--", "sh", "-c", script])
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{script}: {err}");
        assert_eq!(
            err, "error: <stdout>: cannot write to: No space left on device (os error 28)\n",
            "{script}"
        );
    }
}

#[test]
fn rank_output_passes_as_bytes() {
    let out = shardflow()
        .args(["launch", "--nproc", "1", "--", "sh", "-c"])
        .arg("printf 'a\\377\\376b\\n'; printf '\\377\\n' >&2")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"[rank 0] a\xff\xfeb\n");
    assert_eq!(out.stderr, b"[rank 0] \xff\n");
}

#[test]
fn a_store_must_exist_and_the_jobs_directory_in_it_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexistent");
    let out = shardflow()
        .args(["launch", "--nproc", "1", "--store"])
        .arg(&missing)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: file store {}: --store does not exist; create the directory first (launch \
             does not, so that a mistyped path is not a new store)\n",
            missing.display()
        )
    );
    assert!(!missing.exists());
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let out = shardflow()
        .args(["launch", "--nproc", "1", "--store"])
        .arg(&file)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: file store {}: --store is not a directory; give a directory every rank can \
             reach\n",
            file.display()
        )
    );
    // What a rank's file store makes in the job's directory goes when the job ends, also when
    // the rank fails; what was there before stays.
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    std::fs::write(store.join("keep"), "").unwrap();
    for exit in ["0", "3"] {
        let out = shardflow()
            .args(["launch", "--nproc", "2", "--store"])
            .arg(&store)
            .args(["--", "sh", "-c"])
            .arg(format!(
                "d=\"$SHARDFLOW_STORE/job-$SHARDFLOW_JOB\"; mkdir -p \"$d\" && echo x > \"$d/f.$RANK\" \
                 && exit {exit}"
            ))
            .output()
            .unwrap();
        assert_eq!(out.status.success(), exit == "0", "{out:?}");
        assert_eq!(entries(&store), ["keep"]);
    }
}

#[test]
fn ranks_get_a_master_address_and_a_free_port() {
    let out = shardflow()
        .env_remove("MASTER_ADDR")
        .env_remove("MASTER_PORT")
        .args(["launch", "--nproc", "2", "--", "sh", "-c"])
        .arg("echo \"$MASTER_ADDR $MASTER_PORT\"")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let seen: Vec<&str> = stdout.lines().map(|l| &l[9..]).collect();
    assert_eq!(seen.len(), 2, "{stdout}");
    assert_eq!(seen[0], seen[1], "every rank gets the same address");
    let port: u16 = seen[0].strip_prefix("127.0.0.1 ").unwrap().parse().unwrap();
    assert!(port > 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    // The environment's choice wins.
    let out = shardflow()
        .env("MASTER_ADDR", "10.0.0.1")
        .env("MASTER_PORT", "29555")
        .args(["launch", "--nproc", "1", "--", "sh", "-c"])
        .arg("echo \"$MASTER_ADDR $MASTER_PORT\"")
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"[rank 0] 10.0.0.1 29555\n");
}

#[test]
fn two_processes_agree_on_the_config_and_load_their_slices_of_the_same_batches() {
    let store = tempfile::tempdir().unwrap();
    let out = shardflow()
        .args(["launch", "--nproc", "2", "--store"])
        .arg(store.path())
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_shardflow"))
        .args(["demo", "--world-from-env"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("config agreed"))
        .map(|l| l.split("run ").nth(1).unwrap())
        .collect();
    assert_eq!(names.len(), 2);
    assert_eq!(names[0], names[1], "both ranks derived the same run name");
    assert!(stdout.contains("[rank 0] check rank 1: 480 rows planned, 480 received: identical"));
    assert!(stdout.contains("all 2 ranks loaded exactly their slices of the same global batches"));
    // The job's directory (its corpus: about 10 MB) is removed; the given store stays.
    assert_eq!(std::fs::read_dir(store.path()).unwrap().count(), 0);
}

#[test]
fn devices_lists_each_path_or_why_it_is_missing() {
    let out = shardflow().arg("devices").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("wgpu: "), "{stdout}");
    #[cfg(feature = "cuda")]
    for path in ["cuda: ", "nvrtc: ", "nccl: "] {
        assert!(
            lines.iter().any(|l| l.starts_with(path)),
            "{path}: {stdout}"
        );
    }
}
