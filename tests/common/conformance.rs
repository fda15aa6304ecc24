//! The conformance suite every device sink passes: random staged batches (every padding mode,
//! packing, every optional field, lengths 0..=T) collated by the sink and read back must equal
//! the host sink's batches byte for byte. A sink is bound to each configuration, and its batches
//! are read back through [`DeviceBatch::to_host`].

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use shardflow::TokenId;
use shardflow::collate::{CollateConfig, DocRef, Layout, Padding, Pool, StagedBatch, pad_host};
use shardflow::device::{DeviceBatch, DeviceSink};

/// Every combination the suite runs: paddings, packing, and field sets.
pub fn configs() -> Vec<CollateConfig> {
    let mut out = Vec::new();
    for seq_len in [1, 7, 33, 64] {
        for (padding, pack) in [
            (Padding::Longest, false),
            (Padding::Multiple(8), false),
            (Padding::Fixed, false),
            (Padding::Longest, true),
        ] {
            for fields in [0b111u8, 0, 0b101, 0b010] {
                out.push(CollateConfig {
                    seq_len,
                    padding,
                    pack,
                    pad_id: if fields == 0 { 3 } else { -1 },
                    attention_mask: fields & 1 != 0,
                    labels: fields & 2 != 0,
                    position_ids: fields & 4 != 0,
                });
            }
        }
    }
    out
}

/// A random staged batch of `rows` rows for `config`, made from `seed` (the same seed gives the
/// same batch). Padded rows hold one sample of 0..=T tokens; packed rows hold pieces of
/// documents (some empty, as dropped or skipped ones are) filling up to T columns.
pub fn staged<T: TokenId>(
    seed: u64,
    config: &CollateConfig,
    rows: usize,
    pool: &Pool,
) -> StagedBatch<T> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut next = |n: u64| rng.next_u64() % n.max(1);
    let t = config.seq_len;
    let mut docs: Vec<DocRef> = Vec::new();
    let mut lens = Vec::with_capacity(rows);
    for r in 0..rows {
        if !config.pack {
            // Lengths cluster at the ends too: empty rows and full ones.
            let len = match next(4) {
                0 => 0,
                1 => t,
                _ => next(t as u64 + 1) as usize,
            };
            docs.push(DocRef {
                sample: next(1000),
                dataset: next(3) as u32,
                row: r as u32,
                len: len as u32,
                doc_len: len as u32,
                ..DocRef::default()
            });
            lens.push(len);
        } else {
            let fill = if r + 1 == rows {
                next(t as u64 + 1) as usize
            } else {
                t
            };
            let mut col = 0;
            // Some batches pack many short documents, some a few long ones.
            let short = seed.is_multiple_of(2);
            while col < fill {
                let len = match next(5) {
                    0 => 0,
                    _ if short => (1 + next(3) as usize).min(fill - col),
                    _ => 1 + next((fill - col) as u64) as usize,
                };
                docs.push(DocRef {
                    sample: next(1000),
                    dataset: next(3) as u32,
                    row: r as u32,
                    start: col as u32,
                    len: len as u32,
                    doc_len: len as u32,
                    flags: if len == 0 { DocRef::DROPPED } else { 0 },
                    ..DocRef::default()
                });
                col += len;
            }
            lens.push(fill);
        }
    }
    assemble(seed, config, &lens, &docs, pool, |_| next(50_000))
}

/// The staged batch of rows of `lens` real tokens and their `docs`, token i being `token(i)`
/// (below 50 000, so every id type holds it).
pub fn assemble<T: TokenId>(
    seed: u64,
    config: &CollateConfig,
    lens: &[usize],
    docs: &[DocRef],
    pool: &Pool,
    mut token: impl FnMut(usize) -> u64,
) -> StagedBatch<T> {
    let rows = lens.len();
    let total: usize = lens.iter().sum();
    let mut tokens = pool.take::<T>(total);
    for (i, tok) in tokens.iter_mut().enumerate() {
        *tok = T::try_from(token(i) as i64).ok().expect("small ids fit");
    }
    let mut offsets = pool.take::<u32>(rows + 1);
    offsets[0] = 0;
    for r in 0..rows {
        offsets[r + 1] = offsets[r] + lens[r] as u32;
    }
    let mut pieces = pool.take::<DocRef>(docs.len());
    pieces.copy_from_slice(docs);
    StagedBatch {
        step: seed,
        rows,
        width: config.width(lens.iter().copied().max().unwrap_or(0)),
        tokens,
        offsets,
        docs: pieces,
        packed: config.pack,
        layout: Layout::Ragged,
    }
}

/// The most rows of a batch the suite makes.
const MAX_ROWS: usize = 9;

/// Runs the suite: for every config, several seeds and row counts, `sink` (bound to the config)
/// must give the host sink's batch byte for byte. Returns the number of batches compared.
pub fn check<T: TokenId, S: DeviceSink<T>>(sink: &mut S) -> usize
where
    S::Output: DeviceBatch<T>,
{
    let pool = Pool::new();
    let mut compared = 0;
    for (c, config) in configs().iter().enumerate() {
        sink.bind(config, MAX_ROWS).unwrap();
        for rows in [1, 2, 5, MAX_ROWS] {
            let seed = (c * 100 + rows) as u64;
            let want = pad_host(staged::<T>(seed, config, rows, &pool), config, &pool);
            let prepared = sink
                .prepare(staged::<T>(seed, config, rows, &pool))
                .unwrap();
            let got = sink.upload(prepared, 0).unwrap().to_host().unwrap();
            assert_eq!(
                got.to_bytes(),
                want.to_bytes(),
                "{} ids, config {config:?}, {rows} rows, seed {seed}:\nwant {want:?}\ngot {got:?}",
                T::NAME
            );
            compared += 1;
        }
    }
    compared
}
