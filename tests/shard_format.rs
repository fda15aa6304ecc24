//! The Megatron format as DESIGN.md lays it out, built byte by byte (not by our writer), and one
//! test per validation rule: the error variant, and a message naming the file and the offset.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use shardflow::{Dtype, Error, IndexedShard, Shard};

/// A `.idx` built field by field from the layout in DESIGN.md.
struct RawIdx {
    magic: Vec<u8>,
    version: u64,
    code: u8,
    n: u64,
    d: u64,
    lengths: Vec<i32>,
    pointers: Vec<i64>,
    docs: Vec<i64>,
    trailer: Vec<u8>,
}

impl RawIdx {
    /// Three i16 sequences of lengths 2, 0, 3 in two documents: [0, 2, 3].
    fn valid() -> Self {
        RawIdx {
            magic: b"MMIDIDX\x00\x00".to_vec(),
            version: 1,
            code: 3,
            n: 3,
            d: 3,
            lengths: vec![2, 0, 3],
            pointers: vec![0, 4, 4],
            docs: vec![0, 2, 3],
            trailer: vec![],
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = self.magic.clone();
        b.extend(self.version.to_le_bytes());
        b.push(self.code);
        b.extend(self.n.to_le_bytes());
        b.extend(self.d.to_le_bytes());
        self.lengths.iter().for_each(|l| b.extend(l.to_le_bytes()));
        self.pointers.iter().for_each(|p| b.extend(p.to_le_bytes()));
        self.docs.iter().for_each(|d| b.extend(d.to_le_bytes()));
        b.extend(&self.trailer);
        b
    }
}

/// The `.bin` for [`RawIdx::valid`]: i16 ids [-3, 7], [], [300, -32768, 32767].
fn valid_bin() -> Vec<u8> {
    [-3i16, 7, 300, -32768, 32767]
        .iter()
        .flat_map(|t| t.to_le_bytes())
        .collect()
}

fn write_pair(dir: &Path, idx: &[u8], bin: &[u8]) -> PathBuf {
    let prefix = dir.join("shard");
    std::fs::write(dir.join("shard.idx"), idx).unwrap();
    std::fs::write(dir.join("shard.bin"), bin).unwrap();
    prefix
}

fn open_raw(idx: &RawIdx, bin: &[u8]) -> (tempfile::TempDir, Result<IndexedShard, Error>) {
    let dir = tempfile::tempdir().unwrap();
    let prefix = write_pair(dir.path(), &idx.bytes(), bin);
    let r = IndexedShard::open(&prefix);
    (dir, r)
}

/// Opens the mutated index and returns the error with its message.
fn fails(idx: &RawIdx, bin: &[u8]) -> (Error, String) {
    let (dir, r) = open_raw(idx, bin);
    let e = r.expect_err("the shard must be rejected");
    let msg = e.to_string();
    let idx_path = dir.path().join("shard.idx").display().to_string();
    let bin_path = dir.path().join("shard.bin").display().to_string();
    assert!(
        msg.contains(&idx_path) || msg.contains(&bin_path),
        "the message names the file: {msg}"
    );
    (e, msg)
}

#[test]
fn hand_built_shard_reads_back() {
    let (_dir, shard) = open_raw(&RawIdx::valid(), &valid_bin());
    let shard = shard.unwrap();
    assert_eq!(shard.dtype(), Dtype::I16);
    assert_eq!(shard.len(), 3);
    assert_eq!(shard.documents(), 2);
    assert_eq!(shard.document(0), Some(0..2));
    assert_eq!(shard.document(1), Some(2..3));
    assert_eq!(shard.document(2), None);
    assert_eq!(shard.document_boundaries().collect::<Vec<_>>(), [0, 2, 3]);
    assert_eq!(shard.get(0).unwrap().to_vec(), [-3, 7]);
    assert!(shard.get(1).unwrap().is_empty());
    assert_eq!(shard.get(2).unwrap().to_vec(), [300, -32768, 32767]);
    assert!(shard.get(3).is_none());
    assert_eq!(shard.sequence_len(2), Some(3));
    assert_eq!(shard.tokens(), 5);
    // The sequence is borrowed straight from the map of the .bin.
    assert_eq!(shard.get(2).unwrap().as_bytes(), &valid_bin()[4..10]);
    assert_eq!(shard.get(2).unwrap().offset(), 4);

    let mut out = [0i64; 4];
    assert_eq!(shard.get(2).unwrap().decode_into(&mut out).unwrap(), 3);
    assert_eq!(out, [300, -32768, 32767, 0]);
    let mut out32 = [0i32; 3];
    shard.get(0).unwrap().decode_into(&mut out32).unwrap();
    assert_eq!(out32, [-3, 7, 0]);
}

#[test]
fn bytes_after_document_indices_are_allowed() {
    let mut idx = RawIdx::valid();
    idx.trailer = vec![0, 1, 0]; // Megatron's multimodal sequence modes, one i8 per sequence
    let (_dir, shard) = open_raw(&idx, &valid_bin());
    assert_eq!(
        shard.unwrap().get(2).unwrap().to_vec(),
        [300, -32768, 32767]
    );
}

#[test]
fn missing_idx_and_missing_bin() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("nothing");
    let e = IndexedShard::open(&prefix).unwrap_err();
    assert!(
        matches!(&e, Error::MissingFile { path } if path.ends_with("nothing.idx")),
        "{e}"
    );
    assert!(e.to_string().contains("nothing.idx: file not found"), "{e}");

    std::fs::write(dir.path().join("nothing.idx"), RawIdx::valid().bytes()).unwrap();
    let e = IndexedShard::open(&prefix).unwrap_err();
    assert!(
        matches!(&e, Error::UnpairedShard { bin, .. } if bin.ends_with("nothing.bin")),
        "{e}"
    );
    assert!(e.to_string().contains("the .bin is missing"), "{e}");

    // The state an interrupted write leaves: a .bin without its .idx.
    std::fs::remove_file(dir.path().join("nothing.idx")).unwrap();
    std::fs::write(dir.path().join("nothing.bin"), valid_bin()).unwrap();
    let e = IndexedShard::open(&prefix).unwrap_err();
    assert!(matches!(&e, Error::UnpairedShard { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("the .idx is missing beside an existing .bin"),
        "{e}"
    );
}

#[test]
fn bad_magic() {
    let mut idx = RawIdx::valid();
    idx.magic = b"TNTIDX\x00\x00\x00".to_vec(); // the old fairseq lazy format
    let (e, msg) = fails(&idx, &valid_bin());
    assert!(matches!(e, Error::BadMagic { .. }), "{msg}");
    assert!(
        msg.contains("offset 0: bad magic 544e544944580000"),
        "{msg}"
    );

    // A file shorter than the magic but agreeing with its start is merely truncated.
    let dir = tempfile::tempdir().unwrap();
    let prefix = write_pair(dir.path(), b"MMID", &[]);
    let e = IndexedShard::open(&prefix).unwrap_err();
    assert!(
        matches!(
            e,
            Error::TruncatedIndex {
                what: "header",
                needed: 34,
                len: 4,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn unsupported_version() {
    let mut idx = RawIdx::valid();
    idx.version = 2;
    let (e, msg) = fails(&idx, &valid_bin());
    assert!(
        matches!(
            e,
            Error::UnsupportedVersion {
                offset: 9,
                version: 2,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("offset 9: unsupported index version 2"),
        "{msg}"
    );
}

#[test]
fn unknown_dtype_and_float_dtypes() {
    for code in [0u8, 9, 255] {
        let mut idx = RawIdx::valid();
        idx.code = code;
        let (e, msg) = fails(&idx, &valid_bin());
        assert!(
            matches!(e, Error::UnknownDtype { offset: 17, code: c, .. } if c == code),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("offset 17: unknown dtype code {code}")),
            "{msg}"
        );
    }
    for (code, name) in [(6u8, "f64"), (7, "f32")] {
        let mut idx = RawIdx::valid();
        idx.code = code;
        let (e, msg) = fails(&idx, &valid_bin());
        assert!(
            matches!(e, Error::NotTokenIds { offset: 17, dtype, .. } if dtype == name),
            "{msg}"
        );
        assert!(msg.contains("not token ids"), "{msg}");
    }
}

#[test]
fn index_too_short_for_its_arrays() {
    let full = RawIdx::valid().bytes();
    // Cut inside each array in turn: lengths end at 46, pointers at 70, document indices at 94.
    for (cut, what, needed) in [
        (40, "lengths", 46u128),
        (60, "pointers", 70),
        (80, "document indices", 94),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let prefix = write_pair(dir.path(), &full[..cut], &valid_bin());
        let e = IndexedShard::open(&prefix).unwrap_err();
        assert!(
            matches!(e, Error::TruncatedIndex { what: w, needed: n, len, .. }
                if w == what && n == needed && len == cut as u64),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains(&format!("reach byte {needed}, but it ends at byte {cut}"))
        );
    }
    // A count so large that the array size overflows u64 is also "too short", not a panic.
    let mut idx = RawIdx::valid();
    idx.n = u64::MAX;
    let (e, _) = fails(&idx, &valid_bin());
    assert!(
        matches!(
            e,
            Error::TruncatedIndex {
                what: "lengths",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn negative_length() {
    let mut idx = RawIdx::valid();
    idx.lengths[1] = -1;
    let (e, msg) = fails(&idx, &valid_bin());
    // Lengths start at 34; entry 1 is at 38.
    assert!(
        matches!(
            e,
            Error::NegativeLength {
                offset: 38,
                sequence: 1,
                length: -1,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("offset 38: sequence 1 has negative length -1"),
        "{msg}"
    );
}

#[test]
fn pointer_that_does_not_match_the_lengths() {
    let mut idx = RawIdx::valid();
    idx.pointers[2] = 2; // sequence 0 ends at byte 4
    let (e, msg) = fails(&idx, &valid_bin());
    // Pointers start at 34 + 4*3 = 46; entry 2 is at 62.
    assert!(
        matches!(
            e,
            Error::BadPointer {
                offset: 62,
                sequence: 2,
                found: 2,
                expected: 4,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("offset 62: sequence 2 points to byte 2"),
        "{msg}"
    );
}

#[test]
fn sequence_past_the_end_of_bin() {
    let bin = valid_bin();
    let (e, msg) = fails(&RawIdx::valid(), &bin[..8]);
    assert!(
        matches!(
            e,
            Error::SequenceOutOfBin {
                offset: 42,
                sequence: 2,
                end: 10,
                bin_len: 8,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("shard.bin, which holds only 8 bytes"), "{msg}");
}

#[test]
fn document_indices_rules() {
    let docs_at = 34 + 12 * 3;
    let cases: [(Vec<i64>, u64, u64, i64, &str); 4] = [
        (
            vec![1, 2, 3],
            0,
            docs_at,
            1,
            "the first document index must be 0",
        ),
        (
            vec![0, 3, 2, 3],
            2,
            docs_at + 16,
            2,
            "must rise monotonically",
        ),
        (
            vec![0, 2],
            1,
            docs_at + 8,
            2,
            "must equal the sequence count 3",
        ),
        (
            vec![0, 2, 4],
            2,
            docs_at + 16,
            4,
            "must equal the sequence count 3",
        ),
    ];
    for (docs, entry, offset, value, rule) in cases {
        let mut idx = RawIdx::valid();
        idx.d = docs.len() as u64;
        idx.docs = docs;
        let (e, msg) = fails(&idx, &valid_bin());
        assert!(
            matches!(&e, Error::BadDocumentIndex { entry: en, offset: o, value: v, .. }
                if *en == entry && *o == offset && *v == value),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("offset {offset}: document index entry {entry}")),
            "{msg}"
        );
        assert!(msg.contains(rule), "{msg}");
    }
    let mut idx = RawIdx::valid();
    idx.d = 0;
    idx.docs.clear();
    let (e, msg) = fails(&idx, &valid_bin());
    assert!(
        matches!(e, Error::BadDocumentIndex { entry: 0, .. }),
        "{msg}"
    );
    assert!(msg.contains("the document index is empty"), "{msg}");
}

/// A valid header (magic, version 1) with the given dtype code and counts, then `body`.
fn header(code: u8, n: u64, d: u64, body: &[u8]) -> Vec<u8> {
    let mut b = b"MMIDIDX\x00\x00".to_vec();
    b.extend(1u64.to_le_bytes());
    b.push(code);
    b.extend(n.to_le_bytes());
    b.extend(d.to_le_bytes());
    b.extend(body);
    b
}

/// A dtype code (mostly valid), small counts, and random array bytes of about the length the
/// counts announce (sometimes shorter or longer), with small values often enough that the
/// validation gets past its first checks.
fn header_and_body() -> impl Strategy<Value = (u8, u64, u64, Vec<u8>)> {
    (0u8..10, 0u64..6, 0u64..8, -8i64..16).prop_flat_map(|(code, n, d, slack)| {
        let len = (12 * n + 8 * d) as i64 + slack;
        let small = prop_oneof![any::<u8>(), 0u8..4];
        (
            Just(code),
            Just(n),
            Just(d),
            proptest::collection::vec(small, len.max(0) as usize),
        )
    })
}

#[test]
fn seeded_headers_reach_the_array_checks() {
    // The property above must exercise more than the magic check: count how far the parser
    // gets on its inputs (a fixed seed, so the count is repeatable).
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut past_header, mut opened, total) = (0, 0, 400);
    for _ in 0..total {
        let (code, n, d, body) = header_and_body().new_tree(&mut runner).unwrap().current();
        let prefix = write_pair(dir.path(), &header(code, n, d, &body), &valid_bin());
        match IndexedShard::open(&prefix) {
            Ok(_) => opened += 1,
            Err(
                Error::BadMagic { .. }
                | Error::UnsupportedVersion { .. }
                | Error::UnknownDtype { .. }
                | Error::NotTokenIds { .. }
                | Error::TruncatedIndex { .. },
            ) => {}
            Err(_) => past_header += 1,
        }
    }
    assert!(
        past_header + opened > total / 4,
        "{past_header} of {total} reached the array checks, {opened} opened"
    );
}

/// Opens `idx` and, if it opens, reads every sequence and document: none of it may panic.
fn open_and_read_all(dir: &Path, idx: &[u8], bin: &[u8]) {
    let prefix = write_pair(dir, idx, bin);
    if let Ok(shard) = IndexedShard::open(&prefix) {
        let mut out = vec![0i64; 64];
        for i in 0..shard.len() {
            let seq = shard.get(i).unwrap();
            if seq.len() <= out.len() {
                seq.decode_into(&mut out).unwrap();
            }
        }
        for d in 0..shard.documents() {
            assert!(shard.document(d).is_some());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_arrays_behind_a_valid_header_never_panic(
        (code, n, d, body) in header_and_body(),
        bin in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let dir = tempfile::tempdir().unwrap();
        open_and_read_all(dir.path(), &header(code, n, d, &body), &bin);
    }

    #[test]
    fn mutated_valid_index_never_panics(
        flips in proptest::collection::vec((0usize..94, any::<u8>()), 1..6),
        cut in 0usize..120,
    ) {
        let mut idx = RawIdx::valid().bytes();
        idx.extend([0u8; 26]);
        for (at, byte) in flips {
            idx[at] = byte;
        }
        idx.truncate(cut);
        let dir = tempfile::tempdir().unwrap();
        open_and_read_all(dir.path(), &idx, &valid_bin());
    }

    #[test]
    fn mutated_counts_never_panic(n in any::<u64>(), d in any::<u64>(), code in 0u8..12) {
        let mut idx = RawIdx::valid();
        idx.n = n;
        idx.d = d;
        idx.code = code;
        let dir = tempfile::tempdir().unwrap();
        open_and_read_all(dir.path(), &idx.bytes(), &valid_bin());
    }
}
