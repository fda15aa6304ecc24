//! The wgpu path on a real adapter (lavapipe in CI): the sink against the host sink, device
//! reductions against the host engine, device sketches against host sketches, a loader run
//! through the sink against the host run, and buffer recycling. Without an adapter each test
//! prints why it skips, unless SHARDFLOW_REQUIRE_WGPU=1.
#![cfg(feature = "wgpu")]

mod common;

use shardflow::TokenId;
use shardflow::device::{DeviceSink, WgpuSink};

use common::conformance;
use common::gpu::wgpu;

fn sink_conforms<T: TokenId>() {
    let Some(ctx) = wgpu() else { return };
    let sink = WgpuSink::new(ctx).unwrap();
    <WgpuSink as DeviceSink<T>>::worker(&sink).unwrap();
    let pool = sink.staging_pool();
    let n = conformance::check::<T>(|staged, config| {
        let prepared = sink.prepare(&mut (), staged, config, &pool).unwrap();
        sink.upload(prepared, 0, config).unwrap().to_host().unwrap()
    });
    assert!(n >= 256, "{n} batches compared");
}

#[test]
fn the_wgpu_sink_equals_the_host_sink_for_i32_ids() {
    sink_conforms::<i32>();
}

#[test]
fn the_wgpu_sink_equals_the_host_sink_for_u32_ids() {
    sink_conforms::<u32>();
}

#[test]
fn i64_ids_are_refused_with_a_clear_error() {
    let Some(ctx) = wgpu() else { return };
    let sink = WgpuSink::new(ctx).unwrap();
    let e = <WgpuSink as DeviceSink<i64>>::worker(&sink).unwrap_err();
    assert!(matches!(e, shardflow::Error::Device { .. }), "{e}");
    assert!(e.to_string().contains("WGSL has no 64-bit integers"), "{e}");
}

#[test]
fn an_adapter_name_that_matches_nothing_is_an_error_listing_the_adapters() {
    // The variable is set for a child process only, so that no other test sees it.
    let Some(ctx) = wgpu() else { return };
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "adapter_probe", "--nocapture", "--ignored"])
        .env(shardflow::gpu::ADAPTER_ENV, "no-such-adapter-anywhere")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains(
            "SHARDFLOW_WGPU_ADAPTER=no-such-adapter-anywhere matches none of the adapters"
        ),
        "{text}"
    );
    assert!(
        text.contains(&ctx.info().name),
        "the message lists {}: {text}",
        ctx.info().name
    );
}

/// Run by the test above in a child process with the adapter variable set.
#[test]
#[ignore = "a helper run by another test"]
fn adapter_probe() {
    match shardflow::gpu::WgpuContext::new() {
        Ok(ctx) => println!("found {}", ctx.name()),
        Err(e) => println!("{e}"),
    }
}

/// Deterministic pseudo-random numbers for the reduction and sketch inputs.
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 11
}

#[test]
fn device_reductions_equal_the_host_engine_bit_for_bit() {
    use shardflow::collective::{Collective, ReduceOp, in_process, wgpu_world};
    use std::time::Duration;
    let Some(ctx) = wgpu() else { return };
    let n = 4;
    let specials = [
        0.0,
        -0.0,
        f64::NEG_INFINITY,
        1e300,
        -1e-300,
        5e-324,
        0.1,
        3.0,
    ];
    let inputs: Vec<(Vec<f64>, Vec<u64>)> = (0..n)
        .map(|r| {
            let mut seed = r as u64 + 7;
            let f = (0..300)
                .map(|i| {
                    if i < specials.len() * n {
                        specials[(i + r) % specials.len()]
                    } else {
                        (lcg(&mut seed) as f64 / 1e6) * if i % 3 == 0 { -1.0 } else { 1.0 }
                    }
                })
                .collect();
            let u = (0..300)
                .map(|i| match i % 4 {
                    0 => u64::MAX - lcg(&mut seed) % 1000,
                    1 => (1 << 32) - 1 - r as u64,
                    2 => lcg(&mut seed),
                    _ => r as u64,
                })
                .collect();
            (f, u)
        })
        .collect();
    let run = |worlds: Vec<Box<dyn Collective>>| -> Vec<(Vec<u64>, Vec<u64>)> {
        std::thread::scope(|s| {
            let handles: Vec<_> = worlds
                .into_iter()
                .enumerate()
                .map(|(r, c)| {
                    let (f, u) = inputs[r].clone();
                    s.spawn(move || {
                        let mut out = Vec::new();
                        for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min] {
                            let (mut a, mut b) = (f.clone(), u.clone());
                            c.all_reduce_f64(&mut a, op).unwrap();
                            c.all_reduce_u64(&mut b, op).unwrap();
                            out.push((a.iter().map(|x| x.to_bits()).collect(), b));
                        }
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        })
    };
    let host = run(in_process(n, Duration::from_secs(20))
        .into_iter()
        .map(|c| Box::new(c) as Box<dyn Collective>)
        .collect());
    let world = wgpu_world(n, Duration::from_secs(20), ctx.clone()).unwrap();
    assert_eq!(world[0].f64_on_device(), ctx.has_f64());
    let device = run(world
        .into_iter()
        .map(|c| Box::new(c) as Box<dyn Collective>)
        .collect());
    assert_eq!(device.len(), 3 * n);
    for (i, (d, h)) in device.iter().zip(&host).enumerate() {
        assert_eq!(d.0, h.0, "f64 result {i}");
        assert_eq!(d.1, h.1, "u64 result {i}");
    }
}

#[test]
fn a_metric_reduce_over_the_device_engine_equals_the_host_engine() {
    use shardflow::collective::{Collective, in_process, wgpu_world};
    use shardflow::metrics::{Aggregator, Kind};
    use std::time::Duration;
    let Some(ctx) = wgpu() else { return };
    let record = |rank: usize| {
        let mut agg = Aggregator::default();
        for i in 0..50 {
            let v = (rank * 50 + i) as f64 * 0.37 - 4.0;
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
    let reduce_on = |worlds: Vec<Box<dyn Collective>>| {
        std::thread::scope(|s| {
            let handles: Vec<_> = worlds
                .into_iter()
                .enumerate()
                .map(|(r, c)| s.spawn(move || record(r).reduce(&*c).unwrap().report()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        })
    };
    let host = reduce_on(
        in_process(3, Duration::from_secs(20))
            .into_iter()
            .map(|c| Box::new(c) as Box<dyn Collective>)
            .collect(),
    );
    let device = reduce_on(
        wgpu_world(3, Duration::from_secs(20), ctx)
            .unwrap()
            .into_iter()
            .map(|c| Box::new(c) as Box<dyn Collective>)
            .collect(),
    );
    assert_eq!(device, host);
    assert_eq!(host[0].number("web", "tokens"), Some(3.0 * 1225.0));
}

#[test]
fn device_sketches_equal_host_sketches_bucket_for_bucket() {
    use shardflow::metrics::device::{bucket_table, device_sketches};
    use shardflow::metrics::{MAX_VALUE, MIN_VALUE, Mapping, Sketch};
    let Some(ctx) = wgpu() else { return };
    for alpha in [0.01, 0.05, 1e-3] {
        let map = Mapping::new(alpha);
        let table = bucket_table(&map);
        assert_eq!(table.len(), map.buckets());
        assert!(table.windows(2).all(|w| w[0] <= w[1]), "the table rises");
        // Every boundary, its neighbours, zeros, subnormals, the range ends, random values.
        let mut bits: Vec<u32> = Vec::new();
        for &b in &table {
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
            bits.push(
                (10f32.powi(e / 2) * (1.0 + (lcg(&mut seed) % 1000) as f32 / 997.0)).to_bits(),
            );
        }
        let n = bits.len();
        // Every value once positive and once negative, spread over three datasets.
        let values: Vec<u32> = bits
            .iter()
            .flat_map(|&b| [b & 0x7fff_ffff, b | 0x8000_0000])
            .filter(|b| f32::from_bits(*b).is_finite())
            .collect();
        let owners: Vec<u32> = (0..values.len()).map(|i| (i % 7 % 3) as u32).collect();
        let mut host = vec![Sketch::default(); 3];
        for (&b, &d) in values.iter().zip(&owners) {
            host[d as usize].add(&map, f32::from_bits(b) as f64);
        }
        let buffer = |data: &[u32]| storage(&ctx, data);
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let device = device_sketches(
            &ctx,
            &map,
            &buffer(&values),
            &buffer(&owners),
            values.len(),
            &names,
        )
        .unwrap();
        for (d, (got, want)) in device.iter().zip(&host).enumerate() {
            assert_eq!(
                got.pos, want.pos,
                "alpha {alpha} dataset {d}: positive buckets"
            );
            assert_eq!(
                got.neg, want.neg,
                "alpha {alpha} dataset {d}: negative buckets"
            );
            assert_eq!(
                (got.count, got.zero),
                (want.count, want.zero),
                "dataset {d}"
            );
            // The sum adds in chunks: within n * 2^-53 * sum |v| of the exact sum, as the
            // host's running sum is.
            let abs: f64 = values
                .iter()
                .zip(&owners)
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
        assert!(n > 3000);
    }
    // A NaN on the device is refused, naming its dataset, as the host refuses one.
    let buffer = |data: &[u32]| storage(&ctx, data);
    let names = vec!["web".to_string(), "code".to_string()];
    let values = [1.0f32.to_bits(), f32::NAN.to_bits()];
    let e = device_sketches(
        &ctx,
        &Mapping::new(0.01),
        &buffer(&values),
        &buffer(&[0, 1]),
        2,
        &names,
    )
    .unwrap_err();
    assert!(e.to_string().contains("dataset code"), "{e}");
}

#[test]
fn a_loader_run_through_the_wgpu_sink_checkpointed_and_resumed_equals_the_host_run() {
    use shardflow::collate::{CollateConfig, Padding};
    use shardflow::loader::{LoaderBuilder, LoaderState, Source};
    use shardflow::order::{OrderConfig, Shuffle};
    use shardflow::transform::TransformConfig;
    let Some(ctx) = wgpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sources = common::mixture(dir.path());
    for pack in [false, true] {
        let builder = |sources: &[Source], workers: usize| {
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
        let host: Vec<Vec<u8>> = builder(&sources, 2)
            .build_host()
            .unwrap()
            .take(30)
            .map(|b| b.unwrap().to_bytes())
            .collect();
        let sink = WgpuSink::new(ctx.clone()).unwrap();
        let mut first = builder(&sources, 2).build(sink).unwrap();
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut held = None;
        for _ in 0..12 {
            let b = first.next().unwrap().unwrap();
            got.push(b.to_host().unwrap().to_bytes());
            // Hold each batch while the next is written: two slots, recycled.
            held = Some(b);
        }
        drop(held);
        let json = serde_json::to_vec(&first.state()).unwrap();
        assert_eq!(first.stats().batches, 12);
        drop(first);
        let state = LoaderState::from_json(&json).unwrap();
        let sink = WgpuSink::new(ctx.clone()).unwrap();
        let mut resumed = builder(&sources, 1).resume(state).build(sink).unwrap();
        let mut held = None;
        for _ in 12..30 {
            let b = resumed.next().unwrap().unwrap();
            got.push(b.to_host().unwrap().to_bytes());
            held = Some(b);
        }
        drop(held);
        assert_eq!(got, host, "pack {pack}");
    }
}

#[test]
fn a_steady_stream_recycles_two_slots_and_sends_only_real_tokens() {
    use shardflow::collate::{CollateConfig, Padding};
    use shardflow::loader::LoaderBuilder;
    use shardflow::order::OrderConfig;
    let Some(ctx) = wgpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sources = common::mixture(dir.path());
    let sink = WgpuSink::new(ctx).unwrap();
    let mut loader = LoaderBuilder::<u32>::new(sources)
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
        .unwrap();
    let mut held = None;
    for _ in 0..40 {
        held = Some(loader.next().unwrap().unwrap());
    }
    let last = held.unwrap();
    last.wait().unwrap();
    assert_eq!(last.ids().shape, [8, 64]);
    assert_eq!(last.ids().dtype, "u32");
    assert_eq!(last.attention_mask().unwrap().dtype, "u8");
    drop(last);
    let stats = loader.sink().stats();
    assert_eq!(stats.uploads, 40);
    assert_eq!(stats.slots_created, 2, "{stats:?}");
    assert!(
        stats.padded_bytes > 2 * stats.bytes_uploaded,
        "ragged uploads are smaller than padded ones: {stats:?}"
    );
}

/// A storage buffer on `ctx`'s device holding `data`.
fn storage(ctx: &shardflow::gpu::WgpuContext, data: &[u32]) -> wgpu::Buffer {
    use wgpu::util::DeviceExt;
    ctx.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(data),
            usage: wgpu::BufferUsages::STORAGE,
        })
}
