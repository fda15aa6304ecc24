//! The wgpu path on a real adapter (lavapipe in CI): the sink against the host sink, device
//! sketches against host sketches, a loader run
//! through the sink against the host run, and buffer recycling. Without an adapter each test
//! prints why it skips, unless SHARDFLOW_REQUIRE_WGPU=1.
#![cfg(feature = "wgpu")]

mod common;

use shardflow::TokenId;
use shardflow::collate::{Batch, CollateConfig, DocRef, Padding, Pool, StagedBatch, pad_host};
use shardflow::device::{DeviceSink, Field, WgpuSink};

use common::device_suite as suite;
use common::gpu::wgpu;

fn sink_conforms<T: TokenId>() {
    let Some(ctx) = wgpu() else { return };
    let mut sink = WgpuSink::new(ctx).unwrap();
    suite::sink_equals_the_host::<T, _>(&mut sink);
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
    let mut sink = WgpuSink::new(ctx).unwrap();
    let e =
        <WgpuSink as DeviceSink<i64>>::bind(&mut sink, &CollateConfig::default(), 4).unwrap_err();
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

#[test]
fn device_sketches_equal_host_sketches_bucket_for_bucket() {
    use shardflow::metrics::Mapping;
    use shardflow::metrics::device::{bucket_table, device_sketches};
    let Some(ctx) = wgpu() else { return };
    let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    for alpha in [0.01, 0.05, 1e-3] {
        let map = Mapping::new(alpha);
        let (values, owners) = suite::sketch_inputs(&map, &bucket_table(&map));
        let (v, o) = (storage(&ctx, &values), storage(&ctx, &owners));
        let device = device_sketches(&ctx, &map, &v, &o, values.len(), &names).unwrap();
        suite::sketches_equal_the_host(&map, &values, &owners, &device, &format!("alpha {alpha}"));
    }
    // A NaN on the device is refused, naming its dataset, as the host refuses one.
    let names = vec!["web".to_string(), "code".to_string()];
    let values = [1.0f32.to_bits(), f32::NAN.to_bits()];
    let (v, o) = (storage(&ctx, &values), storage(&ctx, &[0, 1]));
    let e = device_sketches(&ctx, &Mapping::new(0.01), &v, &o, 2, &names).unwrap_err();
    assert!(e.to_string().contains("dataset code"), "{e}");
}

#[test]
fn device_sketches_over_many_workgroups_equal_the_host_and_repeat_exactly() {
    use shardflow::metrics::Mapping;
    use shardflow::metrics::device::{bucket_table, device_sketches, sketch_groups};
    let Some(ctx) = wgpu() else { return };
    let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let map = Mapping::new(0.01);
    let (one, owners_one) = suite::sketch_inputs(&map, &bucket_table(&map));
    // Past seven workgroups' worth of values, with a ragged tail.
    let n = 7 * 65_536 + 123;
    let (values, owners): (Vec<u32>, Vec<u32>) = one
        .iter()
        .zip(&owners_one)
        .cycle()
        .take(n)
        .map(|(&v, &o)| (v, o))
        .unzip();
    assert!(sketch_groups(n) >= 8, "{} workgroups", sketch_groups(n));
    let (v, o) = (storage(&ctx, &values), storage(&ctx, &owners));
    let first = device_sketches(&ctx, &map, &v, &o, n, &names).unwrap();
    suite::sketches_equal_the_host(&map, &values, &owners, &first, "many workgroups");
    let again = device_sketches(&ctx, &map, &v, &o, n, &names).unwrap();
    assert_eq!(
        first, again,
        "the same values give bitwise the same sketches"
    );
}

#[test]
fn an_empty_device_sketch_allocates_and_dispatches_nothing() {
    use shardflow::metrics::Mapping;
    use shardflow::metrics::Sketch;
    use shardflow::metrics::device::device_sketches;
    let Some(ctx) = wgpu() else { return };
    let map = Mapping::new(0.01);
    let (v, o) = (storage(&ctx, &[1.0f32.to_bits()]), storage(&ctx, &[0]));
    assert!(
        device_sketches(&ctx, &map, &v, &o, 1, &[])
            .unwrap()
            .is_empty()
    );
    let one = vec!["web".to_string()];
    assert_eq!(
        device_sketches(&ctx, &map, &v, &o, 0, &one).unwrap(),
        vec![Sketch::default()]
    );
    let e = device_sketches(&ctx, &map, &v, &o, 2, &one).unwrap_err();
    assert!(e.to_string().contains("2 values asked for"), "{e}");
}

#[test]
fn a_loader_run_through_the_wgpu_sink_checkpointed_and_resumed_equals_the_host_run() {
    let Some(ctx) = wgpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sources = common::mixture(dir.path());
    suite::loader_resumes_as_the_host(&sources, || WgpuSink::new(ctx.clone()).unwrap());
}

#[test]
fn a_steady_stream_recycles_two_slots_and_sends_only_real_tokens() {
    let Some(ctx) = wgpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sink = WgpuSink::new(ctx).unwrap();
    let mut loader = suite::steady_loader(common::mixture(dir.path()), sink);
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
    suite::steady_stats(loader.sink().stats(), 40);
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

#[test]
fn a_batch_past_the_devices_limits_is_one_line_naming_the_limit() {
    use shardflow::collate::{CollateConfig, Padding};
    use shardflow::loader::{LoaderBuilder, MAX_BATCH_TOKENS};
    use shardflow::order::OrderConfig;
    let Some(ctx) = wgpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let builder = |rows: usize| {
        LoaderBuilder::<u32>::new(common::mixture(dir.path()))
            .with_order(OrderConfig {
                local_batch: rows,
                ..Default::default()
            })
            .with_collate(CollateConfig {
                seq_len: 8192,
                padding: Padding::Multiple(8192),
                ..Default::default()
            })
            .with_workers(1)
            .with_prefetch(1)
    };
    let refused = |e: shardflow::Error, ctx: &shardflow::gpu::WgpuContext, batch: &str| {
        let text = e.to_string();
        assert!(matches!(e, shardflow::Error::Device { .. }), "{text}");
        assert!(!text.contains('\n'), "one line: {text}");
        assert!(
            text.starts_with(&format!("device {}: cannot collate {batch}: ", ctx.name())),
            "{text}"
        );
        assert!(
            text.ends_with("use a smaller batch size or sequence length"),
            "{text}"
        );
        text
    };
    // Past the largest batch the shader's 32-bit indexes are sized for, 2^28 cells.
    let mut sink = WgpuSink::new(ctx.clone()).unwrap();
    let wide = CollateConfig {
        seq_len: 1 << 15,
        padding: Padding::Fixed,
        ..Default::default()
    };
    let e = <WgpuSink as DeviceSink<u32>>::bind(&mut sink, &wide, 1 << 14).unwrap_err();
    let text = refused(e, &ctx, "batches of 16384 rows and up to 536870912 tokens");
    assert!(
        text.contains(&format!(
            "536870912 cells pass the largest batch the pad shader takes, {MAX_BATCH_TOKENS} \
             cells (2^28"
        )),
        "{text}"
    );
    // Past a device's max_buffer_size (a device made with a smaller one), refused when the
    // loader is built, before any batch is planned or read.
    let small = limited(&ctx, |l| l.max_buffer_size = 64 << 20);
    let Err(e) = builder(8192).build(WgpuSink::new(small.clone()).unwrap()) else {
        panic!("a loader whose largest batch passes the device's limits was built");
    };
    let text = refused(e, &small, "batches of 8192 rows and up to 67108864 tokens");
    assert!(
        text.contains("over the device's max_buffer_size of 67108864 bytes"),
        "{text}"
    );
    // The largest batch `bench` documents, 8192 rows padded to a multiple of 8192 (256 MiB per
    // [B, T] field, over lavapipe's storage binding limit of 128 MiB), is padded in chunks over
    // windows of the buffers: built, and a batch that fits comes as before.
    assert!(
        builder(8192)
            .build(WgpuSink::new(ctx.clone()).unwrap())
            .is_ok()
    );
    let mut fits = builder(4)
        .build(WgpuSink::new(ctx.clone()).unwrap())
        .unwrap();
    assert!(fits.next().unwrap().is_ok());
}

/// A context on `ctx`'s adapter whose device is created with the adapter's limits as `edit`
/// changes them (smaller bindings, a coarser offset alignment): the paths a smaller device
/// takes, on this one.
fn limited(
    ctx: &shardflow::gpu::WgpuContext,
    edit: impl FnOnce(&mut wgpu::Limits),
) -> std::sync::Arc<shardflow::gpu::WgpuContext> {
    let (_instance, adapter) = shardflow::gpu::WgpuContext::adapter().unwrap();
    assert_eq!(adapter.get_info().name, ctx.info().name);
    let mut limits = adapter.limits();
    edit(&mut limits);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: adapter.features() - wgpu::Features::MAPPABLE_PRIMARY_BUFFERS,
        required_limits: limits,
        ..Default::default()
    }))
    .unwrap();
    shardflow::gpu::WgpuContext::from_device(device, queue, adapter.get_info())
}

/// A staged batch of `rows` rows for `config`, cheap to make at any size (a xorshift, not the
/// conformance suite's ChaCha): padded rows hold one sample of 0..=T tokens (a quarter empty, a
/// quarter full); packed rows are filled with documents of 1 to 1000 tokens (some of 1 to 3, some
/// empty, as dropped ones are), the last row partly.
fn big_staged<T: TokenId>(
    config: &CollateConfig,
    rows: usize,
    pool: &Pool,
    seed: u64,
) -> StagedBatch<T> {
    staged_with(config, rows, pool, seed, None)
}

/// [`big_staged`], with the lengths of padded rows `lens` (cycled) when given.
fn staged_with<T: TokenId>(
    config: &CollateConfig,
    rows: usize,
    pool: &Pool,
    seed: u64,
    lens_of: Option<&[usize]>,
) -> StagedBatch<T> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n.max(1) as u64) as usize
    };
    let t = config.seq_len;
    let (mut docs, mut lens) = (Vec::new(), Vec::with_capacity(rows));
    for r in 0..rows {
        let doc = |start: usize, len: usize| DocRef {
            sample: docs_seen(r, start),
            row: r as u32,
            start: start as u32,
            len: len as u32,
            doc_len: len as u32,
            flags: if len == 0 && config.pack {
                DocRef::DROPPED
            } else {
                0
            },
            ..DocRef::default()
        };
        if !config.pack {
            let len = match (lens_of, next(4)) {
                (Some(lens), _) => lens[r % lens.len()],
                (None, 0) => 0,
                (None, 1) => t,
                (None, _) => next(t + 1),
            };
            docs.push(doc(0, len));
            lens.push(len);
        } else {
            let fill = if r + 1 == rows { next(t + 1) } else { t };
            let mut col = 0;
            while col < fill {
                let len = match next(8) {
                    0 => 0,
                    1 => 1 + next(3),
                    _ => 1 + next(1000),
                }
                .min(fill - col);
                docs.push(doc(col, len));
                col += len;
            }
            lens.push(fill);
        }
    }
    common::conformance::assemble(seed, config, &lens, &docs, pool, |i| {
        ((i as u64).wrapping_mul(2_654_435_761) >> 5) % 50_000
    })
}

/// A sample index for a piece: any number the host and the device copy alike.
fn docs_seen(row: usize, start: usize) -> u64 {
    (row as u64) << 32 | start as u64
}

/// The bytes a host batch holds for `field`.
fn host_field<T: TokenId>(batch: &Batch<T>, field: Field) -> Option<&[u8]> {
    match field {
        Field::Ids => Some(batch.ids.as_bytes()),
        Field::Lengths => Some(batch.lengths.as_bytes()),
        Field::AttentionMask => batch.attention_mask.as_ref().map(|b| b.as_bytes()),
        Field::Labels => batch.labels.as_ref().map(|b| b.as_bytes()),
        Field::PositionIds => batch.position_ids.as_ref().map(|b| b.as_bytes()),
        Field::CuSeqlens => batch.cu_seqlens.as_ref().map(|b| b.as_bytes()),
    }
}

/// The batch `make` stages, collated by `sink` bound to `config`, equals `pad_host`'s batch of
/// the same staging, field for field and byte for byte. The host batch is made and compared in
/// blocks of rows of at most 16 M cells (`pad_host` of each block's rows on their own, which is
/// the block's rows of the whole batch), each device field read back for the block alone: a
/// batch of 2^28 cells is compared without a second copy of it.
fn equals_the_host_in_pieces<T: TokenId>(
    sink: &mut WgpuSink,
    config: &CollateConfig,
    rows: usize,
    make: impl Fn(&Pool) -> StagedBatch<T>,
) {
    DeviceSink::<T>::bind(sink, config, rows).unwrap();
    // The sink's staged batch comes from a pool of its own, dropped once uploaded, so that its
    // ids (1 GiB for a packed batch of 2^28 cells) are not kept for reuse.
    let got = sink
        .upload(sink.prepare(make(&Pool::new())).unwrap(), 0)
        .unwrap();
    got.wait().unwrap();
    let pool = Pool::new();
    let staged = make(&pool);
    let width = staged.width;
    let what = format!(
        "{} ids, {rows} x {width} ({} cells), {config:?}",
        T::NAME,
        rows * width
    );
    assert_eq!((got.rows, got.width), (rows, width), "{what}");
    assert_eq!(got.docs.as_bytes(), staged.docs.as_bytes(), "{what}");
    let ctx = got.context().clone();
    let block = ((16 << 20) / width.max(1)).max(1);
    // cu_seqlens is a running sum over the pieces: the blocks' sums, each shifted by the real
    // tokens before the block.
    let mut cu: Vec<u8> = 0i32.to_le_bytes().to_vec();
    let mut compared = std::collections::HashMap::<Field, u64>::new();
    for a in (0..rows).step_by(block) {
        let b = (a + block).min(rows);
        let want = pad_host(rows_of(&staged, a, b, &pool), config, &pool);
        let before = staged.offsets[a] as i32;
        if let Some(c) = &want.cu_seqlens {
            cu.extend(c[1..].iter().flat_map(|x| (x + before).to_le_bytes()));
        }
        for field in Field::ALL {
            let (device, host) = (got.field(field), host_field(&want, field));
            assert_eq!(device.is_some(), host.is_some(), "{field:?}, {what}");
            let (Some(device), Some(host)) = (device, host) else {
                continue;
            };
            let (at, len) = match field {
                Field::CuSeqlens => continue,
                Field::Lengths => (4 * a, 4 * (b - a)),
                _ => {
                    let size = host.len() / ((b - a) * width).max(1);
                    (a * width * size, host.len())
                }
            };
            assert_eq!(len, host.len(), "{field:?}, {what}");
            assert!((at + len) as u64 <= device.bytes, "{field:?}, {what}");
            *compared.entry(field).or_default() += len as u64;
            let back = ctx.read(device.buffer, at as u64, len as u64).unwrap();
            if back != host {
                let i = (0..len).find(|&i| back[i] != host[i]).unwrap();
                panic!(
                    "{field:?} differs at byte {} (device {}, host {}), {what}",
                    at + i,
                    back[i],
                    host[i]
                );
            }
        }
    }
    for field in Field::ALL {
        if let Some(device) = got.field(field).filter(|_| field != Field::CuSeqlens) {
            assert_eq!(
                compared[&field], device.bytes,
                "{field:?} compared whole, {what}"
            );
        }
    }
    let device = got
        .cu_seqlens()
        .map(|c| ctx.read(c.buffer, 0, c.bytes).unwrap());
    let host = config.pack.then_some(cu);
    assert_eq!(device, host, "cu_seqlens, {what}");
}

/// Rows `a..b` of the ragged batch `s` as a batch of their own, of the same width, from `pool`.
fn rows_of<T: TokenId>(s: &StagedBatch<T>, a: usize, b: usize, pool: &Pool) -> StagedBatch<T> {
    let (t0, t1) = (s.offsets[a] as usize, s.offsets[b] as usize);
    let mut tokens = pool.take::<T>(t1 - t0);
    tokens.copy_from_slice(&s.tokens[t0..t1]);
    let mut offsets = pool.take::<u32>(b - a + 1);
    for r in a..=b {
        offsets[r - a] = s.offsets[r] - s.offsets[a];
    }
    let first = s.docs.partition_point(|d| (d.row as usize) < a);
    let last = s.docs.partition_point(|d| (d.row as usize) < b);
    let mut docs = pool.take::<DocRef>(last - first);
    for (to, from) in docs.iter_mut().zip(&s.docs[first..last]) {
        *to = DocRef {
            row: from.row - a as u32,
            ..*from
        };
    }
    StagedBatch {
        step: s.step,
        rows: b - a,
        width: s.width,
        tokens,
        offsets,
        docs,
        packed: s.packed,
        layout: s.layout,
    }
}

/// The configurations of the large-batch tests: padded to `seq_len` (every field) and packed
/// (every field, `cu_seqlens`).
fn padded_and_packed(seq_len: usize) -> [CollateConfig; 2] {
    let all = CollateConfig {
        seq_len,
        padding: Padding::Fixed,
        pad_id: -1,
        attention_mask: true,
        labels: true,
        position_ids: true,
        ..Default::default()
    };
    [
        all.clone(),
        CollateConfig {
            pack: true,
            padding: Padding::Longest,
            ..all
        },
    ]
}

#[test]
fn a_batch_past_65535_workgroups_in_one_dimension_equals_the_host() {
    // 4097 rows of 4096: 16 781 312 cells, past 65 535 workgroups of 256 cells (16 776 960),
    // the most one dimension of a dispatch holds; the grid's second row pads the rest.
    let Some(ctx) = wgpu() else { return };
    let mut sink = WgpuSink::new(ctx).unwrap();
    let [padded, _] = padded_and_packed(4096);
    equals_the_host_in_pieces::<i32>(&mut sink, &padded, 4097, |pool| {
        big_staged(&padded, 4097, pool, 7)
    });
}

#[test]
fn a_device_with_small_storage_bindings_pads_in_chunks_over_windows_equal_to_the_host() {
    // A device whose bindings hold 64 KiB (7 936 cells a chunk) at offsets aligned to 256 bytes:
    // rows wider than a chunk, many rows in one, chunks that start and end inside a row and
    // inside a document, in padded and packed batches; and the conformance suite, every batch
    // of which is one chunk over windows.
    let Some(ctx) = wgpu() else { return };
    let small = limited(&ctx, |l| {
        l.max_storage_buffer_binding_size = 64 << 10;
        l.min_storage_buffer_offset_alignment = 256;
    });
    let mut sink = WgpuSink::new(small).unwrap();
    for (seq_len, rows) in [(50_000, 7), (64, 3000), (33, 2001), (9_000, 5)] {
        for config in padded_and_packed(seq_len) {
            for seed in [1, 2] {
                equals_the_host_in_pieces::<u32>(&mut sink, &config, rows, |pool| {
                    big_staged(&config, rows, pool, seed)
                });
            }
        }
    }
    // Chunks wholly inside an empty row whose first token sits on an aligned offset read no
    // token: rows of 16384 (a multiple of the 64-id alignment), full and empty in turn.
    let [padded, _] = padded_and_packed(16_384);
    equals_the_host_in_pieces::<u32>(&mut sink, &padded, 6, |pool| {
        staged_with(
            &padded,
            6,
            pool,
            3,
            Some(&[16_384, 16_384, 0, 0, 5, 16_384]),
        )
    });
    suite::sink_equals_the_host::<i32, _>(&mut sink);
    // A read back of a batch whose fields together pass the device's max_buffer_size (1 MiB
    // here; ids alone take 1 000 000 bytes) goes through the staging buffer in several rounds.
    let small = limited(&ctx, |l| l.max_buffer_size = 1 << 20);
    let mut sink = WgpuSink::new(small).unwrap();
    for config in padded_and_packed(50_000) {
        let pool = Pool::new();
        let want = pad_host(big_staged::<u32>(&config, 5, &pool, 9), &config, &pool);
        DeviceSink::<u32>::bind(&mut sink, &config, 5).unwrap();
        let prepared = sink
            .prepare(big_staged::<u32>(&config, 5, &pool, 9))
            .unwrap();
        let got = sink.upload(prepared, 0).unwrap().to_host().unwrap();
        assert!(got.to_bytes().len() > 3 << 20);
        assert!(got.to_bytes() == want.to_bytes(), "{config:?}");
    }
}

#[test]
fn batches_of_2_pow_28_cells_padded_and_packed_equal_the_host_sink() {
    // The largest batch the loader builds (MAX_BATCH_TOKENS, 2^28 cells): 16384 rows of 16384,
    // padded and packed, with every field (1 GiB for each of ids, labels and position ids).
    // On lavapipe a field passes the storage binding limit (128 MiB), so this also runs the
    // chunked dispatch at full size.
    let Some(ctx) = wgpu() else { return };
    assert_eq!(1u64 << 28, shardflow::loader::MAX_BATCH_TOKENS);
    let rows = 1 << 14;
    for config in padded_and_packed(1 << 14) {
        let started = std::time::Instant::now();
        let mut sink = WgpuSink::new(ctx.clone()).unwrap();
        equals_the_host_in_pieces::<i32>(&mut sink, &config, rows, |pool| {
            big_staged(&config, rows, pool, 28)
        });
        eprintln!(
            "2^28 cells, pack {}: {:.1} s, peak resident {} MiB",
            config.pack,
            started.elapsed().as_secs_f64(),
            peak_resident_mib()
        );
    }
}

/// The process's peak resident memory so far, in MiB (Linux's VmHWM).
fn peak_resident_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib >> 10)
}

#[cfg(feature = "cli")]
#[test]
fn opening_the_adapter_without_xdg_runtime_dir_prints_nothing_on_stderr() {
    // Mesa's device-select layer asks libwayland for a compositor, which complains on stderr
    // when XDG_RUNTIME_DIR is unset; the command gives the variable a value first.
    let Some(ctx) = wgpu() else { return };
    let out = common::cmd::shardflow()
        .arg("devices")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with(&format!("wgpu: {} (f64 in shaders: ", ctx.name())),
        "{stdout}"
    );
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "{stderr}");
}
