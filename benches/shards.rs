//! Decode throughput of Megatron shards into i32, sequential and in random order, beside a
//! plain memcpy of the same bytes measured in the same run.
//!
//! `cargo bench --bench shards` prints criterion's figures and then one line per access order:
//! tokens/s and the ratio of the memcpy time to the decode time (1.0 = as fast as memcpy).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use shardflow::shard::synthetic::SyntheticCorpus;
use shardflow::{IndexedShard, Shard};

const TOKENS: u64 = 20_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    shard: IndexedShard,
    sequential: Vec<usize>,
    random: Vec<usize>,
    bin: Vec<u8>,
    max_len: usize,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let corpus = SyntheticCorpus::single("bench", TOKENS, 300.0, 1);
    let written = corpus.write(dir.path(), |_| {}).unwrap();
    let shard = IndexedShard::open(&written[0].prefix).unwrap();
    let sequential: Vec<usize> = (0..shard.len()).collect();
    let mut random = sequential.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for i in (1..random.len()).rev() {
        random.swap(i, rng.next_u64() as usize % (i + 1));
    }
    let bin = std::fs::read(shard.bin_path()).unwrap();
    let max_len = (0..shard.len())
        .map(|i| shard.sequence_len(i).unwrap())
        .max()
        .unwrap();
    Fixture {
        _dir: dir,
        shard,
        sequential,
        random,
        bin,
        max_len,
    }
}

/// Decodes every sequence in `order` into one reused i32 buffer.
fn decode(f: &Fixture, order: &[usize], out: &mut [i32]) -> usize {
    let mut n = 0;
    for &i in order {
        n += f.shard.get(i).unwrap().decode_into(out).unwrap();
        black_box(&out[..1]);
    }
    n
}

fn memcpy(src: &[u8], dst: &mut [u8]) {
    dst.copy_from_slice(src);
    black_box(&dst[..1]);
}

/// Best of `runs` wall times of `f`.
fn best(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap()
}

fn benches(c: &mut Criterion) {
    let f = fixture();
    let tokens = f.shard.tokens();
    let mut out = vec![0i32; f.max_len];
    let mut dst = vec![0u8; f.bin.len()];

    let mut g = c.benchmark_group("decode_u16_to_i32");
    g.throughput(Throughput::Elements(tokens));
    g.sample_size(10);
    g.bench_function("sequential", |b| {
        b.iter(|| decode(&f, &f.sequential, &mut out))
    });
    g.bench_function("random", |b| b.iter(|| decode(&f, &f.random, &mut out)));
    g.bench_function("memcpy_same_bytes", |b| b.iter(|| memcpy(&f.bin, &mut dst)));
    g.finish();

    let copy = best(10, || memcpy(&f.bin, &mut dst));
    println!(
        "\nratios measured in this run ({tokens} tokens, {} MB of u16 ids):",
        f.bin.len() >> 20
    );
    println!(
        "  memcpy              {:8.0} M tokens/s",
        tokens as f64 / copy.as_secs_f64() / 1e6
    );
    for (name, order) in [("sequential", &f.sequential), ("random", &f.random)] {
        let t = best(10, || {
            decode(&f, order, &mut out);
        });
        println!(
            "  decode {name:<12} {:8.0} M tokens/s, {:.2} of memcpy",
            tokens as f64 / t.as_secs_f64() / 1e6,
            copy.as_secs_f64() / t.as_secs_f64()
        );
    }
}

criterion_group!(shard_benches, benches);

fn main() {
    shard_benches();
    Criterion::default().configure_from_args().final_summary();
}
