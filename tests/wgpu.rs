//! The wgpu path on a real adapter (lavapipe in CI): the sink against the host sink, device
//! sketches against host sketches, a loader run
//! through the sink against the host run, and buffer recycling. Without an adapter each test
//! prints why it skips, unless SHARDFLOW_REQUIRE_WGPU=1.
#![cfg(feature = "wgpu")]

mod common;

use shardflow::TokenId;
use shardflow::collate::CollateConfig;
use shardflow::device::{DeviceSink, WgpuSink};

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
    use shardflow::loader::LoaderBuilder;
    use shardflow::order::OrderConfig;
    let Some(ctx) = wgpu() else { return };
    // The largest batch `bench` documents: 8192 rows padded to a multiple of 8192. On lavapipe
    // its [B, T] buffers (256 MiB each) pass the storage binding limit; on any device its
    // dispatch passes the workgroup limit.
    let limits = ctx.device().limits();
    let cells: u64 = 8192 * 8192;
    let limit = if 4 * cells > limits.max_buffer_size {
        format!("max_buffer_size of {} bytes", limits.max_buffer_size)
    } else if 4 * cells > limits.max_storage_buffer_binding_size {
        format!(
            "max_storage_buffer_binding_size of {} bytes",
            limits.max_storage_buffer_binding_size
        )
    } else {
        format!(
            "max_compute_workgroups_per_dimension of {}",
            limits.max_compute_workgroups_per_dimension
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let builder = || {
        LoaderBuilder::<u32>::new(common::mixture(dir.path()))
            .with_order(OrderConfig {
                local_batch: 8192,
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
    // Refused when the loader is built, before any batch is planned or read.
    let Err(e) = builder().build(WgpuSink::new(ctx.clone()).unwrap()) else {
        panic!("a loader whose largest batch passes the device's limits was built");
    };
    let text = e.to_string();
    assert!(matches!(e, shardflow::Error::Device { .. }), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
    assert!(text.contains(&limit), "names {limit}: {text}");
    assert!(
        text.starts_with(&format!(
            "device {}: cannot collate batches of 8192 rows and up to 67108864 tokens: ",
            ctx.name()
        )),
        "{text}"
    );
    assert!(
        text.ends_with("use a smaller batch size or sequence length"),
        "{text}"
    );
    // A batch that fits is built as before.
    let mut fits = builder()
        .with_order(OrderConfig {
            local_batch: 4,
            ..Default::default()
        })
        .build(WgpuSink::new(ctx.clone()).unwrap())
        .unwrap();
    assert!(fits.next().unwrap().is_ok());
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
