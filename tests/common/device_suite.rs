//! The device suite every device path passes (wgpu, CUDA): a metric reduce over its collective
//! (NCCL) against the host's, its sketches against host sketches, and a loader
//! run through its sink, checkpointed and resumed, against the host run. A sink's batches are
//! read back through [`DeviceBatch`].

use std::time::Duration;

use shardflow::collate::{Batch, CollateConfig, Padding};
use shardflow::collective::{Collective, in_process};
use shardflow::device::{DeviceBatch, DeviceSink};
use shardflow::loader::{LoaderBuilder, LoaderState, Source};
use shardflow::metrics::{Aggregator, Kind, MAX_VALUE, MIN_VALUE, Mapping, Sketch};
use shardflow::order::{OrderConfig, Shuffle};
use shardflow::transform::TransformConfig;

/// A world of ranks as trait objects.
pub type Ranks = Vec<Box<dyn Collective>>;

/// The host engine's world of `n`.
pub fn host_world(n: usize) -> Ranks {
    boxed(in_process(n, Duration::from_secs(20)))
}

/// `ranks` as trait objects.
pub fn boxed<C: Collective + 'static>(ranks: Vec<C>) -> Ranks {
    ranks
        .into_iter()
        .map(|c| Box::new(c) as Box<dyn Collective>)
        .collect()
}

/// Deterministic pseudo-random numbers for the sketch inputs.
pub fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 11
}

/// Every rank's metric report over `ranks`: distributions, sums, maxima, minima, categories.
/// The values are multiples of 1/4 below 2^10, so every sum is exact in f64 in any order: an
/// engine that adds in another order than the host's rank order (NCCL's ring) must still give
/// the host's report bit for bit.
fn metric_reports(ranks: Ranks) -> Vec<shardflow::metrics::Report> {
    let record = |rank: usize| {
        let mut agg = Aggregator::default();
        for i in 0..50 {
            let v = (rank * 50 + i) as f64 * 0.25 - 4.0;
            agg.record("web", "loss", Kind::Distribution, v).unwrap();
            agg.record("web", "tokens", Kind::Sum, i as f64).unwrap();
            agg.record("code", "epoch", Kind::Max, rank as f64).unwrap();
            agg.record("code", "low", Kind::Min, -(rank as f64))
                .unwrap();
            agg.record_category("code", "lang", ["en", "de", "fr"][(i + rank) % 3])
                .unwrap();
        }
        agg
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = ranks
            .into_iter()
            .enumerate()
            .map(|(r, c)| s.spawn(move || record(r).reduce(&*c).unwrap().report()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// A metric reduce over a device world (NCCL's) gives the host world's report exactly (see
/// [`metric_reports`] for why exactly).
pub fn metric_reduce_equals_the_host(device: Ranks) {
    let n = device.len();
    let host = metric_reports(host_world(n));
    assert_eq!(metric_reports(device), host);
    assert_eq!(host[0].number("web", "tokens"), Some(n as f64 * 1225.0));
}

/// Values for the sketch test under `map` (every bucket boundary and its neighbours, zeros,
/// subnormals, the range ends, random values; each positive and negative) as f32 bits, with
/// their datasets (0..3).
pub fn sketch_inputs(map: &Mapping, table: &[u32]) -> (Vec<u32>, Vec<u32>) {
    assert_eq!(table.len(), map.buckets());
    assert!(table.windows(2).all(|w| w[0] <= w[1]), "the table rises");
    let mut bits: Vec<u32> = Vec::new();
    for &b in table {
        bits.extend([b.saturating_sub(1), b, b + 1]);
    }
    for v in [
        0.0f32,
        -0.0,
        1e-45,
        f32::MIN_POSITIVE,
        MIN_VALUE as f32,
        MAX_VALUE as f32,
        f32::MAX,
        1.0,
        2.0,
        0.5,
    ] {
        bits.extend([v.to_bits(), v.to_bits() + 1, v.to_bits().saturating_sub(1)]);
    }
    let mut seed = 11;
    for _ in 0..3000 {
        let e = (lcg(&mut seed) % 80) as i32 - 40;
        bits.push((10f32.powi(e / 2) * (1.0 + (lcg(&mut seed) % 1000) as f32 / 997.0)).to_bits());
    }
    let values: Vec<u32> = bits
        .iter()
        .flat_map(|&b| [b & 0x7fff_ffff, b | 0x8000_0000])
        .filter(|b| f32::from_bits(*b).is_finite())
        .collect();
    assert!(values.len() > 6000);
    let owners: Vec<u32> = (0..values.len()).map(|i| (i % 7 % 3) as u32).collect();
    (values, owners)
}

/// The device's sketches equal the host's bucket for bucket; counts, zeros, minima and maxima
/// exactly, sums within the bound of chunked addition.
pub fn sketches_equal_the_host(
    map: &Mapping,
    values: &[u32],
    owners: &[u32],
    device: &[Sketch],
    what: &str,
) {
    let mut host = vec![Sketch::default(); 3];
    for (&b, &d) in values.iter().zip(owners) {
        host[d as usize].add(map, f32::from_bits(b) as f64);
    }
    assert_eq!(device.len(), 3);
    for (d, (got, want)) in device.iter().zip(&host).enumerate() {
        assert_eq!(got.pos, want.pos, "{what} dataset {d}: positive buckets");
        assert_eq!(got.neg, want.neg, "{what} dataset {d}: negative buckets");
        assert_eq!(
            (got.count, got.zero),
            (want.count, want.zero),
            "dataset {d}"
        );
        // The sum adds in chunks: within n * 2^-53 * sum |v| of the exact sum, as the host's
        // running sum is.
        let abs: f64 = values
            .iter()
            .zip(owners)
            .filter(|(_, o)| **o as usize == d)
            .map(|(b, _)| (f32::from_bits(*b) as f64).abs())
            .sum();
        let bound = 2.0 * got.count as f64 * f64::EPSILON / 2.0 * abs;
        assert!(
            (got.sum - want.sum).abs() <= bound,
            "dataset {d}: {} vs {}",
            got.sum,
            want.sum
        );
        assert_eq!(got.min.map(f64::to_bits), want.min.map(f64::to_bits));
        assert_eq!(got.max.map(f64::to_bits), want.max.map(f64::to_bits));
    }
}

/// A loader run through `make_sink`'s sinks (12 batches with 2 workers, checkpointed, then 18
/// more resumed with 1 worker, each batch held while the next is written) equals the host run,
/// padded and packed; each device batch is read back with [`DeviceBatch::to_host`].
pub fn loader_resumes_as_the_host<S: DeviceSink<i32>>(sources: &[Source], make_sink: impl Fn() -> S)
where
    S::Output: DeviceBatch<i32>,
{
    let read = |b: &S::Output| -> Batch<i32> { b.to_host().unwrap() };
    for pack in [false, true] {
        let builder = |workers: usize| {
            LoaderBuilder::<i32>::new(sources.to_vec())
                .with_order(OrderConfig {
                    seed: 21,
                    shuffle: Shuffle::Full,
                    local_batch: 4,
                    ..Default::default()
                })
                .with_collate(CollateConfig {
                    seq_len: 48,
                    padding: Padding::Multiple(8),
                    pack,
                    ..Default::default()
                })
                .with_transform(TransformConfig {
                    eos: Some(7),
                    ..Default::default()
                })
                .with_workers(workers)
        };
        let host: Vec<Vec<u8>> = builder(2)
            .build_host()
            .unwrap()
            .take(30)
            .map(|b| b.unwrap().to_bytes())
            .collect();
        let mut first = builder(2).build(make_sink()).unwrap();
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut held = None;
        for _ in 0..12 {
            let b = first.next().unwrap().unwrap();
            got.push(read(&b).to_bytes());
            // Hold each batch while the next is written: two slots, recycled.
            held = Some(b);
        }
        drop(held);
        let json = serde_json::to_vec(&first.state()).unwrap();
        assert_eq!(first.stats().batches, 12);
        drop(first);
        let state = LoaderState::from_json(&json).unwrap();
        let mut resumed = builder(1).resume(state).build(make_sink()).unwrap();
        let mut held = None;
        for _ in 12..30 {
            let b = resumed.next().unwrap().unwrap();
            got.push(read(&b).to_bytes());
            held = Some(b);
        }
        drop(held);
        assert_eq!(got, host, "pack {pack}");
    }
}

/// The conformance suite through `sink` (`T` ids): every batch it uploads, read back, equals
/// the host sink's byte for byte.
pub fn sink_equals_the_host<T, S>(sink: &mut S)
where
    T: shardflow::TokenId,
    S: DeviceSink<T>,
    S::Output: DeviceBatch<T>,
{
    let n = super::conformance::check::<T, S>(sink);
    assert!(n >= 256, "{n} batches compared");
}

/// A loader of u32 ids over `sources` into `sink`: batches of 8 rows padded to 64, one worker.
pub fn steady_loader<S: DeviceSink<u32>>(
    sources: Vec<Source>,
    sink: S,
) -> shardflow::loader::Loader<u32, S> {
    LoaderBuilder::<u32>::new(sources)
        .with_order(OrderConfig {
            local_batch: 8,
            ..Default::default()
        })
        .with_collate(CollateConfig {
            seq_len: 64,
            padding: Padding::Fixed,
            ..Default::default()
        })
        .with_workers(1)
        .build(sink)
        .unwrap()
}

/// What a steady stream of `uploads` batches, each held while the next was written, shows in
/// a sink's counters: two slots, and ragged uploads well under padded ones.
pub fn steady_stats(stats: shardflow::device::SinkStats, uploads: u64) {
    steady_stats_within(stats, uploads, 2..=2);
}

/// [`steady_stats`] for a sink that makes a further slot while its free ones are still in use
/// on the device (the CUDA sink): `slots` created.
pub fn steady_stats_within(
    stats: shardflow::device::SinkStats,
    uploads: u64,
    slots: std::ops::RangeInclusive<u64>,
) {
    assert_eq!(stats.uploads, uploads);
    assert!(slots.contains(&stats.slots_created), "{stats:?}");
    assert!(stats.busy_reuses <= stats.busy_slots, "{stats:?}");
    assert!(
        stats.padded_bytes > 2 * stats.bytes_uploaded,
        "ragged uploads are smaller than padded ones: {stats:?}"
    );
}
