//! Writer → reader round trips, decoding into each output id type, multi-shard datasets and flat
//! token files.

use std::path::Path;
use std::sync::Arc;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use shardflow::{Dataset, Dtype, Error, FlatShard, IndexedShard, IndexedWriter, Shard};

/// Deterministic documents: several sequences each, some of length zero, ids spanning `dtype`.
fn documents(dtype: Dtype, count: usize, seed: u64) -> Vec<Vec<Vec<i64>>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (lo, hi) = dtype.range();
    let span = (hi as i128 - lo as i128 + 1) as u128;
    (0..count)
        .map(|_| {
            let sequences = 1 + rng.next_u32() as usize % 4;
            (0..sequences)
                .map(|_| {
                    let len = match rng.next_u32() % 8 {
                        0 => 0,
                        _ => rng.next_u32() as usize % 40,
                    };
                    (0..len)
                        .map(|j| match j % 9 {
                            0 => lo,
                            1 => hi,
                            _ => (lo as i128 + (rng.next_u64() as u128 % span) as i128) as i64,
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
}

fn write(prefix: &Path, dtype: Option<Dtype>, docs: &[Vec<Vec<i64>>]) -> shardflow::ShardSummary {
    let mut w = IndexedWriter::create(prefix, dtype).unwrap();
    for doc in docs {
        for seq in doc {
            w.add_sequence(seq).unwrap();
        }
        w.end_document().unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn every_integer_dtype_round_trips() {
    for dtype in Dtype::MEGATRON {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join(dtype.name());
        let docs = documents(dtype, 1500, dtype.size() as u64);
        let summary = write(&prefix, Some(dtype), &docs);
        let flat: Vec<&Vec<i64>> = docs.iter().flatten().collect();
        assert!(flat.len() > 3000, "thousands of sequences");
        assert!(
            flat.iter().any(|s| s.is_empty()),
            "zero-length sequences are covered"
        );
        assert_eq!(summary.dtype, dtype);
        assert_eq!(summary.sequences, flat.len() as u64);
        assert_eq!(summary.documents, docs.len() as u64);

        let shard = IndexedShard::open(&prefix).unwrap();
        assert_eq!(shard.dtype(), dtype);
        assert_eq!(shard.len(), flat.len());
        assert_eq!(shard.documents(), docs.len());
        assert_eq!(
            shard.tokens(),
            flat.iter().map(|s| s.len() as u64).sum::<u64>()
        );
        for (i, seq) in flat.iter().enumerate() {
            assert_eq!(
                &shard.get(i).unwrap().to_vec(),
                *seq,
                "{dtype} sequence {i}"
            );
            assert_eq!(shard.sequence_len(i), Some(seq.len()));
        }
        let mut first = 0;
        for (d, doc) in docs.iter().enumerate() {
            assert_eq!(
                shard.document(d),
                Some(first..first + doc.len()),
                "{dtype} document {d}"
            );
            first += doc.len();
        }
        // The file size is exactly the tokens times the dtype size: no header, no padding.
        let bin = std::fs::metadata(shard.bin_path()).unwrap().len();
        assert_eq!(bin, shard.tokens() * dtype.size() as u64);
    }
}

#[test]
fn decoding_into_i32_i64_and_u32() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("u16");
    let docs = documents(Dtype::U16, 200, 7);
    write(&prefix, Some(Dtype::U16), &docs);
    let shard = IndexedShard::open(&prefix).unwrap();
    let (mut a, mut b, mut c) = (vec![0i32; 64], vec![0i64; 64], vec![0u32; 64]);
    for (i, seq) in docs.iter().flatten().enumerate() {
        let s = shard.get(i).unwrap();
        let n = s.decode_into(&mut a).unwrap();
        assert_eq!(s.decode_into(&mut b).unwrap(), n);
        assert_eq!(s.decode_into(&mut c).unwrap(), n);
        assert_eq!(a[..n].iter().map(|&t| t as i64).collect::<Vec<_>>(), *seq);
        assert_eq!(&b[..n], &seq[..]);
        assert_eq!(c[..n].iter().map(|&t| t as i64).collect::<Vec<_>>(), *seq);
    }
}

#[test]
fn decoding_checks_ids_that_do_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("wide");
    let mut w = IndexedWriter::create(&prefix, Some(Dtype::I64)).unwrap();
    w.add_sequence(&[1i64, 2, 1 << 40]).unwrap();
    w.add_sequence(&[5i64, -1]).unwrap();
    w.finish().unwrap();
    let shard = IndexedShard::open(&prefix).unwrap();

    let e = shard
        .get(0)
        .unwrap()
        .decode_into(&mut [0i32; 3])
        .unwrap_err();
    assert!(
        matches!(e, Error::TokenOutOfRange { offset: 16, token, target: "i32", .. } if token == 1 << 40),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("wide.bin offset 16: token id 1099511627776"),
        "{e}"
    );
    let e = shard
        .get(1)
        .unwrap()
        .decode_into(&mut [0u32; 2])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::TokenOutOfRange {
                offset: 32,
                token: -1,
                target: "u32",
                ..
            }
        ),
        "{e}"
    );
    let mut ok = [0i64; 3];
    shard.get(0).unwrap().decode_into(&mut ok).unwrap();
    assert_eq!(ok, [1, 2, 1 << 40]);

    let e = shard
        .get(0)
        .unwrap()
        .decode_into(&mut [0i64; 2])
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::BufferTooSmall {
                needed: 3,
                got: 2,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn automatic_dtype_is_u16_when_every_id_fits_and_widens_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let fits = dir.path().join("fits");
    let s = write(&fits, None, &[vec![vec![0, 65535, 17]]]);
    assert_eq!(s.dtype, Dtype::U16);

    // The widening id comes after many u16 ones: what was written is rewritten as i32.
    let wide = dir.path().join("wide");
    let docs = vec![
        vec![vec![1, 2, 3], vec![65535]],
        vec![vec![70_000, 4], vec![]],
        vec![vec![-5]],
    ];
    let s = write(&wide, None, &docs);
    assert_eq!(s.dtype, Dtype::I32);
    let shard = IndexedShard::open(&wide).unwrap();
    assert_eq!(shard.dtype(), Dtype::I32);
    let got: Vec<Vec<i64>> = (0..shard.len())
        .map(|i| shard.get(i).unwrap().to_vec())
        .collect();
    assert_eq!(got, docs.concat());

    let huge = dir.path().join("huge");
    let s = write(&huge, None, &[vec![vec![3, 1 << 33]]]);
    assert_eq!(s.dtype, Dtype::I64);
    assert_eq!(
        IndexedShard::open(&huge).unwrap().get(0).unwrap().to_vec(),
        [3, 1 << 33]
    );
}

#[test]
fn fixed_dtype_rejects_ids_that_do_not_fit_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("u8");
    let mut w = IndexedWriter::create(&prefix, Some(Dtype::U8)).unwrap();
    w.add_sequence(&[1u32, 2]).unwrap();
    let e = w.add_sequence(&[3u32, 256]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::TokenOutOfRange {
                offset: 3,
                token: 256,
                target: "u8",
                ..
            }
        ),
        "{e}"
    );
    drop(w);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "a dropped writer leaves no file: {left:?}");

    let e = IndexedWriter::create(&prefix, Some(Dtype::U32)).unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
}

#[test]
fn finish_ends_a_pending_document_and_replaces_an_old_shard() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("s");
    write(&prefix, None, &[vec![vec![9; 100]]]);
    let old = IndexedShard::open(&prefix).unwrap();

    let mut w = IndexedWriter::create(&prefix, None).unwrap();
    w.add_sequence(&[1u16]).unwrap();
    w.add_sequence(&[2u16, 3]).unwrap();
    let s = w.finish().unwrap();
    assert_eq!((s.sequences, s.documents), (2, 1));
    let new = IndexedShard::open(&prefix).unwrap();
    assert_eq!(new.document(0), Some(0..2));
    // A map opened before the rename still reads the old file.
    assert_eq!(old.get(0).unwrap().len(), 100);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file is left: {names:?}");
}

#[test]
fn dataset_of_several_shards_has_one_global_index() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let c = dir.path().join("c");
    write(&a, None, &[vec![vec![10], vec![11]], vec![vec![12]]]);
    write(&b, None, &[]);
    write(&c, Some(Dtype::I32), &[vec![vec![20, 21], vec![22]]]);
    let data = Dataset::open(&[&a, &b, &c]).unwrap();
    assert_eq!(data.len(), 5);
    let located: Vec<_> = (0..6).map(|i| data.locate(i)).collect();
    assert_eq!(
        located,
        [
            Some((0, 0)),
            Some((0, 1)),
            Some((0, 2)),
            Some((2, 0)),
            Some((2, 1)),
            None
        ]
    );
    let all: Vec<Vec<i64>> = (0..5).map(|i| data.get(i).unwrap().to_vec()).collect();
    assert_eq!(all, [vec![10], vec![11], vec![12], vec![20, 21], vec![22]]);
    assert_eq!(data.sequence_len(3), Some(2));

    // Every prefix in a directory, sorted by name.
    std::fs::write(dir.path().join("notes.txt"), "not a shard").unwrap();
    let from_dir = Dataset::open_dir(dir.path()).unwrap();
    assert_eq!(from_dir.shards().len(), 3);
    assert_eq!(
        (0..5)
            .map(|i| from_dir.get(i).unwrap().to_vec())
            .collect::<Vec<_>>(),
        all
    );

    let empty = tempfile::tempdir().unwrap();
    let e = Dataset::open_dir(empty.path()).unwrap_err();
    assert!(matches!(e, Error::EmptyDirectory { .. }), "{e}");
}

#[test]
fn flat_token_files_read_as_windows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.bin");
    let ids: Vec<u16> = (0..23).map(|i| i * 1000).collect();
    std::fs::write(
        &path,
        ids.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<_>>(),
    )
    .unwrap();
    let flat = FlatShard::open(&path, Dtype::U16, 5).unwrap();
    assert_eq!(
        flat.len(),
        4,
        "23 tokens make 4 windows of 5; the last 3 are left out"
    );
    assert_eq!(flat.file_tokens(), 23);
    assert_eq!(flat.tokens(), 20, "whole windows only");
    assert_eq!(
        flat.get(3).unwrap().to_vec(),
        [15000, 16000, 17000, 18000, 19000]
    );
    assert!(flat.get(4).is_none());
    let mut out = [0i32; 5];
    flat.get(1).unwrap().decode_into(&mut out).unwrap();
    assert_eq!(out, [5000, 6000, 7000, 8000, 9000]);

    let path32 = dir.path().join("train32.bin");
    let ids: Vec<u32> = vec![0, 100_000, u32::MAX, 7];
    std::fs::write(
        &path32,
        ids.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<_>>(),
    )
    .unwrap();
    let flat = FlatShard::open(&path32, Dtype::U32, 2).unwrap();
    assert_eq!(flat.get(0).unwrap().to_vec(), [0, 100_000]);
    let e = flat
        .get(1)
        .unwrap()
        .decode_into(&mut [0i32; 2])
        .unwrap_err();
    assert!(matches!(e, Error::TokenOutOfRange { offset: 8, .. }), "{e}");
    let mut wide = [0u32; 2];
    flat.get(1).unwrap().decode_into(&mut wide).unwrap();
    assert_eq!(wide, [u32::MAX, 7]);

    // A flat file joins a dataset like any shard.
    let data = Dataset::from_shards(vec![Arc::new(flat)]);
    assert_eq!(data.get(1).unwrap().to_vec(), [u32::MAX as i64, 7]);

    std::fs::write(&path, [1u8, 2, 3]).unwrap();
    let e = FlatShard::open(&path, Dtype::U16, 5).unwrap_err();
    assert!(matches!(e, Error::BadFlatFile { offset: 2, .. }), "{e}");
    assert!(
        e.to_string()
            .contains("train.bin offset 2: 3 bytes is not a whole number of u16")
    );
    assert!(matches!(
        FlatShard::open(&path, Dtype::U16, 0),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        FlatShard::open(&path, Dtype::I32, 4),
        Err(Error::Config(_))
    ));
}
