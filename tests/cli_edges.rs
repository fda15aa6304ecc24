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

/// `shardflow ARGS`'s stderr; it must have been refused as a usage error (status 2), in clap's
/// words.
fn refused(args: &[&str]) -> String {
    let out = shardflow(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(
        err.contains("error:") && !err.contains("panicked"),
        "{args:?}: {err}"
    );
    err
}

#[test]
fn bench_refuses_argument_values_out_of_range_before_any_work() {
    let max = u64::MAX.to_string();
    for (args, message) in [
        // A multiple no batch can hold: a panic (capacity overflow) and an abort before.
        (
            &["bench", "--pad-multiple", &max][..],
            format!(
                "invalid value '{max}' for '--pad-multiple <PAD_MULTIPLE>': {max} is not in 1..=268435456"
            ),
        ),
        (
            &["bench", "--pad-multiple", "4294967296"],
            "4294967296 is not in 1..=268435456".to_string(),
        ),
        // A read-ahead that never finished planning.
        (
            &["bench", "--read-ahead", &max],
            format!(
                "invalid value '{max}' for '--read-ahead <READ_AHEAD>': {max} is not in 0..=4096"
            ),
        ),
        // Nothing timed: NaN rates.
        (
            &["bench", "--batches", "0"],
            "invalid value '0' for '--batches <BATCHES>'".to_string(),
        ),
        (
            &["bench", "--rounds", "0"],
            "invalid value '0' for '--rounds <ROUNDS>'".to_string(),
        ),
        // An empty corpus, generated as 170 tokens.
        (
            &["bench", "--tokens", "0"],
            "invalid value '0' for '--tokens <TOKENS>': 0 is not in 1..".to_string(),
        ),
        // A negative id, and one the i32 ids cannot hold.
        (
            &["bench", "--eos", "-1"],
            "invalid value '-1' for '--eos <EOS>': -1 is not in 0..=2147483647".to_string(),
        ),
        (
            &["bench", "--eos", "2147483648"],
            "is not in 0..=2147483647".to_string(),
        ),
        // --mixture generates a corpus; with --data it was silently ignored.
        (
            &["bench", "--mixture", "--data", "x"],
            "the argument '--mixture' cannot be used with '--data <DATA>'".to_string(),
        ),
        (
            &["bench", "--roofline-mib", "0"],
            "invalid value '0' for '--roofline-mib <ROOFLINE_MIB>'".to_string(),
        ),
    ] {
        let err = refused(args);
        assert!(err.contains(&message), "{args:?}: {err}");
    }

    // A multiple the batch can hold, but not a divisor of the sequence length: rows would be
    // padded past --seq-len (to 10^8 tokens: 16.8 GB resident and status 0 before).
    let dir = tempfile::tempdir().unwrap();
    let prefix = shard(dir.path(), "s");
    let err = fails(&["bench", "--data", p(&prefix), "--pad-multiple", "100000000"]);
    assert!(
        err.contains(
            "--pad-multiple 100000000: --seq-len 2048 is not a multiple of it, so rows would be \
             padded past --seq-len (to 100000000)"
        ),
        "{err}"
    );
    let err = fails(&[
        "bench",
        "--data",
        p(&prefix),
        "--pad-multiple",
        "48",
        "--seq-len",
        "100",
    ]);
    assert!(err.contains("padded past --seq-len (to 144)"), "{err}");
}

#[test]
fn the_loader_checks_the_widest_padded_row_and_the_read_ahead_against_their_limits() {
    use shardflow::collate::{CollateConfig, Padding};
    use shardflow::loader::{LoaderBuilder, MAX_READ_AHEAD, Source};
    use shardflow::order::OrderConfig;

    let dir = tempfile::tempdir().unwrap();
    let data = shardflow::Dataset::open(&[shard(dir.path(), "s")]).unwrap();
    let build = |padding: Padding, read_ahead: usize| {
        LoaderBuilder::<i32>::new(vec![Source::new("s", data.clone(), 1.0)])
            .with_order(OrderConfig {
                local_batch: 32,
                ..Default::default()
            })
            .with_collate(CollateConfig {
                seq_len: 2048,
                padding,
                ..Default::default()
            })
            .with_workers(0)
            .with_read_ahead(read_ahead)
            .build_host()
    };
    // 32 rows of 2048 tokens rounded up to 2^24 exceed the 2^28-token batch; so does a multiple
    // whose rounding overflows.
    for (m, shown) in [
        (1 << 24, "16777216"),
        (usize::MAX, &*usize::MAX.to_string()),
    ] {
        let e = build(Padding::Multiple(m), 0).err().expect("refused");
        assert_eq!(
            e.to_string(),
            format!(
                "invalid configuration: local batch 32 x sequence length 2048 rounded up to the padding multiple {shown} \
                 exceeds the largest batch, 268435456 tokens"
            )
        );
    }
    // Within the limit, a row is padded to the multiple (past the sequence length, by less
    // than the multiple).
    let mut loader = build(Padding::Multiple(3000), 0).unwrap();
    assert_eq!(loader.next().unwrap().unwrap().width, 3000);

    let e = build(Padding::Longest, MAX_READ_AHEAD + 1)
        .err()
        .expect("refused");
    assert!(
        e.to_string().starts_with(
            "invalid configuration: the read-ahead of 4097 steps exceeds the most, 4096 steps"
        ),
        "{e}"
    );
    // The most read-ahead costs what the least does: the advisor works its way ahead.
    let start = Instant::now();
    let mut loader = build(Padding::Longest, MAX_READ_AHEAD).unwrap();
    assert_eq!(loader.next().unwrap().unwrap().rows, 32);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn bench_caps_its_roofline_buffers() {
    let bytes = |extra: &[&str]| {
        let args = [
            &[
                "bench",
                "--tokens",
                "20000",
                "--batches",
                "2",
                "--rounds",
                "1",
                "--json",
            ][..],
            extra,
        ]
        .concat();
        let r: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
        r["memcpy"]["bytes"].as_u64().unwrap()
    };
    // 256 MiB by default, whatever the last-level cache (4x a 480 MiB one was 1.9 GiB each).
    assert_eq!(bytes(&[]), 256 << 20);
    assert_eq!(bytes(&["--roofline-mib", "8"]), 8 << 20);
}

#[test]
fn plan_says_where_the_stream_ends() {
    let run = |args: &[&str]| {
        let out = shardflow(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        (text, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // An endless stream of 2 rows per step ends after 2^64 - 1 rows: the step 2^63 - 1 holds
    // one row, and is the last.
    let (text, err) = run(&[
        "plan",
        "--data",
        "a=10",
        "--local-batch",
        "2",
        "--start",
        "9223372036854775807",
        "--steps",
        "3",
    ]);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert_eq!(
        err,
        "the stream ends after 9223372036854775808 steps (an endless stream ends after 2^64 - 1 \
         rows, where stream positions stop fitting 64 bits); printed steps \
         9223372036854775807..9223372036854775808, 1 of the 3 asked for\n"
    );
    let max = u64::MAX.to_string();
    let (text, err) = run(&["plan", "--data", "a=10", "--start", &max]);
    assert_eq!(text.lines().count(), 1, "only the header: {text}");
    assert!(
        err.ends_with("; nothing from step 18446744073709551615 on\n"),
        "{err}"
    );
    // A finite stream too.
    let (text, err) = run(&[
        "plan",
        "--data",
        "a=5",
        "--samples",
        "5",
        "--local-batch",
        "2",
        "--steps",
        "10",
    ]);
    assert_eq!(text.lines().count(), 4, "{text}");
    assert_eq!(
        err,
        "the stream ends after 3 steps; printed steps 0..3, 3 of the 10 asked for\n"
    );
    // Within the stream, nothing is said.
    let (_, err) = run(&[
        "plan",
        "--data",
        "a=5",
        "--samples",
        "6",
        "--local-batch",
        "2",
        "--steps",
        "3",
    ]);
    assert_eq!(err, "");
}

#[test]
fn a_weight_below_the_mixture_resolution_is_named_as_such() {
    let err = fails(&["plan", "--data", "a=10", "--data", "b=10:1e-7"]);
    assert!(
        err.contains(
            "dataset b: weight 0.0000001 is 1.00e-7 of the total weight, below the mixture's \
             resolution of 2^-20 (about 9.5e-7) of the rows, so it would draw none"
        ),
        "{err}"
    );
    // Large weights: the small one is what is too small.
    let err = fails(&["plan", "--data", "a=10:1e300", "--data", "b=10:1"]);
    assert!(
        err.contains("dataset b: weight 1 is 1.00e-300 of the total weight"),
        "{err}"
    );
}

#[test]
fn the_stratified_summary_lists_only_the_classes_a_rank_holds() {
    let dir = tempfile::tempdir().unwrap();
    let classes = dir.path().join("a.classes");
    let ids: Vec<u8> = [0u32, 0, 0, 0, 7, 9]
        .iter()
        .flat_map(|c| c.to_le_bytes())
        .collect();
    std::fs::write(&classes, ids).unwrap();
    let partition = format!("stratified:a={}", p(&classes));
    let args = [
        "plan",
        "--data",
        "a=6",
        "--world",
        "2",
        "--partition",
        &partition,
        "--summary",
    ];
    assert_eq!(
        ok(&args),
        "rank  dataset  samples  classes (class:samples)\n\
         \x20  0  a  3  0:2 7:1\n\
         \x20  1  a  3  0:2 9:1\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&[&args[..], &["--json"]].concat())).unwrap();
    assert_eq!(json[1]["classes"], serde_json::json!({"0": 2, "9": 1}));
}
