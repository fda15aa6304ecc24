//! The CUDA path. Through NVRTC (CI): every kernel compiles to CUBIN for sm_80 and sm_90, and a
//! broken source names itself and carries NVRTC's log; without libnvrtc those tests skip with
//! the reason, unless SHARDFLOW_REQUIRE_NVRTC=1 (CI), which makes them fail. Without a driver:
//! the context, the sink and the NCCL engine are errors, never panics. On a CUDA device (skipped
//! elsewhere with the reason, failed under SHARDFLOW_REQUIRE_CUDA=1): the sink against the host
//! sink, device sketches against the host's, a loader run through the sink
//! against the host run, slot recycling, and NCCL over every visible GPU against the host world.
#![cfg(feature = "cuda")]

mod common;

use std::sync::Arc;

use shardflow::Error;
use shardflow::TokenId;
use shardflow::collate::CollateConfig;
use shardflow::device::{CudaSink, DeviceSink};
use shardflow::gpu::cuda::{CudaContext, cuda_present};
use shardflow::gpu::nvrtc::{Kernel, compile, nvrtc_present, nvrtc_version};

use common::device_suite as suite;

fn nvrtc() -> bool {
    let probe = if nvrtc_present() {
        Ok(())
    } else {
        Err(nvrtc_version().unwrap_err())
    };
    common::available("SHARDFLOW_REQUIRE_NVRTC", "NVRTC cannot be loaded", probe).is_some()
}

#[test]
fn every_kernel_compiles_to_cubin_for_sm_80_and_sm_90() {
    if !nvrtc() {
        return;
    }
    let (major, minor) = nvrtc_version().unwrap();
    assert!(major >= 12, "NVRTC {major}.{minor}");
    for kernel in Kernel::ALL {
        for arch in ["sm_80", "sm_90"] {
            let cubin = kernel.compile(arch).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                &cubin[..4],
                b"\x7fELF",
                "{kernel:?} for {arch} is a CUBIN (ELF)"
            );
            for f in kernel.functions() {
                let symbol = f.as_bytes();
                assert!(
                    cubin.windows(symbol.len()).any(|w| w == symbol),
                    "{kernel:?} for {arch} defines {f}"
                );
            }
        }
    }
}

#[test]
fn a_broken_kernel_names_itself_and_carries_the_log() {
    if !nvrtc() {
        return;
    }
    let source = "extern \"C\" __global__ void f(float* x) { x[0] = not_declared_anywhere; }";
    match compile("broken.cu", source, "sm_80") {
        Err(Error::Kernel { kernel, arch, log }) => {
            assert_eq!((kernel.as_str(), arch.as_str()), ("broken.cu", "sm_80"));
            assert!(log.contains("not_declared_anywhere"), "{log}");
        }
        other => panic!("{other:?}"),
    }
    // NVRTC has no standard headers: a kernel that includes one fails the same way.
    let err = compile("headers.cu", "#include <stdint.h>\n", "sm_90").unwrap_err();
    assert!(
        err.to_string()
            .contains("kernel headers.cu does not compile for sm_90"),
        "{err}"
    );
}

#[test]
fn without_a_driver_the_cuda_context_is_an_error_not_a_panic() {
    use shardflow::gpu::cuda::{CudaContext, cuda_present, device_count};
    if cuda_present() {
        // A machine with a driver: the context comes up on this rank's device.
        let n = match device_count() {
            Ok(n) => n,
            Err(e) => {
                // A driver that fails to initialize is an error too, not a panic.
                assert!(matches!(e, Error::Device { .. }), "{e}");
                assert!(CudaContext::for_local_rank(0).is_err());
                return;
            }
        };
        match CudaContext::for_local_rank(0) {
            Ok(ctx) => {
                assert!(n > 0);
                assert!(!ctx.name().is_empty());
                assert!(ctx.arch().starts_with("sm_"), "{}", ctx.arch());
            }
            Err(e) => assert_eq!(n, 0, "{e}"),
        }
        // A LOCAL_RANK past the visible devices is refused by name, unless the process sees
        // one device (each rank its own through CUDA_VISIBLE_DEVICES).
        match CudaContext::for_local_rank(n) {
            Ok(ctx) => assert_eq!((n, ctx.driver().ordinal()), (1, 0)),
            Err(e) if n == 0 => assert!(e.to_string().contains("no CUDA device"), "{e}"),
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.contains(&format!("LOCAL_RANK {n} names no device"))
                        && text.contains(&format!("sees {n} CUDA devices")),
                    "{text}"
                );
            }
        }
    } else {
        for err in [
            CudaContext::for_local_rank(0).unwrap_err(),
            CudaContext::new(3).unwrap_err(),
            device_count().unwrap_err(),
        ] {
            assert!(matches!(err, Error::Device { .. }), "{err}");
            assert!(err.to_string().contains("libcuda.so"), "{err}");
        }
    }
}

/// Device 0's context, or a printed reason to skip (a failure under SHARDFLOW_REQUIRE_CUDA=1).
fn cuda() -> Option<Arc<CudaContext>> {
    let probe = match CudaContext::for_local_rank(0) {
        Ok(ctx) if nvrtc_present() => Ok(ctx),
        Ok(_) => Err(nvrtc_version().unwrap_err().to_string()),
        Err(e) => Err(e.to_string()),
    };
    common::available(
        "SHARDFLOW_REQUIRE_CUDA",
        "CUDA cannot be used (needs a CUDA device and NVRTC)",
        probe,
    )
}

#[test]
fn without_a_driver_the_cuda_sink_is_an_error_not_a_panic() {
    if cuda_present() {
        return;
    }
    let err = CudaSink::for_local_rank(0).unwrap_err();
    assert!(matches!(err, Error::Device { .. }), "{err}");
    assert!(err.to_string().contains("libcuda.so"), "{err}");
}

fn sink_conforms<T: TokenId>() {
    let Some(ctx) = cuda() else { return };
    let mut sink = CudaSink::new(ctx).unwrap();
    let pool = sink.staging_pool();
    assert_eq!(pool.memory(), "cuda pinned");
    suite::sink_equals_the_host::<T, _>(&mut sink);
    assert_eq!(pool.stats().heap_fallbacks, 0, "staging was pinned");
}

#[test]
fn the_cuda_sink_equals_the_host_sink_for_i32_ids() {
    sink_conforms::<i32>();
}

#[test]
fn the_cuda_sink_equals_the_host_sink_for_u32_ids() {
    sink_conforms::<u32>();
}

#[test]
fn i64_ids_are_refused_by_the_cuda_sink_with_a_clear_error() {
    let Some(ctx) = cuda() else { return };
    let mut sink = CudaSink::new(ctx).unwrap();
    let e =
        <CudaSink as DeviceSink<i64>>::bind(&mut sink, &CollateConfig::default(), 4).unwrap_err();
    assert!(e.to_string().contains("4-byte ids"), "{e}");
}

#[test]
fn cuda_sketches_equal_host_sketches_bucket_for_bucket() {
    use shardflow::metrics::Mapping;
    use shardflow::metrics::device::{bucket_table, cuda_sketches};
    let Some(ctx) = cuda() else { return };
    let stream = ctx.compute_stream();
    let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    for alpha in [0.01, 0.05, 1e-3] {
        let map = Mapping::new(alpha);
        let (values, owners) = suite::sketch_inputs(&map, &bucket_table(&map));
        let floats: Vec<f32> = values.iter().map(|&b| f32::from_bits(b)).collect();
        let v = stream.clone_htod(&floats).unwrap();
        let o = stream.clone_htod(&owners).unwrap();
        let device = cuda_sketches(&ctx, &map, &v, &o, values.len(), &names).unwrap();
        suite::sketches_equal_the_host(&map, &values, &owners, &device, &format!("alpha {alpha}"));
    }
    let names = vec!["web".to_string(), "code".to_string()];
    let v = stream.clone_htod(&[1.0f32, f32::NAN]).unwrap();
    let o = stream.clone_htod(&[0u32, 1]).unwrap();
    let e = cuda_sketches(&ctx, &Mapping::new(0.01), &v, &o, 2, &names).unwrap_err();
    assert!(e.to_string().contains("dataset code"), "{e}");
    // Asking for more values than the buffers hold is an error, not an out-of-bounds read.
    let e = cuda_sketches(&ctx, &Mapping::new(0.01), &v, &o, 3, &names).unwrap_err();
    assert!(e.to_string().contains("3 values asked for"), "{e}");
}

#[test]
fn a_loader_run_through_the_cuda_sink_checkpointed_and_resumed_equals_the_host_run() {
    let Some(ctx) = cuda() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sources = common::mixture(dir.path());
    suite::loader_resumes_as_the_host(&sources, || CudaSink::new(ctx.clone()).unwrap());
}

#[test]
fn a_steady_cuda_stream_recycles_two_or_three_slots_from_pinned_staging_and_sends_only_real_tokens()
{
    let Some(ctx) = cuda() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sink = CudaSink::new(ctx.clone()).unwrap();
    let pool = sink.staging_pool();
    let mut loader = suite::steady_loader(common::mixture(dir.path()), sink);
    let mut held = None;
    let mut warm = None;
    for i in 0..40 {
        held = Some(loader.next().unwrap().unwrap());
        if i == 20 {
            warm = Some(pool.stats());
        }
    }
    let mut last = held.unwrap();
    // A consumer on a stream of its own waits for the batch's event.
    let other = ctx.driver().new_stream().unwrap();
    last.use_on(&other).unwrap();
    other.synchronize().unwrap();
    assert_eq!(last.ids().shape, [8, 64]);
    assert_eq!(last.ids().dtype, "u32");
    assert_eq!(last.attention_mask().unwrap().dtype, "u8");
    assert_eq!(last.to_host().unwrap().rows, 8);
    drop(last);
    // Held while the next is written: two slots, and a third only when the released slot's
    // consumer (here nothing but the pad kernel) had not finished when the next upload began.
    let stats = loader.sink().stats();
    suite::steady_stats_within(stats, 40, 2..=CudaSink::MAX_SLOTS as u64);
    let (warm, now) = (warm.unwrap(), pool.stats());
    assert_eq!(
        now.allocations, warm.allocations,
        "pinned staging reused: {now:?}"
    );
    assert_eq!(now.heap_fallbacks, 0);
}

#[test]
fn a_kernel_image_is_cubin_for_known_architectures_and_ptx_for_newer_ones() {
    use shardflow::gpu::nvrtc::{image, supported_archs};
    if !nvrtc() {
        return;
    }
    let archs = supported_archs().unwrap();
    assert!(archs.contains(&80) && archs.contains(&90), "{archs:?}");
    let sm90 = image(Kernel::PadCollate, (9, 0)).unwrap();
    assert_eq!(sm90.arch, "sm_90");
    assert_eq!(&sm90.data[..4], b"\x7fELF");
    // Compiled once per process and architecture.
    assert!(Arc::ptr_eq(
        &sm90,
        &image(Kernel::PadCollate, (9, 0)).unwrap()
    ));
    // A device newer than this NVRTC gets PTX of the newest architecture below it, which its
    // driver compiles.
    let newest = *archs.iter().max().unwrap();
    let future = image(Kernel::Sketch, (99, 9)).unwrap();
    assert_eq!(future.arch, format!("compute_{newest}"));
    let ptx = String::from_utf8_lossy(&future.data);
    assert!(ptx.contains(".entry sketch"), "{ptx}");
    assert_eq!(
        future.data.last(),
        Some(&0),
        "PTX is NUL-terminated for the driver"
    );
    // A device older than every architecture it knows is an error naming the kernel.
    let e = image(Kernel::PadCollate, (1, 0)).unwrap_err();
    assert!(e.to_string().contains("pad_collate.cu"), "{e}");
}

/// A consumer step that keeps the device busy for `cycles` clock cycles, then copies `n` u32s
/// from `src` to `dst`: it reads the batch late, through a raw pointer that cudarc does not
/// track, as a foreign framework's kernel would.
const SLOW_STEP: &str = r#"
extern "C" __global__ void slow_copy(const unsigned* src, unsigned* dst, unsigned n,
                                     long long cycles) {
    long long t0 = clock64();
    while (clock64() - t0 < cycles) {}
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        dst[i] = src[i];
    }
}
"#;

/// `for batch in loader { step(batch) }` over `sources` through a CUDA sink, each step a
/// [`SLOW_STEP`] copying the batch's ids out late on `consumer` (the compute stream when
/// `None`; another stream through `use_on`); the ids each step read, and the sink's counters.
fn slow_steps(
    ctx: &Arc<CudaContext>,
    sources: Vec<shardflow::loader::Source>,
    batches: usize,
    consumer: Option<Arc<cudarc::driver::CudaStream>>,
) -> (Vec<Vec<u32>>, shardflow::device::SinkStats) {
    use cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};
    let cubin = compile("slow_copy.cu", SLOW_STEP, &ctx.arch()).unwrap();
    let module = ctx
        .driver()
        .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
        .unwrap();
    let slow_copy = module.load_function("slow_copy").unwrap();
    let stream = consumer
        .clone()
        .unwrap_or_else(|| ctx.compute_stream().clone());
    // About a millisecond per step: far longer than an upload of 8 x 64 ids.
    let cycles: i64 = 2_000_000;
    let mut loader = suite::steady_loader(sources, CudaSink::new(ctx.clone()).unwrap());
    let mut outs = Vec::new();
    for _ in 0..batches {
        let mut batch = loader.next().unwrap().unwrap();
        if let Some(s) = &consumer {
            batch.use_on(s).unwrap();
        }
        let ids = batch.ids();
        let n = ids.len as u32;
        let mut out = stream.alloc_zeros::<u32>(ids.len).unwrap();
        // A raw pointer that cudarc does not track: only the sink's events order the slot.
        let (src, record) = ids.buffer.device_ptr(&stream);
        std::mem::forget(record);
        let mut launch = stream.launch_builder(&slow_copy);
        launch.arg(&src).arg(&mut out).arg(&n).arg(&cycles);
        // SAFETY: slow_copy reads n <= ids.buffer.len() elements of src and writes n into out
        // (allocated with as many); both live on this context, and the batch's slot is
        // rewritten only after this stream passes the point where the batch is dropped.
        unsafe { launch.launch(LaunchConfig::for_num_elems(n)) }.unwrap();
        drop(batch);
        outs.push(out);
    }
    ctx.synchronize(&stream, "finish the steps").unwrap();
    let read = outs
        .iter()
        .map(|out| stream.clone_dtoh(out).unwrap())
        .collect();
    (read, loader.sink().stats())
}

#[test]
fn a_loop_dropping_each_batch_before_the_next_overlaps_on_two_slots_and_reads_every_batch_whole() {
    let Some(ctx) = cuda() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sources = common::mixture(dir.path());
    let host: Vec<Vec<u32>> =
        suite::steady_loader(sources.clone(), shardflow::device::HostSink::new())
            .take(24)
            .map(|b| b.unwrap().ids.to_vec())
            .collect();
    let other = ctx.driver().new_stream().unwrap();
    for consumer in [None, Some(other)] {
        let on = if consumer.is_some() {
            "its own stream"
        } else {
            "the compute stream"
        };
        let (read, stats) = slow_steps(&ctx, sources.clone(), host.len(), consumer);
        // Every step read its batch whole: no slot was rewritten under a step still running
        // (on its own stream, only the `released` event of `use_on`'s stream orders that).
        for (i, (got, want)) in read.iter().zip(&host).enumerate() {
            assert_eq!(got, want, "batch {i}, steps on {on}");
        }
        // Each upload found the last batch's slot still in use by its step: a second slot was
        // made so that the copies of batch k + 1 did not wait for step k, and a third at most.
        assert!(
            (2..=CudaSink::MAX_SLOTS as u64).contains(&stats.slots_created),
            "steps on {on}: {stats:?}"
        );
        assert!(stats.busy_slots >= 1, "steps on {on}: {stats:?}");
    }
}

#[test]
fn a_ptx_image_names_the_driver_its_isa_needs() {
    use shardflow::gpu::nvrtc::image;
    if !nvrtc() {
        return;
    }
    // A device newer than this NVRTC gets PTX: its `.version` says which driver can load it.
    let ptx = image(Kernel::Sketch, (99, 9)).unwrap();
    let (major, minor) = ptx.ptx_isa().expect("PTX declares its ISA version");
    let nvrtc = nvrtc_version().unwrap();
    // NVRTC 12.x writes PTX ISA 8.x (12.9: 8.8, which needs an R575 driver).
    assert_eq!(major, 8, "NVRTC {nvrtc:?} wrote PTX ISA {major}.{minor}");
    if nvrtc == (12, 9) {
        assert_eq!(minor, 8);
    }
    let cubin = image(Kernel::Sketch, (9, 0)).unwrap();
    assert_eq!(cubin.ptx_isa(), None, "CUBIN has no PTX ISA");
}
