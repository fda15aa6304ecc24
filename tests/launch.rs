//! `shardflow launch`: every rank's variables, prefixed output, and a failing rank that stops
//! the others and is named; the multi-process demo; `shardflow devices`.

mod common;

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
    let out = shardflow()
        .args(["launch", "--nproc", "0", "--", "true"])
        .output()
        .unwrap();
    assert!(String::from_utf8(out.stderr).unwrap().contains("--nproc 0"));
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
