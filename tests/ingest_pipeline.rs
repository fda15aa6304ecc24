//! Text to shards through the library: a byte-level BPE trained here (nothing downloaded),
//! encoded as `tokenizers` encodes, written in the Megatron layout `preprocess_data.py
//! --append-eod` writes, byte-identical for any thread count, split into shards that read back
//! as one dataset, and a failed write leaves no shard.
#![cfg(feature = "ingest")]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use shardflow::Error;
use shardflow::ingest::encode::Encoder;
use shardflow::ingest::pipeline::{IngestConfig, ingest};
use shardflow::ingest::{Document, Location};
use shardflow::loader::Source;
use shardflow::shard::{Dataset, IndexedShard, TRAILER_LEN};

mod common;

use common::bpe::{EOT, train_byte_level};

/// Deterministic prose-like text: words from a small lexicon (some non-ASCII), punctuation,
/// newlines, and now and then the special token written in the text.
fn corpus(docs: usize, seed: u64) -> Vec<String> {
    const WORDS: &[&str] = &[
        "the",
        "shard",
        "token",
        "reader",
        "writer",
        "order",
        "window",
        "thread",
        "Megatron",
        "naïve",
        "café",
        "über",
        "東京",
        "data",
        "loader",
        "sequence",
        "document",
        "index",
        "bytes",
        "of",
        "and",
        "in",
        "is",
        "a",
        "to",
        "with",
        "encode",
        "prefix",
        "split",
        "emoji🙂",
        "numbers",
        "1234",
        "3.14",
        "tab\there",
    ];
    const SYLLABLES: &[&str] = &[
        "ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "zen", "qua", "bri", "dor", "fel", "gha",
        "ish", "jo", "pla", "stro", "ü", "ñe", "ç", "xi", "wu", "yal",
    ];
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move |n: usize| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 33) as usize) % n
    };
    (0..docs)
        .map(|_| {
            let words = 1 + next(120);
            let mut s = String::new();
            for w in 0..words {
                if w > 0 {
                    s.push_str([" ", " ", " ", ", ", ". ", "\n", "  "][next(7)]);
                }
                if next(3) == 0 {
                    // An invented word, from syllables: enough variety for 1000 merges.
                    for _ in 0..1 + next(4) {
                        s.push_str(SYLLABLES[next(SYLLABLES.len())]);
                    }
                } else {
                    s.push_str(WORDS[next(WORDS.len())]);
                }
                if next(97) == 0 {
                    s.push_str(EOT);
                }
            }
            s
        })
        .collect()
}

/// A byte-level BPE (vocabulary 1000, `<|endoftext|>` added as a special token) trained on
/// the corpus once per test run, saved as `tokenizer.json`.
fn tokenizer_json() -> &'static Path {
    static PATH: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &PATH
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let tokenizer = train_byte_level(corpus(400, 1).into_iter(), 1000, 0);
            let path = dir.path().join("tokenizer.json");
            tokenizer.save(&path, false).unwrap();
            (dir, path)
        })
        .1
}

fn documents(texts: &[String]) -> impl Iterator<Item = shardflow::Result<Document>> + Send + use<> {
    let texts = texts.to_vec();
    texts.into_iter().enumerate().map(|(i, text)| {
        Ok(Document {
            text,
            at: Location::Line {
                path: PathBuf::from("in.jsonl"),
                line: i as u64 + 1,
            },
        })
    })
}

fn config(output: PathBuf, eod: u32, threads: usize) -> IngestConfig {
    IngestConfig {
        eod: Some(eod),
        threads,
        window: 5,
        ..IngestConfig::new(output)
    }
}

/// What `tokenizers` itself gives for each document, with the end-of-text id after it.
fn expected_sequences(texts: &[String], eod: u32) -> Vec<Vec<u32>> {
    let reference = tokenizers::Tokenizer::from_file(tokenizer_json()).unwrap();
    texts
        .iter()
        .map(|t| {
            let mut ids = reference
                .encode(t.as_str(), true)
                .unwrap()
                .get_ids()
                .to_vec();
            ids.push(eod);
            ids
        })
        .collect()
}

fn le_i64(b: &[u8]) -> i64 {
    i64::from_le_bytes(b.try_into().unwrap())
}

/// The `.idx` parsed by the layout Megatron-LM's `_IndexWriter` writes and `_IndexReader`
/// reads: magic, version, dtype code, counts, i32 lengths, i64 pointers, i64 document
/// indices; what follows is returned as the tail.
struct MegatronIdx {
    code: u8,
    lengths: Vec<i32>,
    pointers: Vec<i64>,
    doc_idx: Vec<i64>,
    tail: Vec<u8>,
}

fn parse_idx(path: &Path) -> MegatronIdx {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..9], b"MMIDIDX\x00\x00", "magic");
    assert_eq!(le_i64(&b[9..17]), 1, "version");
    let code = b[17];
    let n = le_i64(&b[18..26]) as usize;
    let d = le_i64(&b[26..34]) as usize;
    let mut at = 34;
    let lengths = (0..n)
        .map(|i| i32::from_le_bytes(b[at + 4 * i..at + 4 * i + 4].try_into().unwrap()))
        .collect();
    at += 4 * n;
    let pointers = (0..n)
        .map(|i| le_i64(&b[at + 8 * i..at + 8 * i + 8]))
        .collect();
    at += 8 * n;
    let doc_idx = (0..d)
        .map(|i| le_i64(&b[at + 8 * i..at + 8 * i + 8]))
        .collect();
    at += 8 * d;
    MegatronIdx {
        code,
        lengths,
        pointers,
        doc_idx,
        tail: b[at..].to_vec(),
    }
}

fn pair(prefix: &Path) -> (Vec<u8>, Vec<u8>) {
    let read = |ext: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(ext);
        std::fs::read(PathBuf::from(p)).unwrap()
    };
    (read(".idx"), read(".bin"))
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn ids_equal_tokenizers_and_layout_equals_megatron() {
    let encoder = Encoder::from_file(tokenizer_json()).unwrap();
    assert_eq!(encoder.vocab_size(), 1000);
    let eod = encoder.id_of(EOT).unwrap();
    let texts = corpus(60, 7);
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("web");
    let summary = ingest(
        documents(&texts),
        &encoder,
        &config(prefix.clone(), eod, 3),
        |_| {},
    )
    .unwrap();
    let expected = expected_sequences(&texts, eod);
    let tokens: usize = expected.iter().map(Vec::len).sum();
    assert_eq!(summary.documents, 60);
    assert_eq!(summary.tokens, tokens as u64);
    assert_eq!(summary.shards.len(), 1);
    assert_eq!(summary.shards[0].prefix, prefix);
    // The special token written in the text is matched as one id, as the tokenizer says.
    assert!(expected.iter().any(|s| s[..s.len() - 1].contains(&eod)));

    // What Megatron's IndexedDatasetBuilder.add_document(ids, [len(ids)]) writes for each
    // document, then finalize: u16 (code 8) for a vocabulary under 65500.
    let idx = parse_idx(&prefix.with_extension("idx"));
    assert_eq!(idx.code, 8, "uint16");
    let lengths: Vec<i32> = expected.iter().map(|s| s.len() as i32).collect();
    assert_eq!(idx.lengths, lengths);
    let pointers: Vec<i64> = expected
        .iter()
        .scan(0i64, |at, s| {
            let p = *at;
            *at += 2 * s.len() as i64;
            Some(p)
        })
        .collect();
    assert_eq!(idx.pointers, pointers);
    assert_eq!(idx.doc_idx, (0..=60).collect::<Vec<i64>>());
    assert_eq!(
        idx.tail.len(),
        TRAILER_LEN,
        "only shardflow's trailer follows the arrays"
    );
    let bin: Vec<u8> = expected
        .iter()
        .flatten()
        .flat_map(|&id| (id as u16).to_le_bytes())
        .collect();
    assert_eq!(std::fs::read(prefix.with_extension("bin")).unwrap(), bin);

    // And shardflow reads it back, trailer checked.
    let shard = IndexedShard::open(&prefix).unwrap();
    assert_eq!(shard.documents(), 60);
    // Decoding gives the text back (byte-level BPE is lossless), the eod shown by name.
    let first: Vec<u32> = expected[0].clone();
    assert_eq!(
        encoder.decode(&first).unwrap(),
        format!("{}{EOT}", texts[0])
    );
}

#[test]
fn shards_are_byte_identical_for_1_2_and_8_threads() {
    let encoder = Encoder::from_file(tokenizer_json()).unwrap();
    let eod = encoder.id_of(EOT).unwrap();
    let texts = corpus(150, 11);
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for threads in [1, 2, 8] {
        let prefix = dir.path().join(format!("t{threads}"));
        let mut cfg = config(prefix.clone(), eod, threads);
        cfg.window = if threads == 8 { 3 } else { 64 };
        cfg.bos = Some(0);
        let mut calls = 0;
        ingest(documents(&texts), &encoder, &cfg, |p| {
            calls += 1;
            assert!(p.documents <= 150);
        })
        .unwrap();
        assert!(calls >= 1, "progress is reported at least at the end");
        outputs.push(pair(&prefix));
    }
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(outputs[0], outputs[2]);
    let shard = IndexedShard::open(dir.path().join("t8")).unwrap();
    let expected = expected_sequences(&texts, eod);
    for (i, e) in expected.iter().enumerate() {
        let got: Vec<i64> = shard.get_sequence(i);
        assert_eq!(got[0], 0, "bos first");
        assert_eq!(
            got[1..],
            e.iter().map(|&t| t as i64).collect::<Vec<_>>()[..]
        );
    }
}

/// Sequence `i` of a shard as ids.
trait Sequences {
    fn get_sequence(&self, i: usize) -> Vec<i64>;
}

impl Sequences for IndexedShard {
    fn get_sequence(&self, i: usize) -> Vec<i64> {
        use shardflow::Shard;
        self.get(i).unwrap().to_vec()
    }
}

impl Sequences for Dataset {
    fn get_sequence(&self, i: usize) -> Vec<i64> {
        self.get(i).unwrap().to_vec()
    }
}

#[test]
fn split_shards_read_back_as_one_dataset_in_order() {
    let encoder = Encoder::from_file(tokenizer_json()).unwrap();
    let eod = encoder.id_of(EOT).unwrap();
    let mut texts = corpus(80, 23);
    // One document longer than a shard: it gets a shard of its own.
    texts[40] = corpus(30, 5).join(" ");
    let expected = expected_sequences(&texts, eod);
    let max = 400u64;
    assert!(expected[40].len() as u64 > max);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let prefix = out.join("web");

    // A first, finer split leaves more shards than the second writes: those go.
    let mut cfg = config(prefix.clone(), eod, 2);
    cfg.max_tokens_per_shard = Some(max / 2);
    let first = ingest(documents(&texts), &encoder, &cfg, |_| {}).unwrap();
    cfg.max_tokens_per_shard = Some(max);
    let summary = ingest(documents(&texts), &encoder, &cfg, |_| {}).unwrap();
    assert!(first.shards.len() > summary.shards.len());
    assert_eq!(
        summary.removed_shards.len(),
        2 * (first.shards.len() - summary.shards.len())
    );

    // Greedy packing, computed here: a new shard when the next document would pass max.
    let mut plan: Vec<Vec<usize>> = vec![vec![]];
    let mut in_shard = 0u64;
    for (i, s) in expected.iter().enumerate() {
        let n = s.len() as u64;
        if in_shard > 0 && in_shard + n > max {
            plan.push(vec![]);
            in_shard = 0;
        }
        plan.last_mut().unwrap().push(i);
        in_shard += n;
    }
    assert_eq!(summary.shards.len(), plan.len());
    let alone = plan.iter().find(|p| p.contains(&40)).unwrap();
    assert_eq!(alone, &vec![40], "the long document has a shard of its own");
    for (k, (s, docs)) in summary.shards.iter().zip(&plan).enumerate() {
        assert_eq!(s.prefix, out.join(format!("web_{k:05}")));
        assert_eq!(s.documents, docs.len() as u64);
        let tokens: u64 = docs.iter().map(|&i| expected[i].len() as u64).sum();
        assert_eq!(s.tokens, tokens);
        assert!(tokens <= max || docs.len() == 1);
    }
    let mut names = Vec::new();
    for k in 0..plan.len() {
        names.push(format!("web_{k:05}.bin"));
        names.push(format!("web_{k:05}.idx"));
    }
    assert_eq!(files_in(&out), names);

    // `--data DIR`: the directory reads as one dataset with every document in order.
    let source = Source::open_dir(&out, 1.0).unwrap();
    assert_eq!(source.data.len(), 80);
    for (i, e) in expected.iter().enumerate() {
        let want: Vec<i64> = e.iter().map(|&t| t as i64).collect();
        assert_eq!(source.data.get_sequence(i), want, "document {i}");
    }
}

#[test]
fn byte_level_keeps_the_byte_ids_and_u16() {
    let encoder = Encoder::byte_level();
    // A document of no ids is written as Megatron writes it: no sequence, no eod.
    let texts = vec!["héllo".to_string(), String::new(), "a\nb".to_string()];
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("bytes");
    let eod = encoder.id_of("256").unwrap();
    ingest(
        documents(&texts),
        &encoder,
        &config(prefix.clone(), eod, 2),
        |_| {},
    )
    .unwrap();
    let idx = parse_idx(&prefix.with_extension("idx"));
    assert_eq!(idx.code, 8);
    assert_eq!(idx.lengths, [7, 4]);
    assert_eq!(idx.doc_idx, [0, 1, 1, 2]);
    let ids: Vec<u16> = "héllo"
        .bytes()
        .map(u16::from)
        .chain([256])
        .chain("a\nb".bytes().map(u16::from))
        .chain([256])
        .collect();
    let bin: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    assert_eq!(std::fs::read(prefix.with_extension("bin")).unwrap(), bin);
}

#[test]
fn tokenizer_file_errors_name_the_file_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let e = Encoder::from_file(&missing).unwrap_err();
    assert!(matches!(e, Error::MissingFile { .. }), "{e}");
    assert!(e.to_string().contains("nope.json"), "{e}");

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"model": {"type": "BPE", "vocab": 3}}"#).unwrap();
    let e = Encoder::from_file(&bad).unwrap_err().to_string();
    assert!(
        e.contains("bad.json") && e.contains("not a Hugging Face tokenizer.json"),
        "{e}"
    );

    let encoder = Encoder::from_file(tokenizer_json()).unwrap();
    let e = encoder.id_of("<|eot_id|>").unwrap_err().to_string();
    assert!(
        e.contains("\"<|eot_id|>\"") && e.contains("not in the vocabulary"),
        "{e}"
    );
    let e = encoder.id_of("1000").unwrap_err().to_string();
    assert!(e.contains("id 1000") && e.contains("1000 ids"), "{e}");
    assert_eq!(encoder.id_of("999").unwrap(), 999);
    let e = encoder.decode(&[5, 1000]).unwrap_err().to_string();
    assert!(e.contains("id 1000"), "{e}");
}

#[test]
fn an_error_mid_stream_leaves_no_shard() {
    let encoder = Encoder::from_file(tokenizer_json()).unwrap();
    let eod = encoder.id_of(EOT).unwrap();
    let texts = corpus(60, 3);
    let failing = |at: usize| {
        documents(&texts).enumerate().map(move |(i, d)| {
            if i == at {
                Err(Error::Input {
                    path: PathBuf::from("in.jsonl"),
                    line: at as u64 + 1,
                    reason: "not valid JSON".into(),
                })
            } else {
                d
            }
        })
    };
    // The error first, mid-batch, on a batch boundary (windows of 1 and 5 documents make
    // batches of 1; the default one batch of all 60), last.
    for (threads, window, at) in [
        (1, 5, 45),
        (4, 5, 45),
        (1, 5, 0),
        (4, 1, 0),
        (2, 1, 30),
        (2, 8, 2),
        (2, 8, 4),
        (4, IngestConfig::default_window(4), 0),
        (4, IngestConfig::default_window(4), 45),
        (1, IngestConfig::default_window(1), 59),
    ] {
        let line = format!("in.jsonl line {}", at + 1);
        let dir = tempfile::tempdir().unwrap();
        // One shard: an existing pair stays as it was.
        let prefix = dir.path().join("web");
        ingest(
            documents(&texts[..3]),
            &encoder,
            &config(prefix.clone(), eod, 1),
            |_| {},
        )
        .unwrap();
        let before = pair(&prefix);
        let mut cfg = config(prefix.clone(), eod, threads);
        cfg.window = window;
        let e = ingest(failing(at), &encoder, &cfg, |_| {}).unwrap_err();
        assert!(
            e.to_string().contains(&line),
            "{threads} threads, window {window}: {e}"
        );
        assert_eq!(pair(&prefix), before);
        assert_eq!(files_in(dir.path()), ["web.bin", "web.idx"]);

        // Split: the shards already in place go too.
        let split = dir.path().join("split");
        std::fs::create_dir(&split).unwrap();
        let mut cfg = config(split.join("web"), eod, threads);
        cfg.window = window;
        cfg.max_tokens_per_shard = Some(200);
        let e = ingest(failing(at), &encoder, &cfg, |_| {}).unwrap_err();
        assert!(
            e.to_string().contains(&line),
            "{threads} threads, window {window}: {e}"
        );
        assert_eq!(files_in(&split), Vec::<String>::new());
    }
}

#[test]
fn a_bad_config_is_refused_before_any_file() {
    let encoder = Encoder::byte_level();
    let dir = tempfile::tempdir().unwrap();
    for (threads, window, max) in [(0, 4, None), (1, 0, None), (1, 4, Some(0))] {
        let cfg = IngestConfig {
            threads,
            window,
            max_tokens_per_shard: max,
            ..IngestConfig::new(dir.path().join("x"))
        };
        let e = ingest(documents(&["a".into()]), &encoder, &cfg, |_| {}).unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e}");
    }
    assert!(files_in(dir.path()).is_empty());
}
