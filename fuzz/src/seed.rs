//! Writes the seed corpora (`fuzz/seeds/TARGET/`) from the shapes the tests use: shards of every
//! dtype written by shardflow and by hand, checkpoints of loaders over the tests' mixture in
//! every mode, `write` inputs, and command lines. Deterministic: the same files every run.
//!
//! `cargo run --release --bin seed -- fuzz/seeds` (from `fuzz/`, or through `fuzz/run`).

use std::path::{Path, PathBuf};

use shardflow::collate::{CollateConfig, Padding};
use shardflow::collective::Solo;
use shardflow::loader::LoaderBuilder;
use shardflow::order::{MixtureMode, OrderConfig, Partition, Shuffle};
use shardflow::transform::{BadSamplePolicy, TransformConfig};
use shardflow::{Dtype, IndexedWriter};
use shardflow_fuzz::{mixture, scratch};

fn save(dir: &Path, target: &str, bytes: &[u8]) {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir).unwrap();
    // FNV-1a: a stable name per content.
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let name = format!("{hash:016x}");
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn pair(prefix: &Path) -> Vec<u8> {
    let bin = std::fs::read(prefix.with_extension("bin")).unwrap();
    let idx = std::fs::read(prefix.with_extension("idx")).unwrap();
    let mut out = (bin.len() as u16).to_le_bytes().to_vec();
    out.extend(bin);
    out.extend(idx);
    out
}

fn idx_seeds(out: &Path) {
    let dir = scratch().join("seed-shards");
    std::fs::create_dir_all(&dir).unwrap();
    let docs: &[&[&[i64]]] = &[&[&[5, 6, 7]], &[&[1, 2], &[], &[3]], &[&[-3, 7, 300]]];
    for (i, dtype) in Dtype::MEGATRON.iter().enumerate() {
        let prefix = dir.join(format!("d{i}"));
        let mut w = IndexedWriter::create(&prefix, Some(*dtype)).unwrap();
        for doc in docs {
            for seq in *doc {
                let seq: Vec<i64> = seq
                    .iter()
                    .map(|&t| if dtype.holds(t) { t } else { 1 })
                    .collect();
                w.add_sequence(&seq).unwrap();
            }
            w.end_document().unwrap();
        }
        w.finish().unwrap();
        let with_trailer = pair(&prefix);
        save(out, "idx", &with_trailer);
        // The same shard as Megatron writes it: no trailer.
        save(out, "idx", &with_trailer[..with_trailer.len() - 48]);
    }
    let empty = dir.join("empty");
    IndexedWriter::create(&empty, None)
        .unwrap()
        .finish()
        .unwrap();
    save(out, "idx", &pair(&empty));
    // A longer shard, past the 64 KiB the open-time sample reads.
    let long = dir.join("long");
    let mut w = IndexedWriter::create(&long, Some(Dtype::U16)).unwrap();
    for s in 0..16u32 {
        w.add_sequence(
            &(0..1900)
                .map(|j| (s * 31 + j) % 50_000)
                .collect::<Vec<u32>>(),
        )
        .unwrap();
    }
    w.finish().unwrap();
    save(out, "idx", &pair(&long));
}

fn checkpoint_seeds(out: &Path) {
    let sources = mixture();
    let base = |pack: bool, order: OrderConfig, transform: TransformConfig| {
        LoaderBuilder::<i32>::new(sources.to_vec())
            .with_order(order)
            .with_collate(CollateConfig {
                seq_len: 32,
                padding: Padding::Multiple(8),
                pack,
                ..Default::default()
            })
            .with_transform(transform)
            .with_workers(0)
    };
    let orders = [
        OrderConfig {
            seed: 1,
            local_batch: 4,
            ..Default::default()
        },
        OrderConfig {
            seed: 2,
            mixture: MixtureMode::Stochastic,
            shuffle: Shuffle::Block(7),
            world: 2,
            rank: 1,
            local_batch: 3,
            ..Default::default()
        },
        OrderConfig {
            seed: 3,
            partition: Partition::Hashed,
            world: 3,
            rank: 2,
            local_batch: 2,
            shuffle: Shuffle::None,
            ..Default::default()
        },
    ];
    let transforms = [
        TransformConfig::default(),
        TransformConfig {
            bos: Some(1),
            eos: Some(2),
            max_len: Some(20),
            bad_samples: BadSamplePolicy::Skip { max_per_epoch: 3 },
            ..Default::default()
        },
    ];
    for order in &orders {
        for transform in &transforms {
            for pack in [false, true] {
                for after in [0, 3, 9] {
                    let mut l = base(pack, order.clone(), transform.clone())
                        .build_host()
                        .unwrap();
                    l.by_ref().take(after).for_each(|b| drop(b.unwrap()));
                    save(out, "checkpoint", &serde_json::to_vec(&l.state()).unwrap());
                    if order.world == 1 {
                        let world = l.checkpoint(&Solo).unwrap();
                        save(
                            out,
                            "checkpoint",
                            &serde_json::to_vec_pretty(&world).unwrap(),
                        );
                    }
                }
            }
        }
    }
}

fn write_input_seeds(out: &Path) {
    let inputs: &[(u8, &[u8])] = &[
        (0, b"{\"text\": \"hello\"}\n{\"text\": \"world\"}\n"),
        (0, b"{\"text\": \"a\"}\n\n  \n{\"text\": \"b\"}"),
        (0, b"{\"text\": 5}\n"),
        (0, b"{\"body\": \"no text field\"}\n"),
        (0, b"not json\n"),
        (1, b"one\n\ntwo lines\nof a paragraph\r\n\r\n\nthree"),
        (1, b"\xef\xbb\xbfutf-8 with a byte order mark\n"),
        (2, b"  {\"text\": \"detected\"}\n"),
        (2, b"plain text, detected\n\nsecond"),
        (1, b""),
    ];
    for (mode, text) in inputs {
        let mut bytes = vec![*mode];
        bytes.extend_from_slice(text);
        save(out, "write_input", &bytes);
    }
}

fn cli_args_seeds(out: &Path) {
    let lines: &[&[&str]] = &[
        &[
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
            "--steps",
            "3",
        ],
        &[
            "plan",
            "--data",
            "a=10",
            "--world",
            "3",
            "--local-batch",
            "5",
            "--partition",
            "contiguous",
        ],
        &[
            "plan",
            "--data",
            "a=100:0.5",
            "--data",
            "b=7:0.5",
            "--stochastic",
            "--start",
            "1000",
            "--json",
        ],
        &[
            "plan",
            "--data",
            "a=10",
            "--partition",
            "hashed",
            "--world",
            "4",
            "--rank",
            "3",
            "--epochs",
            "1.5",
        ],
        &[
            "plan",
            "--data",
            "a=10",
            "--partition",
            "strided",
            "--world",
            "2",
            "--samples",
            "7",
            "--shuffle",
            "block:3",
        ],
        &[
            "plan",
            "--data",
            "web=1000000:0.5",
            "--data",
            "code=300000:0.3",
            "--world",
            "8",
            "--local-batch",
            "64",
            "--start",
            "100000000",
        ],
        &[
            "bench",
            "--batches",
            "3",
            "--workers",
            "0",
            "--batch-size",
            "4",
            "--seq-len",
            "64",
        ],
        &[
            "bench",
            "--pack",
            "--eos",
            "9",
            "--workers",
            "1",
            "--batch-size",
            "2",
            "--seq-len",
            "16",
        ],
        &["bench", "--pad-multiple", "1", "--mixture", "--seed", "7"],
        // The edges of the argument ranges: pad multiples, read-ahead, counts and ids at and
        // past their limits.
        &["bench", "--pad-multiple", "18446744073709551615"],
        &[
            "bench",
            "--pad-multiple",
            "268435456",
            "--seq-len",
            "268435456",
            "--batch-size",
            "1",
        ],
        &["bench", "--pad-multiple", "48", "--seq-len", "100"],
        &[
            "bench",
            "--pad-multiple",
            "64",
            "--seq-len",
            "64",
            "--read-ahead",
            "4096",
        ],
        &["bench", "--read-ahead", "18446744073709551615"],
        &["bench", "--batches", "0", "--rounds", "0", "--tokens", "0"],
        &["bench", "--eos", "-1"],
        &["bench", "--eos", "2147483647", "--pack", "--seq-len", "3"],
        &["bench", "--mixture", "--data", "x"],
        &["bench", "--roofline-mib", "0"],
        &[
            "plan",
            "--data",
            "a=10",
            "--local-batch",
            "2",
            "--start",
            "9223372036854775807",
        ],
        &[
            "plan",
            "--data",
            "a=10",
            "--start",
            "18446744073709551615",
            "--steps",
            "3",
        ],
        &["plan", "--data", "a=10", "--data", "b=10:1e-7"],
        &["plan", "--data", "a=10:1e300", "--data", "b=10:1"],
        &[
            "plan",
            "--data",
            "a=5",
            "--samples",
            "5",
            "--local-batch",
            "2",
            "--steps",
            "10",
        ],
        &["cat", "x", "--range", "1..2"],
        &["write", "--input", "-", "--output", "y", "--dtype", "i16"],
    ];
    for line in lines {
        save(out, "cli_args", line.join("\0").as_bytes());
    }
}

fn main() {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("seeds"), PathBuf::from);
    idx_seeds(&out);
    checkpoint_seeds(&out);
    write_input_seeds(&out);
    cli_args_seeds(&out);
    for target in ["idx", "checkpoint", "write_input", "cli_args"] {
        let n = std::fs::read_dir(out.join(target)).map_or(0, |d| d.count());
        println!("{target}: {n} seeds");
    }
}
