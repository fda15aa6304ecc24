//! The command at its edges, as a new user or an attacker meets it: closed pipes and full disks,
//! numbers too large for their meaning, and errors that say what is wrong.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cmd::{ok, p, run as shardflow};

/// The command's stderr; it must have failed with status 1 (not a panic's 101).
fn fails(args: &[&str]) -> String {
    let out = shardflow(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    err
}

/// A small shard at `dir/name` (three paragraphs).
fn shard(dir: &Path, name: &str) -> std::path::PathBuf {
    let input = dir.join(format!("{name}.txt"));
    std::fs::write(&input, "one\n\ntwo two\n\nthree three three\n").unwrap();
    let prefix = dir.join(name);
    ok(&["write", "--input", p(&input), "--output", p(&prefix)]);
    prefix
}

#[test]
fn a_closed_pipe_ends_quietly_with_status_141() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardflow"))
        .args(["plan", "--data", "a=1000", "--steps", "100000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("step"), "{first}");
    // The reader goes away (`| head -1`).
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(141));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

#[test]
fn a_full_disk_is_an_error_for_every_command() {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipped: no /dev/full on this machine");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = shard(dir.path(), "s");
    let input = dir.path().join("s.txt");
    let out_prefix = dir.path().join("t");
    let demo_dir = dir.path().join("demo");
    let runs: [&[&str]; 6] = [
        &["inspect", p(&prefix)],
        &["cat", p(&prefix)],
        &["plan", "--data", "a=5", "--steps", "3"],
        &["write", "--input", p(&input), "--output", p(&out_prefix)],
        &[
            "bench",
            "--data",
            p(&prefix),
            "--batches",
            "3",
            "--workers",
            "0",
        ],
        &["demo", "--dir", p(&demo_dir)],
    ];
    for args in runs {
        let out = Command::new(env!("CARGO_BIN_EXE_shardflow"))
            .args(args)
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("<stdout>: cannot write to: No space left on device"),
            "{args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "one line, no repeated cause: {err}");
    }
}

#[test]
fn sizes_that_overflow_or_would_exhaust_memory_are_refused() {
    let err = fails(&[
        "plan",
        "--data",
        "a=10",
        "--world",
        "3",
        "--local-batch",
        "6148914691236517206",
    ]);
    assert!(
        err.contains(
            "world size 3 x local batch 6148914691236517206 exceeds the largest global batch"
        ),
        "{err}"
    );
    let err = fails(&[
        "plan",
        "--data",
        "a=10",
        "--world",
        "4294967296",
        "--local-batch",
        "4294967296",
    ]);
    assert!(err.contains("exceeds the largest global batch"), "{err}");
    for partition in ["hashed", "strided"] {
        let err = fails(&[
            "plan",
            "--data",
            "a=10",
            "--world",
            "9223372036854775808",
            "--partition",
            partition,
        ]);
        assert!(err.contains("exceeds the largest global batch"), "{err}");
    }
    let err = fails(&["bench", "--tokens", "18446744073709551615"]);
    assert!(err.contains("at most 10000000000 tokens"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let prefix = shard(dir.path(), "s");
    let err = fails(&["bench", "--data", p(&prefix), "--seq-len", "100000000"]);
    assert!(
        err.contains("local batch 32 x sequence length 100000000 exceeds the largest batch"),
        "{err}"
    );
    let max = u64::MAX.to_string();
    let err = fails(&[
        "plan",
        "--data",
        "a=10",
        "--local-batch",
        "2",
        "--start",
        &max,
    ]);
    assert!(err.contains("that step begins past row 2^64"), "{err}");
    // One row per step: the last step whose row has a 64-bit position, answered at once.
    let last = (u64::MAX - 1).to_string();
    let text = ok(&["plan", "--data", "a=10", "--data", "b=7", "--start", &last]);
    assert!(text.contains("18446744073709551614"), "{text}");
    assert_eq!(text.lines().count(), 2, "{text}");
}

#[test]
fn huge_datasets_worlds_and_weights_plan_correctly() {
    // Every rank of a contiguous split of 2^64 - 1 samples owns a quarter; no false empty rank.
    let text = ok(&[
        "plan",
        "--data",
        "a=18446744073709551615",
        "--partition",
        "contiguous",
        "--world",
        "4",
        "--shuffle",
        "none",
    ]);
    let samples: Vec<u64> = text
        .lines()
        .skip(1)
        .map(|l| {
            l.split("a:")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(
        samples,
        [
            0,
            4611686018427387903,
            9223372036854775807,
            13835058055282163711
        ]
    );

    // Two weights of 1e308: their sum overflows f64, their split must not.
    let text = ok(&[
        "plan",
        "--data",
        "a=10:1e308",
        "--data",
        "b=10:1e308",
        "--local-batch",
        "1000",
    ]);
    let a = text.matches("a:").count();
    let b = text.matches("b:").count();
    assert_eq!((a, b), (500, 500), "{text}");

    // A million ranks of a hashed partition: rank 999 999's rows, in constant memory.
    let start = Instant::now();
    let text = ok(&[
        "plan",
        "--data",
        "a=3000000",
        "--world",
        "1000000",
        "--partition",
        "hashed",
        "--rank",
        "999999",
        "--steps",
        "3",
    ]);
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn plan_streams_and_jumps_to_a_far_start() {
    // A 3-dataset mixture at step 100 000 000 of world 8 x 64: one period of the schedule is
    // replayed at most, not 5e10 rows.
    let start = Instant::now();
    let args = [
        "plan",
        "--data",
        "web=1000000:0.5",
        "--data",
        "code=300000:0.3",
        "--data",
        "books=200000:0.2",
        "--world",
        "8",
        "--local-batch",
        "64",
        "--start",
        "100000000",
        "--steps",
        "2",
        "--json",
    ];
    let json: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    let records = json.as_array().unwrap();
    assert_eq!(records.len(), 16, "2 steps x 8 ranks");
    assert_eq!(records[0]["step"], 100_000_000);
    // 5.12e10 rows in, every dataset is within one row of its share of them.
    let rows: usize = records
        .iter()
        .map(|r| r["rows"].as_array().unwrap().len())
        .sum();
    assert_eq!(rows, 2 * 512);

    // One JSON object per line: a stream a reader can take apart line by line.
    let text = ok(&["plan", "--data", "a=5", "--steps", "3", "--json"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!((lines[0], lines[4]), ("[", "]"));
}

#[test]
fn errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = shard(dir.path(), "web");

    // A directory where the .bin should be.
    let odd = dir.path().join("odd");
    std::fs::copy(prefix.with_extension("idx"), odd.with_extension("idx")).unwrap();
    std::fs::create_dir(odd.with_extension("bin")).unwrap();
    let err = fails(&["inspect", p(&odd)]);
    assert!(
        err.contains("odd.bin: is a directory, not a regular file"),
        "{err}"
    );

    // A named pipe as the .idx: an error at once, not a hang.
    let fifo = dir.path().join("fifo");
    let made = Command::new("mkfifo")
        .arg(fifo.with_extension("idx"))
        .status()
        .is_ok_and(|s| s.success());
    if made {
        std::fs::write(fifo.with_extension("bin"), b"").unwrap();
        let err = fails(&["inspect", p(&fifo)]);
        assert!(
            err.contains("fifo.idx: is a named pipe, not a regular file"),
            "{err}"
        );
    }

    // The prefix given with its extension.
    let text = ok(&["inspect", p(&prefix.with_extension("idx"))]);
    assert!(text.contains("web "), "{text}");
    assert!(!text.contains("web.idx"), "{text}");
    // A directory of shards.
    let clean = dir.path().join("clean");
    std::fs::create_dir(&clean).unwrap();
    shard(&clean, "one");
    shard(&clean, "two");
    let text = ok(&["inspect", p(&clean), "--verify"]);
    assert_eq!(text.matches("verified").count(), 2, "{text}");

    let err = fails(&["cat", p(&prefix), "--range", "80000.."]);
    assert!(
        err.contains("A=80000 is past the end: the shard holds 3 sequences"),
        "{err}"
    );

    // Negative numbers reach the value parser (and its message), not "unexpected argument".
    let out = shardflow(&["plan", "--data", "a=5", "--seed", "-1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("invalid value '-1' for '--seed <SEED>'"),
        "{err}"
    );

    let err = fails(&["plan", "--data", "=5"]);
    assert!(
        err.contains("--data =5: the dataset name before '=' is empty"),
        "{err}"
    );
    let err = fails(&["plan", "--data", "5"]);
    assert!(err.contains("needs a name, like NAME=5"), "{err}");
    let err = fails(&["plan", "--data", "a=5:lots"]);
    assert!(err.contains("the weight lots is not a number"), "{err}");

    // u8 and i8 cannot hold the end-of-document id: not offered.
    let out = shardflow(&["write", "--input", "x", "--output", "y", "--dtype", "u8"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[possible values: auto, u16, i16, i32, i64]"),
        "{err}"
    );
}

#[test]
fn shards_of_the_same_name_in_two_folders_combine() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["a", "b"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        shard(&dir.path().join(sub), "web");
    }
    let (a, b) = (dir.path().join("a/web"), dir.path().join("b/web"));
    let text = ok(&[
        "plan",
        "--data",
        p(&a),
        "--data",
        p(&b),
        "--local-batch",
        "6",
    ]);
    assert!(text.contains(&format!("{}:", a.display())), "{text}");
    assert!(text.contains(&format!("{}:", b.display())), "{text}");
    // Or named explicitly; and a directory is a dataset of all its shards.
    let text = ok(&[
        "plan",
        "--data",
        &format!("first={}", p(&a)),
        "--data",
        &format!("all={}:2", p(&dir.path().join("b"))),
        "--local-batch",
        "3",
        "--shuffle",
        "none",
    ]);
    assert!(
        text.contains("first:0 (0)") && text.contains("all:0 (0)"),
        "{text}"
    );
}

#[test]
fn write_detects_json_lines_by_content_and_by_extension_in_any_case() {
    let dir = tempfile::tempdir().unwrap();
    let upper = dir.path().join("UP.JSONL");
    std::fs::write(&upper, "{\"text\": \"hi\"}\n").unwrap();
    let prefix = dir.path().join("up");
    ok(&["write", "--input", p(&upper), "--output", p(&prefix)]);
    assert_eq!(ok(&["cat", p(&prefix)]), "[104,105,256]\n");

    // From stdin, with no extension to go by: the first byte `{` says JSON lines.
    let prefix = dir.path().join("piped");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardflow"))
        .args(["write", "--input", "-", "--output", p(&prefix)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        b"  {\"text\": \"a\"}\n{\"text\": \"b\"}\n",
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(ok(&["cat", p(&prefix)]), "[97,256]\n[98,256]\n");
}

#[test]
fn bench_on_a_shard_of_empty_sequences_fails_instead_of_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("empty");
    let mut w = shardflow::IndexedWriter::create(&prefix, None).unwrap();
    for _ in 0..5 {
        w.add_sequence::<u32>(&[]).unwrap();
    }
    w.finish().unwrap();
    for workers in ["0", "2"] {
        let err = fails(&[
            "bench",
            "--data",
            p(&prefix),
            "--pack",
            "--batches",
            "3",
            "--workers",
            workers,
        ]);
        assert!(
            err.contains("packing cannot fill a row: every sequence of empty is empty"),
            "{err}"
        );
    }
}

#[test]
fn bench_on_cuda_without_a_driver_is_an_error_naming_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = shard(dir.path(), "s");
    let args = [
        "bench",
        "--data",
        p(&prefix),
        "--batches",
        "5",
        "--device",
        "cuda",
    ];
    if cfg!(feature = "cuda") {
        // With the feature: on a machine without libcuda the error names it; with a driver the
        // bench runs and reports the bus figures.
        let out = shardflow(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("pinned H2D copy"), "{text}");
        } else {
            assert!(
                err.contains("libcuda.so") || err.contains("CUDA device"),
                "{err}"
            );
            assert!(!err.contains("panicked"), "{err}");
        }
    } else {
        let err = fails(&args);
        assert!(err.contains("built without the cuda feature"), "{err}");
    }
}
