//! The command: write → inspect → cat round trips, and a malformed input line.

mod common;

use common::cmd::{ok, p, run as shardflow};

/// Byte-level ids of `text` followed by the end-of-document id 256, as `cat` prints them.
fn ids(text: &str) -> String {
    let ids: Vec<String> = text
        .bytes()
        .map(|b| b.to_string())
        .chain(["256".to_string()])
        .collect();
    format!("[{}]", ids.join(","))
}

#[test]
fn jsonl_write_inspect_cat() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("docs.jsonl");
    std::fs::write(
        &input,
        "{\"text\": \"hi\", \"id\": 1}\n\n{\"text\": \"h\u{e9}llo\"}\n{\"text\": \"!\"}\n",
    )
    .unwrap();
    let prefix = dir.path().join("out");
    let said = ok(&["write", "--input", p(&input), "--output", p(&prefix)]);
    assert!(
        said.contains("3 documents, 3 sequences, 12 tokens, dtype u16"),
        "{said}"
    );

    let cat = ok(&["cat", p(&prefix), "--range", "0..3"]);
    assert_eq!(
        cat,
        format!("{}\n{}\n{}\n", ids("hi"), ids("h\u{e9}llo"), ids("!"))
    );
    assert_eq!(
        ok(&["cat", p(&prefix), "--range", "1..2"]),
        format!("{}\n", ids("h\u{e9}llo"))
    );

    let json: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", p(&prefix), "--json"])).unwrap();
    let r = &json[0];
    assert_eq!(r["sequences"], 3);
    assert_eq!(r["documents"], 3);
    assert_eq!(r["dtype"], "u16");
    assert_eq!(r["tokens"], 12);
    assert_eq!(
        (r["min"].as_u64(), r["p50"].as_u64(), r["max"].as_u64()),
        (Some(2), Some(3), Some(7))
    );
    // The token ids: `!` (33) to the end-of-document id.
    assert_eq!(
        (r["min_id"].as_i64(), r["max_id"].as_i64()),
        (Some(33), Some(256))
    );

    let table = ok(&["inspect", p(&prefix)]);
    assert!(
        table.lines().next().unwrap().starts_with("shard"),
        "{table}"
    );
    assert!(table.contains("u16"), "{table}");
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[10..], ["33", "256", "sampled"], "{table}");

    // Byte-level ids fit a vocabulary of 257; 256 is the first id past one of 256.
    ok(&["inspect", p(&prefix), "--vocab-size", "257"]);
    let out = shardflow(&["inspect", p(&prefix), "--vocab-size", "256", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["max_id"], 256);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: {}: sequence 0 position 2: token id 256 is outside the vocabulary \
             (--vocab-size 256: ids 0..256)\n",
            prefix.display()
        )
    );
}

#[test]
fn an_empty_document_is_named_unless_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("docs.jsonl");
    std::fs::write(&input, "{\"text\": \"hi\"}\n{\"text\": \"\"}\n").unwrap();
    let prefix = dir.path().join("out");
    let out = shardflow(&["write", "--input", p(&input), "--output", p(&prefix)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("docs.jsonl line 2: "), "{err}");
    let said = ok(&[
        "write",
        "--input",
        p(&input),
        "--output",
        p(&prefix),
        "--skip-bad",
    ]);
    assert!(
        said.ends_with("skipped 1 bad record: 1 empty document\n"),
        "{said}"
    );
    assert_eq!(ok(&["cat", p(&prefix)]), format!("{}\n", ids("hi")));
}

#[test]
fn text_paragraphs_and_custom_field_and_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("book.txt");
    std::fs::write(&input, "one\ntwo\n\n\nthree\r\n  \nfour").unwrap();
    let prefix = dir.path().join("book");
    ok(&[
        "write",
        "--input",
        p(&input),
        "--output",
        p(&prefix),
        "--dtype",
        "i32",
    ]);
    let cat = ok(&["cat", p(&prefix)]);
    assert_eq!(
        cat,
        format!("{}\n{}\n{}\n", ids("one\ntwo"), ids("three"), ids("four"))
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", p(&prefix), "--json"])).unwrap();
    assert_eq!(json[0]["dtype"], "i32");

    let input = dir.path().join("body.jsonl");
    std::fs::write(&input, "{\"body\": \"ab\"}\n").unwrap();
    let prefix = dir.path().join("body");
    ok(&[
        "write",
        "--input",
        p(&input),
        "--output",
        p(&prefix),
        "--field",
        "body",
    ]);
    assert_eq!(ok(&["cat", p(&prefix)]), format!("{}\n", ids("ab")));
}

#[test]
fn malformed_json_line_names_its_line_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.jsonl");
    std::fs::write(
        &input,
        "{\"text\": \"fine\"}\n{\"text\": \"also fine\"}\n{\"text\": oops}\n",
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let prefix = out_dir.join("shard");
    let out = shardflow(&["write", "--input", p(&input), "--output", p(&prefix)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl line 3: not valid JSON"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
    assert!(left.is_empty(), "nothing half-written is left: {left:?}");

    std::fs::write(&input, "{\"text\": \"fine\"}\n{\"title\": \"x\"}\n").unwrap();
    let out = shardflow(&["write", "--input", p(&input), "--output", p(&prefix)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl line 2: no field \"text\""), "{err}");
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0);
}

#[test]
fn bad_range_and_missing_shard_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("a.txt");
    std::fs::write(&input, "x\n\ny\n").unwrap();
    let prefix = dir.path().join("a");
    ok(&["write", "--input", p(&input), "--output", p(&prefix)]);
    let out = shardflow(&["cat", p(&prefix), "--range", "1..5"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("B=5 is past the end: the shard holds 2 sequences")
    );
    let out = shardflow(&["inspect", p(&dir.path().join("nope"))]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.idx: file not found"));
}

#[test]
fn demo_writes_and_inspects_the_builtin_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let said = ok(&["demo", "--dir", p(dir.path())]);
    for name in ["web", "code", "books"] {
        assert!(said.contains(&format!("{name} ")), "{said}");
        assert!(dir.path().join(format!("{name}.idx")).is_file());
    }
    assert!(said.contains("compared 500 batches: identical"), "{said}");
    assert!(
        said.contains("reduced metric totals after resume: equal to the uninterrupted run"),
        "{said}"
    );
    assert!(
        said.contains("data metrics, reduced over both ranks"),
        "{said}"
    );
    assert!(dir.path().join("checkpoint-rank1.json").is_file());
    // A second run in the same directory starts afresh (the demo owns it: its corpus,
    // checkpoints and history are replaced, other files left alone), and is deterministic: the
    // same seed writes the same bytes.
    let first: Vec<Vec<u8>> = ["web.bin", "web.idx", "books.idx"]
        .iter()
        .map(|f| std::fs::read(dir.path().join(f)).unwrap())
        .collect();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let again = ok(&["demo", "--dir", p(dir.path())]);
    assert!(again.contains("compared 500 batches: identical"), "{again}");
    for (f, bytes) in ["web.bin", "web.idx", "books.idx"].iter().zip(&first) {
        assert_eq!(&std::fs::read(dir.path().join(f)).unwrap(), bytes, "{f}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
        "mine"
    );
}

#[test]
fn demo_refuses_a_directory_of_files_it_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.idx"), "mine").unwrap();
    let out = shardflow(&["demo", "--dir", p(dir.path())]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err,
        format!(
            "error: invalid configuration: demo --dir {}: the directory holds files that the \
             demo did not write (web.idx); give a new or empty directory (a directory of an \
             earlier demo run is started afresh)\n",
            dir.path().display()
        )
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("web.idx")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// Runs `shardflow ARGS`; returns its status code and stderr.
fn status_and_stderr(args: &[&str]) -> (Option<i32>, String) {
    let out = shardflow(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn values_malformed_on_their_own_are_usage_errors_with_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("a.txt");
    std::fs::write(&input, "x\n\ny\n").unwrap();
    let prefix = dir.path().join("a");
    ok(&["write", "--input", p(&input), "--output", p(&prefix)]);
    let (code, err) = status_and_stderr(&["cat", p(&prefix), "--range", "2..1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.starts_with("error: invalid value '2..1' for '--range <RANGE>': A=2 is after B=1\n"),
        "{err}"
    );
    let (code, err) = status_and_stderr(&["plan", "--data", "a=5", "--shuffle", "random"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.starts_with(
            "error: invalid value 'random' for '--shuffle <SHUFFLE>': expected none, full or \
             block:N with N >= 1\n"
        ),
        "{err}"
    );
    let (code, err) = status_and_stderr(&["plan", "--data", "a=5", "--shuffle", "block:0"]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        ok(&[
            "plan",
            "--data",
            "a=3",
            "--shuffle",
            "block:2",
            "--local-batch",
            "3"
        ])
        .lines()
        .count(),
        2
    );
    // A range past the end depends on the shard, not on the value: a runtime error.
    let (code, err) = status_and_stderr(&["cat", p(&prefix), "--range", "1..5"]);
    assert_eq!(code, Some(1), "{err}");
}

#[test]
fn help_to_a_full_disk_is_an_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardflow"))
        .arg("--help")
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: <stdout>: cannot write to: No space left on device (os error 28)\n"
    );
    let help = ok(&["--help"]);
    assert!(help.contains("Usage: shardflow"), "{help}");
}

#[test]
fn data_values_name_what_is_wrong() {
    let (code, err) = status_and_stderr(&["plan", "--data", "s3://bucket/web"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        "error: invalid configuration: --data s3://bucket/web: s3:// URLs are not supported; \
         give a local shard prefix or directory (copy the shards to a local or mounted file \
         system first)\n"
    );
    let (_, err) = status_and_stderr(&["plan", "--data", "web=https://host/web:2"]);
    assert!(err.contains("https:// URLs are not supported"), "{err}");
    let (code, err) = status_and_stderr(&["plan", "--data", "a=10:1:2"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        "error: invalid configuration: --data a=10:1:2: 10:1 is neither a size nor a shard or \
         directory; a dataset takes one weight: [NAME=]PATH[:WEIGHT] or NAME=SIZE[:WEIGHT]\n"
    );
    // One weight still parses.
    assert!(ok(&["plan", "--data", "a=10:2"]).contains("a:"));
}

#[test]
fn cat_takes_a_directory_of_shards_as_inspect_and_plan_do() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dir.path().join("out");
    std::fs::create_dir(&shards).unwrap();
    for (name, text) in [("b", "bb\n\nb\n"), ("a", "a\n")] {
        let input = dir.path().join(format!("{name}.txt"));
        std::fs::write(&input, text).unwrap();
        ok(&[
            "write",
            "--input",
            p(&input),
            "--output",
            p(&shards.join(name)),
        ]);
    }
    // The shards in name order, numbered as `plan` numbers the dataset's samples.
    assert_eq!(
        ok(&["cat", p(&shards)]),
        format!("{}\n{}\n{}\n", ids("a"), ids("bb"), ids("b"))
    );
    assert_eq!(
        ok(&["cat", p(&shards), "--range", "2.."]),
        format!("{}\n", ids("b"))
    );
    let (code, err) = status_and_stderr(&["cat", p(&shards), "--range", "0..4"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        format!(
            "error: invalid configuration: --range 0..4: B=4 is past the end: the 2 shards in \
             {} hold 3 sequences (0..3)\n",
            shards.display()
        )
    );
}

/// The tiny plan of the `order` module docs, without its step count.
const TINY: [&str; 11] = [
    "plan",
    "--data",
    "a=4:3",
    "--data",
    "b=2:1",
    "--shuffle",
    "none",
    "--world",
    "2",
    "--local-batch",
    "2",
];

#[test]
fn plan_prints_the_tiny_table_and_json() {
    let text = ok(&[&TINY[..], &["--steps", "3"]].concat());
    assert_eq!(
        text,
        "step  rank  rows (dataset:sample (epoch))\n\
         \x20  0     0  a:0 (0), a:1 (0)\n\
         \x20  0     1  b:0 (0), a:2 (0)\n\
         \x20  1     0  a:3 (0), a:0 (1)\n\
         \x20  1     1  b:1 (0), a:1 (1)\n\
         \x20  2     0  a:2 (1), a:3 (1)\n\
         \x20  2     1  b:0 (1), a:0 (2)\n"
    );
    // --start skips ahead: step 2 of rank 1 alone, as JSON.
    let json: serde_json::Value = serde_json::from_str(&ok(&[
        &TINY[..],
        &["--start", "2", "--rank", "1", "--json"],
    ]
    .concat()))
    .unwrap();
    assert_eq!(
        json,
        serde_json::json!([{ "step": 2, "rank": 1, "rows": [
            { "dataset": "b", "sample": 0, "epoch": 1 },
            { "dataset": "a", "sample": 0, "epoch": 2 },
        ]}])
    );
}

#[test]
fn plan_reads_shard_sizes_and_reports_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("t.txt");
    std::fs::write(&input, "a\n\nb\n\nc\n").unwrap();
    let prefix = dir.path().join("three");
    ok(&["write", "--input", p(&input), "--output", p(&prefix)]);
    let json: serde_json::Value = serde_json::from_str(&ok(&[
        "plan",
        "--data",
        p(&prefix),
        "--shuffle",
        "none",
        "--local-batch",
        "3",
        "--json",
    ]))
    .unwrap();
    let samples: Vec<u64> = json[0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["sample"].as_u64().unwrap())
        .collect();
    assert_eq!(samples, [0, 1, 2]);
    assert_eq!(json[0]["rows"][0]["dataset"], "three");

    let out = shardflow(&[
        "plan",
        "--data",
        "x=3",
        "--partition",
        "strided",
        "--world",
        "4",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("dataset x: with 3 samples over world size 4"),
        "{err}"
    );
}

#[test]
fn plan_takes_range_files_and_class_files_and_summarizes_each_rank() {
    let dir = tempfile::tempdir().unwrap();
    let ranges = dir.path().join("ranges.json");
    std::fs::write(
        &ranges,
        r#"{"datasets": {"a": [[[0, 6]], [[6, 10]]], "b": [[[0, 2]], [[2, 4]]]}}"#,
    )
    .unwrap();
    let base = [
        "plan", "--data", "a=10:3", "--data", "b=4:1", "--world", "2",
    ];
    let range = format!("range:{}", p(&ranges));
    // Every row of rank 0 lies in its ranges.
    let json: serde_json::Value = serde_json::from_str(&ok(&[
        &base[..],
        &[
            "--partition",
            &range,
            "--local-batch",
            "3",
            "--steps",
            "4",
            "--json",
        ],
    ]
    .concat()))
    .unwrap();
    for step in json.as_array().unwrap() {
        let rank = step["rank"].as_u64().unwrap();
        for row in step["rows"].as_array().unwrap() {
            let s = row["sample"].as_u64().unwrap();
            let mine = match (row["dataset"].as_str().unwrap(), rank) {
                ("a", 0) => s < 6,
                ("a", _) => (6..10).contains(&s),
                ("b", 0) => s < 2,
                _ => (2..4).contains(&s),
            };
            assert!(mine, "{step}");
        }
    }
    assert_eq!(
        ok(&[&base[..], &["--partition", &range, "--summary"]].concat()),
        "rank  dataset  samples  classes (class:samples)\n\
         \x20  0  a  6  -\n\
         \x20  0  b  2  -\n\
         \x20  1  a  4  -\n\
         \x20  1  b  2  -\n"
    );
    // Class files: one little-endian u32 per sequence.
    let write = |name: &str, classes: &[u32]| {
        let path = dir.path().join(name);
        let bytes: Vec<u8> = classes.iter().flat_map(|c| c.to_le_bytes()).collect();
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let a = write("a.classes", &[0, 0, 0, 1, 1, 2, 2, 2, 2, 2]);
    let b = write("b.classes", &[5, 5, 6, 6]);
    let strat = format!("stratified:a={},b={}", p(&a), p(&b));
    let json: serde_json::Value = serde_json::from_str(&ok(&[
        &base[..],
        &["--partition", &strat, "--summary", "--json"],
    ]
    .concat()))
    .unwrap();
    assert_eq!(
        json,
        serde_json::json!([
            {"rank": 0, "dataset": "a", "samples": 5, "classes": {"0": 2, "1": 1, "2": 2}},
            {"rank": 0, "dataset": "b", "samples": 2, "classes": {"5": 1, "6": 1}},
            {"rank": 1, "dataset": "a", "samples": 5, "classes": {"0": 1, "1": 1, "2": 3}},
            {"rank": 1, "dataset": "b", "samples": 2, "classes": {"5": 1, "6": 1}},
        ])
    );
    // Errors name what is wrong.
    let err = |args: &[&str]| {
        let out = shardflow(&[&base[..], args].concat());
        assert!(!out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"datasets": {"a": [[[0, 6]], [[5, 10]]], "b": [[[0, 2]], [[2, 4]]]}}"#,
    )
    .unwrap();
    let e = err(&["--partition", &format!("range:{}", p(&bad))]);
    assert!(
        e.contains(
            "dataset a rank 1: range 5..10 overlaps samples 5..6 owned by rank 0 (0..6) too"
        ),
        "{e}"
    );
    std::fs::write(&bad, r#"{"datasets": {"a": [[[0, 10]], [[10, 10]]]}}"#).unwrap();
    let e = err(&["--partition", &format!("range:{}", p(&bad))]);
    assert!(e.contains("it lists no ranges for dataset b"), "{e}");
    let e = err(&["--partition", "stratified"]);
    assert!(e.contains("dataset a is given by size"), "{e}");
    let e = err(&["--partition", &format!("stratified:{}", p(&a))]);
    assert!(e.contains("names one class file for 2 datasets"), "{e}");
    let short = write("short.classes", &[1, 2, 3]);
    let e = err(&[
        "--partition",
        &format!("stratified:a={},b={}", p(&short), p(&b)),
    ]);
    assert!(
        e.contains("dataset a: 3 classes given for 10 samples"),
        "{e}"
    );
    let e = err(&["--partition", "range:"]);
    assert!(e.contains("expected global, contiguous"), "{e}");
}

#[test]
fn bench_reports_throughput_and_the_roofline() {
    let out = ok(&[
        "bench",
        "--tokens",
        "300000",
        "--mixture",
        "--eos",
        "9",
        "--batches",
        "30",
        "--rounds",
        "3",
        "--workers",
        "1",
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["batches"], 30);
    // The roofline's bandwidth: pre-faulted buffers, the median of its copies as the reference,
    // with best, worst and spread reported.
    let m = &r["memcpy"];
    let (best, median, worst) = (
        m["best"].as_f64().unwrap(),
        m["median"].as_f64().unwrap(),
        m["worst"].as_f64().unwrap(),
    );
    assert!(best >= median && median >= worst && worst > 0.0, "{m}");
    assert!(best.is_finite(), "{m}");
    let spread = m["spread"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&spread), "{m}");
    assert_eq!(
        (m["threads"].as_u64(), m["runs"].as_u64()),
        (Some(1), Some(9))
    );
    assert!(m["bytes"].as_u64().unwrap() >= 256 << 20);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs();
    assert!(
        close(r["memcpy_gb_per_s"].as_f64().unwrap(), median / 1e9),
        "{r}"
    );
    // Three timed rounds after a warm-up round; the figures are the median round's.
    assert_eq!(r["rounds"], 3);
    let rates: Vec<f64> = r["round_rates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(rates.len(), 3);
    let mut sorted = rates.clone();
    sorted.sort_by(f64::total_cmp);
    assert!(
        close(r["real_tokens_per_s"].as_f64().unwrap(), sorted[1]),
        "{r}"
    );
    let real = r["real_tokens_per_s"].as_f64().unwrap();
    let padded = r["padded_tokens_per_s"].as_f64().unwrap();
    assert!(real > 0.0 && padded >= real, "{r}");
    let ratio = r["padding_ratio"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&ratio), "{r}");
    assert!(r["cpu_ns_per_real_token"].as_f64().unwrap() > 0.0);
    assert!(r["roofline_ratio"].as_f64().unwrap() > 0.0);
    assert_eq!(r["warmup_batches"], 30, "a warm-up round of --batches");
    assert_eq!(
        r["stats"]["batches"], 30,
        "the stats cover the timed batches only"
    );
    // The one worker's health, over the timed batches (the caller may build some itself).
    let workers = r["stats"]["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{r}");
    let w = &workers[0];
    assert_eq!(w["index"], 0);
    assert_eq!(w["status"], "healthy");
    assert!(w["batches"].as_u64().unwrap() <= 30 + 4, "{w}");
    assert!(w["tokens_per_s"].as_f64().unwrap() >= 0.0, "{w}");
    let bytes = r["output_bytes"].as_f64().unwrap();
    let implied = 4.0 * padded * r["seconds"].as_f64().unwrap();
    assert!(
        (bytes - implied).abs() <= 1e-6 * bytes,
        "i32 ids: 4 bytes per padded token; {r}"
    );
}

#[test]
fn bench_cold_runs_full_and_block_shuffle_with_and_without_prefetch() {
    let out = ok(&[
        "bench",
        "--tokens",
        "300000",
        "--batches",
        "10",
        "--rounds",
        "1",
        "--cold",
        "--json",
    ]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let cold = r["cold"].as_array().unwrap();
    let runs: Vec<(String, u64)> = cold
        .iter()
        .map(|c| {
            assert!(c["real_tokens_per_s"].as_f64().unwrap() > 0.0, "{c}");
            assert_eq!(c["batches"], 10);
            (
                c["shuffle"].as_str().unwrap().to_string(),
                c["read_ahead"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        runs,
        [
            ("full".to_string(), 0),
            ("full".to_string(), 16),
            ("block:64".to_string(), 0),
            ("block:64".to_string(), 16)
        ]
    );
}
