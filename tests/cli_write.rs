//! `shardflow write`: a document past the i32 length is refused as soon as it passes the limit
//! (read from a pipe, in bounded memory), the output directory is created, and a UTF-8 byte
//! order mark at the start of the input is skipped. With a tokenizer trained here (nothing is
//! downloaded): the ids are `tokenizers`' own, the same for any thread count, split into
//! numbered pairs, bad records named or counted; `inspect` reports and checks the id range and
//! `cat --tokenizer` gives the text back.
#![cfg(feature = "cli")]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::cmd::{ok, p, run, shardflow};
use shardflow::{IndexedShard, Shard};

/// The ids of the shard at `prefix` (u16, as `write` stores byte-level ids).
fn ids(prefix: &Path) -> Vec<u16> {
    let bin = std::fs::read(prefix.with_extension("bin")).unwrap();
    bin.chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// `text`'s bytes as ids, each document followed by the end-of-document id 256.
fn expect(docs: &[&str]) -> Vec<u16> {
    docs.iter()
        .flat_map(|d| d.bytes().map(u16::from).chain([256]))
        .collect()
}

/// The most bytes one document may hold: its ids and the end-of-document id fit an i32 length.
const MAX_DOCUMENT_BYTES: u64 = i32::MAX as u64 - 1;

/// The peak resident memory of process `pid` in bytes (`VmHWM`), while it runs.
#[cfg(target_os = "linux")]
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(not(target_os = "linux"))]
fn peak_rss(_pid: u32) -> Option<u64> {
    None
}

#[test]
fn a_paragraph_past_the_i32_length_is_refused_as_soon_as_it_passes_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("big");
    let mut child = shardflow()
        .args([
            "write",
            "--input",
            "-",
            "--output",
            p(&prefix),
            "--format",
            "text",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // One paragraph with no newline, 64 MiB past the limit, generated as it is written.
    let total = MAX_DOCUMENT_BYTES + (64 << 20);
    let chunk = vec![b'a'; 1 << 20];
    let mut stdin = child.stdin.take().unwrap();
    let (mut written, mut peak) = (0u64, 0u64);
    while written < total {
        let n = chunk.len().min((total - written) as usize);
        if stdin.write_all(&chunk[..n]).is_err() {
            break; // the command stopped reading
        }
        written += n as u64;
        if written % (64 << 20) == 0 {
            peak = peak.max(peak_rss(pid).unwrap_or(0));
        }
    }
    drop(stdin);
    loop {
        peak = peak.max(peak_rss(pid).unwrap_or(0));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: <stdin> line 1: the paragraph starting at line 1 passes {MAX_DOCUMENT_BYTES} \
             bytes, the most one document can hold (with its end-of-document id, the i32 length \
             of a Megatron sequence); split it\n"
        )
    );
    assert!(out.stdout.is_empty());
    // Refused once the limit was passed: the rest of the input was never read (the pipe and the
    // command's 1 MiB read buffer hold a little past it).
    assert!(
        written < MAX_DOCUMENT_BYTES + (8 << 20),
        "{written} bytes were read"
    );
    // Memory holds the paragraph so far, no copy of it (the ids alone would take 4 GiB).
    if cfg!(target_os = "linux") {
        assert!(peak < (2 << 30) + (256 << 20), "peak RSS {peak} bytes");
    }
    assert!(!prefix.with_extension("bin").exists());
    assert!(!prefix.with_extension("idx").exists());
}

#[test]
fn write_creates_its_output_directory() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "hello\n\nworld\r\nagain\n").unwrap();
    let prefix = dir.path().join("a/b/shard");
    let out = ok(&["write", "--input", p(&input), "--output", p(&prefix)]);
    assert_eq!(
        out,
        format!(
            "wrote {}.idx/.bin: 2 documents, 2 sequences, 18 tokens, dtype u16\n",
            prefix.display()
        )
    );
    assert_eq!(ids(&prefix), expect(&["hello", "world\nagain"]));
}

#[test]
fn a_byte_order_mark_at_the_start_is_skipped_and_elsewhere_named() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("bom.jsonl");
    std::fs::write(&jsonl, "\u{feff}{\"text\": \"hi\"}\n{\"text\": \"yo\"}\n").unwrap();
    let prefix = dir.path().join("json");
    ok(&["write", "--input", p(&jsonl), "--output", p(&prefix)]);
    assert_eq!(ids(&prefix), expect(&["hi", "yo"]));
    // From stdin, detected by its first byte after the mark.
    let mut child = shardflow()
        .args([
            "write",
            "--input",
            "-",
            "--output",
            p(&dir.path().join("stdin")),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all("\u{feff}{\"text\": \"ok\"}\n".as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(ids(&dir.path().join("stdin")), expect(&["ok"]));
    // Plain text: the mark is not part of the first document.
    let txt = dir.path().join("bom.txt");
    std::fs::write(&txt, "\u{feff}first\n\nsecond\n").unwrap();
    let prefix = dir.path().join("text");
    ok(&["write", "--input", p(&txt), "--output", p(&prefix)]);
    assert_eq!(ids(&prefix), expect(&["first", "second"]));
    // A mark on a later line (files joined with `cat`) is named.
    std::fs::write(&jsonl, "{\"text\": \"hi\"}\n\u{feff}{\"text\": \"yo\"}\n").unwrap();
    let out = run(&["write", "--input", p(&jsonl), "--output", p(&prefix)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "error: {} line 2: not valid JSON: it starts with a UTF-8 byte order mark, which only \
             the first line may carry (",
            jsonl.display()
        )),
        "{err}"
    );
}

/// The end-of-text token of the test tokenizer.
use common::bpe::EOT;

/// Documents of prose with repeats, so that BPE learns merges from them.
const DOCS: [&str; 6] = [
    "The quick brown fox jumps over the lazy dog.",
    "A shard holds token ids; the index holds where each sequence starts.",
    "The lazy dog sleeps, and the quick fox jumps again over the dog.",
    "Caf\u{e9} cr\u{e8}me br\u{fb}l\u{e9}e, na\u{ef}ve \u{2014} and emoji \u{1f980} too.",
    "  Leading spaces, trailing spaces,\nand a newline inside.  ",
    "Tokens, tokens, tokens: the quick brown fox again.",
];

/// Each document's ids as the tokenizer itself gives them, then the end-of-text id: what
/// `write --tokenizer T --eod EOT` must store.
fn expected_with_eot(tokenizer: &Path, docs: &[&str]) -> Vec<Vec<i64>> {
    let eot = eot_id(tokenizer);
    docs.iter()
        .map(|d| {
            let mut ids = reference_ids(tokenizer, d);
            ids.push(eot);
            ids
        })
        .collect()
}

/// Trains a small byte-level BPE (GPT-2 style: no prefix space, `<|endoftext|>` special) on
/// `DOCS` and saves it as `dir/tokenizer.json`.
fn train_tokenizer(dir: &Path) -> PathBuf {
    let tokenizer = common::bpe::train_byte_level(DOCS.iter(), 320, 1);
    let path = dir.join("tokenizer.json");
    tokenizer.save(&path, false).unwrap();
    path
}

/// `tokenizers`' own ids of `text` (no special tokens added), the reference for `write`.
fn reference_ids(tokenizer: &Path, text: &str) -> Vec<i64> {
    let t = tokenizers::Tokenizer::from_file(tokenizer).unwrap();
    let encoding = t.encode(text, false).unwrap();
    encoding.get_ids().iter().map(|&id| id as i64).collect()
}

/// The id of the end-of-text token in `tokenizer`.
fn eot_id(tokenizer: &Path) -> i64 {
    let t = tokenizers::Tokenizer::from_file(tokenizer).unwrap();
    t.token_to_id(EOT).unwrap() as i64
}

/// `DOCS` as JSON lines in `path`.
fn write_jsonl(path: &Path, docs: &[&str]) {
    let lines: String = docs
        .iter()
        .map(|d| format!("{}\n", serde_json::json!({ "text": d })))
        .collect();
    std::fs::write(path, lines).unwrap();
}

/// Every sequence of the shard at `prefix`, as ids.
fn sequences(prefix: &Path) -> Vec<Vec<i64>> {
    let shard = IndexedShard::open(prefix).unwrap();
    (0..shard.len())
        .map(|i| shard.get(i).unwrap().to_vec())
        .collect()
}

/// `shardflow ARGS`, which must fail with status 1; its stderr.
fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn a_tokenizer_and_an_eod_token_give_tokenizers_own_ids() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = train_tokenizer(dir.path());
    let input = dir.path().join("docs.jsonl");
    write_jsonl(&input, &DOCS);
    let prefix = dir.path().join("out/web");
    let said = ok(&[
        "write",
        "--input",
        p(&input),
        "--tokenizer",
        p(&tokenizer),
        "--eod",
        EOT,
        "--output",
        p(&prefix),
        "--quiet",
    ]);
    let eot = eot_id(&tokenizer);
    let expected = expected_with_eot(&tokenizer, &DOCS);
    let tokens: usize = expected.iter().map(Vec::len).sum();
    assert_eq!(
        said,
        format!(
            "wrote {}.idx/.bin: 6 documents, 6 sequences, {tokens} tokens, dtype u16\n",
            prefix.display()
        )
    );
    assert_eq!(sequences(&prefix), expected);
    // The same id given as a number, and a BOS in front.
    let again = dir.path().join("again");
    let bos = reference_ids(&tokenizer, "The")[0];
    ok(&[
        "write",
        "--input",
        p(&input),
        "--tokenizer",
        p(&tokenizer),
        "--eod",
        &eot.to_string(),
        "--bos",
        "The",
        "--output",
        p(&again),
        "--quiet",
    ]);
    let with_bos: Vec<Vec<i64>> = expected
        .iter()
        .map(|ids| [bos].into_iter().chain(ids.iter().copied()).collect())
        .collect();
    assert_eq!(sequences(&again), with_bos);
    // Without --eod a tokenizer appends nothing.
    let bare = dir.path().join("bare");
    ok(&[
        "write",
        "--input",
        p(&input),
        "--tokenizer",
        p(&tokenizer),
        "--output",
        p(&bare),
        "--quiet",
    ]);
    let no_eod: Vec<Vec<i64>> = DOCS.iter().map(|d| reference_ids(&tokenizer, d)).collect();
    assert_eq!(sequences(&bare), no_eod);
}

#[test]
fn a_token_not_in_the_vocabulary_and_a_missing_tokenizer_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = train_tokenizer(dir.path());
    let input = dir.path().join("docs.jsonl");
    write_jsonl(&input, &DOCS);
    let prefix = dir.path().join("out");
    let base = ["write", "--input", p(&input), "--output", p(&prefix)];
    let err = fails(&[&base[..], &["--tokenizer", p(&tokenizer), "--eod", "</s>"]].concat());
    assert!(err.contains("</s>"), "{err}");
    let err = fails(&[&base[..], &["--tokenizer", p(&tokenizer), "--eod", "99999"]].concat());
    assert!(err.contains("--eod 99999"), "{err}");
    let missing = dir.path().join("nope.json");
    let err = fails(&[&base[..], &["--tokenizer", p(&missing)]].concat());
    assert!(err.contains(p(&missing)), "{err}");
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "{\"not\": \"a tokenizer\"}").unwrap();
    let err = fails(&[&base[..], &["--tokenizer", p(&garbage)]].concat());
    assert!(err.contains(p(&garbage)), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!prefix.with_extension("bin").exists());
}

#[test]
fn the_shards_are_byte_identical_for_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = train_tokenizer(dir.path());
    let input = dir.path().join("many.jsonl");
    // Enough documents, of varied lengths, that threads overlap and finish out of order.
    let docs: Vec<String> = (0..3000)
        .map(|i| DOCS[i % DOCS.len()].repeat(1 + (i * 7919) % 13))
        .collect();
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    write_jsonl(&input, &refs);
    let mut outputs = Vec::new();
    for threads in ["1", "2", "4"] {
        let prefix = dir.path().join(format!("t{threads}"));
        ok(&[
            "write",
            "--input",
            p(&input),
            "--tokenizer",
            p(&tokenizer),
            "--eod",
            EOT,
            "--threads",
            threads,
            "--output",
            p(&prefix),
            "--quiet",
        ]);
        let bin = std::fs::read(prefix.with_extension("bin")).unwrap();
        let idx = std::fs::read(prefix.with_extension("idx")).unwrap();
        outputs.push((threads, bin, idx));
    }
    for (threads, bin, idx) in &outputs[1..] {
        assert!(*bin == outputs[0].1, "{threads} threads: the .bin differs");
        assert!(*idx == outputs[0].2, "{threads} threads: the .idx differs");
    }
    let first = sequences(&dir.path().join("t1"));
    assert_eq!(first.len(), 3000);
    let mut expected = reference_ids(&tokenizer, &docs[2999]);
    expected.push(eot_id(&tokenizer));
    assert_eq!(first[2999], expected);
}

#[test]
fn max_tokens_per_shard_splits_into_numbered_pairs_read_as_one_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("docs.jsonl");
    // Byte-level: each document is its bytes and 256, 11 tokens.
    let docs = [
        "aaaaaaaaaa",
        "bbbbbbbbbb",
        "cccccccccc",
        "dddddddddd",
        "eeeeeeeeee",
    ];
    write_jsonl(&input, &docs);
    let out = dir.path().join("shards");
    let prefix = out.join("web");
    let said = ok(&[
        "write",
        "--input",
        p(&input),
        "--output",
        p(&prefix),
        "--max-tokens-per-shard",
        "22",
    ]);
    // A pair is full once it holds 22 tokens: two documents each, the last one left over.
    let names: Vec<String> = ["00000", "00001", "00002"]
        .iter()
        .map(|n| format!("{}_{n}", prefix.display()))
        .collect();
    assert_eq!(
        said,
        format!(
            "wrote {}.idx/.bin: 2 documents, 2 sequences, 22 tokens, dtype u16\n\
             wrote {}.idx/.bin: 2 documents, 2 sequences, 22 tokens, dtype u16\n\
             wrote {}.idx/.bin: 1 documents, 1 sequences, 11 tokens, dtype u16\n\
             total: 5 documents, 55 tokens in 3 shards\n",
            names[0], names[1], names[2]
        )
    );
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "web_00000.bin",
            "web_00000.idx",
            "web_00001.bin",
            "web_00001.idx",
            "web_00002.bin",
            "web_00002.idx"
        ]
    );
    // `cat DIR` reads them as one dataset, in input order.
    let cat = ok(&["cat", p(&out)]);
    let expected: String = docs
        .iter()
        .map(|d| {
            let ids: Vec<String> = d
                .bytes()
                .map(|b| b.to_string())
                .chain(["256".into()])
                .collect();
            format!("[{}]\n", ids.join(","))
        })
        .collect();
    assert_eq!(cat, expected);
}

#[test]
fn skip_bad_counts_each_kind_and_without_it_the_first_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("mixed.jsonl");
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"{\"text\": \"good one\"}\n");
    bytes.extend_from_slice(b"{\"text\": oops}\n"); // malformed JSON
    bytes.extend_from_slice(b"{\"title\": \"x\"}\n"); // missing field
    bytes.extend_from_slice(b"{\"text\": null}\n"); // missing field (null)
    bytes.extend_from_slice(b"{\"text\": 7}\n"); // not a string
    bytes.extend_from_slice(b"{\"text\": \"bad \xff byte\"}\n"); // invalid UTF-8
    bytes.extend_from_slice(b"{\"text\": \"\"}\n"); // empty document
    bytes.extend_from_slice(b"{\"text\": \"good two\"}\n");
    std::fs::write(&input, &bytes).unwrap();
    let prefix = dir.path().join("out");
    let said = ok(&[
        "write",
        "--input",
        p(&input),
        "--output",
        p(&prefix),
        "--skip-bad",
    ]);
    assert_eq!(
        said,
        format!(
            "wrote {}.idx/.bin: 2 documents, 2 sequences, 18 tokens, dtype u16\n\
             skipped 6 bad records: 1 malformed JSON, 2 missing field, 1 not a string, \
             1 invalid UTF-8, 1 empty document\n",
            prefix.display()
        )
    );
    assert_eq!(ids(&prefix), expect(&["good one", "good two"]));

    // Without --skip-bad: the first bad line, by file and line, and no output.
    let fresh = dir.path().join("fresh");
    let err = fails(&["write", "--input", p(&input), "--output", p(&fresh)]);
    assert!(
        err.starts_with(&format!("error: {} line 2: ", input.display())),
        "{err}"
    );
    assert!(!fresh.with_extension("bin").exists());
    assert!(!fresh.with_extension("idx").exists());
}

#[test]
fn a_bad_line_is_named_with_its_file_and_line_when_a_tokenizer_encodes() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = train_tokenizer(dir.path());
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    write_jsonl(&data.join("a.jsonl"), &DOCS[..2]);
    std::fs::write(
        data.join("b.jsonl"),
        "{\"text\": \"fine\"}\n{\"body\": \"no text\"}\n",
    )
    .unwrap();
    let prefix = dir.path().join("out");
    let err = fails(&[
        "write",
        "--input",
        p(&data),
        "--tokenizer",
        p(&tokenizer),
        "--eod",
        EOT,
        "--output",
        p(&prefix),
        "--threads",
        "4",
    ]);
    assert!(
        err.starts_with(&format!(
            "error: {} line 2: ",
            data.join("b.jsonl").display()
        )),
        "{err}"
    );
    assert!(err.contains("\"text\""), "{err}");
    assert!(!prefix.with_extension("bin").exists());
}

#[test]
fn inspect_reports_the_id_range_and_checks_it_against_a_vocabulary_size() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = train_tokenizer(dir.path());
    let input = dir.path().join("docs.jsonl");
    write_jsonl(&input, &DOCS);
    let prefix = dir.path().join("web");
    ok(&[
        "write",
        "--input",
        p(&input),
        "--tokenizer",
        p(&tokenizer),
        "--eod",
        EOT,
        "--output",
        p(&prefix),
        "--quiet",
    ]);
    let seqs = sequences(&prefix);
    let all = seqs.iter().flatten().copied();
    let (lo, hi) = (all.clone().min().unwrap(), all.max().unwrap());
    for verify in [false, true] {
        let mut args = vec!["inspect", p(&prefix), "--json"];
        if verify {
            args.push("--verify");
        }
        let json: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
        assert_eq!(json[0]["min_id"], lo, "verify {verify}");
        assert_eq!(json[0]["max_id"], hi, "verify {verify}");
    }
    let table = ok(&["inspect", p(&prefix)]);
    assert!(
        table.lines().next().unwrap().contains("min_id  max_id"),
        "{table}"
    );
    // The whole vocabulary passes.
    let vocab = tokenizers::Tokenizer::from_file(&tokenizer)
        .unwrap()
        .get_vocab_size(true);
    ok(&["inspect", p(&prefix), "--vocab-size", &vocab.to_string()]);
    // A smaller one fails at the first id past it, after the report.
    let limit = hi;
    let (sequence, position) = seqs
        .iter()
        .enumerate()
        .find_map(|(i, s)| s.iter().position(|&id| id >= limit).map(|j| (i, j)))
        .unwrap();
    let out = run(&["inspect", p(&prefix), "--vocab-size", &limit.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("shard"));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: {}: sequence {sequence} position {position}: token id {} is outside the \
             vocabulary (--vocab-size {limit}: ids 0..{limit})\n",
            prefix.display(),
            seqs[sequence][position]
        )
    );
}

#[test]
fn cat_with_the_tokenizer_gives_the_text_back() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = train_tokenizer(dir.path());
    let input = dir.path().join("docs.jsonl");
    write_jsonl(&input, &DOCS);
    let prefix = dir.path().join("web");
    ok(&[
        "write",
        "--input",
        p(&input),
        "--tokenizer",
        p(&tokenizer),
        "--output",
        p(&prefix),
        "--quiet",
    ]);
    let cat = ok(&["cat", p(&prefix), "--tokenizer", p(&tokenizer)]);
    let texts: Vec<String> = cat
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(texts, DOCS);
    let one = ok(&[
        "cat",
        p(&prefix),
        "--tokenizer",
        p(&tokenizer),
        "--range",
        "3..4",
    ]);
    assert_eq!(one, format!("{}\n", serde_json::json!(DOCS[3])));
}

/// A Parquet file with a required UTF8 column `text`, one row group per slice of `groups`.
fn write_parquet(path: &Path, groups: &[&[&str]]) {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::sync::Arc;
    let schema = parse_message_type("message doc { required binary text (UTF8); }").unwrap();
    let props = Arc::new(WriterProperties::builder().build());
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, Arc::new(schema), props).unwrap();
    for rows in groups {
        let mut group = writer.next_row_group().unwrap();
        let mut col = group.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = rows.iter().map(|r| ByteArray::from(*r)).collect();
        col.typed::<ByteArrayType>()
            .write_batch(&values, None, None)
            .unwrap();
        col.close().unwrap();
        group.close().unwrap();
    }
    writer.close().unwrap();
}

#[test]
fn parquet_and_zstd_json_lines_by_glob_are_read_in_sorted_order() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = train_tokenizer(dir.path());
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    // Named so that the sorted order (a, b) is not the order they are written in.
    write_parquet(&corpus.join("b.parquet"), &[&DOCS[2..4], &DOCS[4..]]);
    let lines: String = DOCS[..2]
        .iter()
        .map(|d| format!("{}\n", serde_json::json!({ "text": d })))
        .collect();
    let zst = zstd::stream::encode_all(lines.as_bytes(), 1).unwrap();
    std::fs::write(corpus.join("a.jsonl.zst"), zst).unwrap();
    let prefix = dir.path().join("shards/pq");
    let glob = corpus.join("*");
    ok(&[
        "write",
        "--input",
        p(&glob),
        "--field",
        "text",
        "--tokenizer",
        p(&tokenizer),
        "--eod",
        EOT,
        "--output",
        p(&prefix),
        "--quiet",
    ]);
    let expected = expected_with_eot(&tokenizer, &DOCS);
    assert_eq!(sequences(&prefix), expected);
}

#[test]
fn the_engines_write_the_same_shards_and_say_which_ran() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = train_tokenizer(dir.path());
    let input = dir.path().join("docs.jsonl");
    let docs: Vec<String> = (0..200)
        .map(|i| {
            format!(
                "{}  naïve café 42 {}\n",
                DOCS[i % DOCS.len()],
                "x".repeat(i % 7)
            )
        })
        .collect();
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    write_jsonl(&input, &refs);
    let write = |tokenizer: &Path, engine: &str, name: &str| {
        let prefix = dir.path().join(name);
        let out = run(&[
            "write",
            "--input",
            p(&input),
            "--tokenizer",
            p(tokenizer),
            "--eod",
            EOT,
            "--engine",
            engine,
            "--output",
            p(&prefix),
        ]);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(out.status.success(), "--engine {engine}: {stderr}");
        (std::fs::read(prefix.with_extension("bin")).unwrap(), stderr)
    };
    let (fast, said) = write(&tokenizer, "fast", "fast");
    assert!(said.contains("(engine fast)"), "{said}");
    let (hf, said) = write(&tokenizer, "hf", "hf");
    assert!(said.contains("(engine hf)"), "{said}");
    let (auto, said) = write(&tokenizer, "auto", "auto");
    assert!(said.contains("(engine fast)"), "{said}");
    assert!(fast == hf && auto == hf, "the engines' shards differ");
    assert_eq!(
        sequences(&dir.path().join("fast")),
        expected_with_eot(&tokenizer, &refs)
    );

    // A normalizer is beyond the fast engine: auto says so and encodes with tokenizers, fast
    // refuses, naming the file and the reason.
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tokenizer).unwrap()).unwrap();
    json["normalizer"] = serde_json::json!({"type": "NFC"});
    let nfc = dir.path().join("nfc.json");
    std::fs::write(&nfc, json.to_string()).unwrap();
    let (_, said) = write(&nfc, "auto", "nfc");
    assert!(said.contains("(engine hf)"), "{said}");
    assert!(said.contains("normalizer (NFC)"), "{said}");
    let err = fails(&[
        "write",
        "--input",
        p(&input),
        "--tokenizer",
        p(&nfc),
        "--engine",
        "fast",
        "--output",
        p(&dir.path().join("refused")),
    ]);
    assert!(
        err.contains(p(&nfc)) && err.contains("normalizer (NFC)"),
        "{err}"
    );
    assert!(!dir.path().join("refused.bin").exists());
}
