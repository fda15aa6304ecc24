//! The device checks of `scripts/gpu-check` that need a program of their own (feature `cuda`):
//!
//! - `overlap`: a consumer step that really runs on the GPU (a kernel that spins for a fixed
//!   time on the sink's compute stream) for batch k, then `next()`: the copies of batch k+1 must
//!   finish while step k still runs.
//! - `large`: batches of 2^28 cells (the loader's batch limit), padded and packed, through the
//!   CUDA sink and the host sink: byte for byte equal.
//!
//! `cargo run --release --features cuda --example gpu_check -- overlap|large`
//!
//! Each prints one line starting with `ok:`, `skipped:` (exit 0) or `FAILED:` (exit 1). Without a
//! CUDA device it says so and skips, unless `SHARDFLOW_REQUIRE_CUDA=1` (then exit 1).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use shardflow::collate::{CollateConfig, Padding};
use shardflow::device::CudaSink;
use shardflow::gpu::cuda::CudaContext;
use shardflow::loader::{LoaderBuilder, MAX_BATCH_TOKENS, Source};
use shardflow::order::OrderConfig;
use shardflow::shard::synthetic::SyntheticCorpus;

/// A kernel that runs for `ns` nanoseconds of the GPU's global timer: a consumer step of known
/// length.
const SPIN: &str = r#"
extern "C" __global__ void spin(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
}
"#;

type Outcome = Result<String, String>;

fn main() {
    let check = std::env::args().nth(1).unwrap_or_default();
    let required = std::env::var("SHARDFLOW_REQUIRE_CUDA").as_deref() == Ok("1");
    let ctx = match CudaContext::for_local_rank(0) {
        Ok(ctx) => ctx,
        Err(e) => {
            if required {
                println!("FAILED: {check}: SHARDFLOW_REQUIRE_CUDA=1, but no CUDA device: {e}");
                std::process::exit(1);
            }
            println!("skipped: {check}: no CUDA device ({e})");
            return;
        }
    };
    let outcome = match check.as_str() {
        "overlap" => overlap(&ctx),
        "large" => large(&ctx),
        other => Err(format!("unknown check {other:?}: overlap or large")),
    };
    match outcome {
        Ok(line) => println!("ok: {check}: {line}"),
        Err(why) => {
            println!("FAILED: {check}: {why}");
            std::process::exit(1);
        }
    }
}

fn fail(what: &str) -> impl Fn(shardflow::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn driver(what: &str) -> impl Fn(cudarc::driver::DriverError) -> String + '_ {
    move |e| format!("{what}: {e:?}")
}

/// The sources of a synthetic corpus of about `tokens` tokens in `dir`.
fn corpus(dir: &Path, tokens: u64, median: f64) -> Result<Vec<Source>, String> {
    let written = SyntheticCorpus::single("web", tokens, median, 7)
        .write(dir, |_| {})
        .map_err(fail("write the corpus"))?;
    written
        .iter()
        .map(|s| Source::open(&s.prefix, 1.0))
        .collect::<shardflow::Result<_>>()
        .map_err(fail("open the corpus"))
}

/// The spin kernel, compiled by NVRTC to CUBIN for this device (PTX from the pinned NVRTC could
/// be newer than the driver) and loaded.
fn spin_kernel(ctx: &CudaContext) -> Result<CudaFunction, String> {
    let cubin = shardflow::gpu::nvrtc::compile("spin.cu", SPIN, &ctx.arch())
        .map_err(fail("compile spin"))?;
    let module = ctx
        .driver()
        .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
        .map_err(driver("load spin"))?;
    module.load_function("spin").map_err(driver("find spin"))
}

/// Queues the spin kernel for `ns` on `stream`.
fn spin(f: &CudaFunction, stream: &Arc<CudaStream>, ns: u64) -> Result<(), String> {
    let mut launch = stream.launch_builder(f);
    launch.arg(&ns);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: `spin` takes one u64 by value and touches no memory.
    unsafe { launch.launch(cfg) }.map_err(driver("launch spin"))?;
    Ok(())
}

/// Copies of batch k+1 overlap step k: step k spins for 200 ms on the compute stream (the
/// default consumer); the copies of batch k+1, queued by `next()` meanwhile, must be complete
/// while step k's end event is still pending, for every k.
fn overlap(ctx: &Arc<CudaContext>) -> Outcome {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let sources = corpus(dir.path(), 40_000_000, 2000.0)?;
    let sink = CudaSink::new(ctx.clone()).map_err(fail("make the sink"))?;
    let mut loader = LoaderBuilder::<i32>::new(sources)
        .with_order(OrderConfig {
            local_batch: 64,
            ..Default::default()
        })
        .with_collate(CollateConfig {
            seq_len: 8192,
            padding: Padding::Multiple(64),
            ..Default::default()
        })
        .with_workers(8)
        .build(sink)
        .map_err(fail("build the loader"))?;
    let compute = ctx.compute_stream().clone();
    let kernel = spin_kernel(ctx)?;
    let step = Duration::from_millis(200);
    let (mut overlapped, mut copy_ms) = (0, Vec::new());
    let mut batch = loader.next().ok_or("no batch")?.map_err(fail("batch 0"))?;
    let rounds = 8;
    for k in 0..rounds {
        batch.wait().map_err(fail("wait for a batch"))?;
        spin(&kernel, &compute, step.as_nanos() as u64)?;
        let step_end = ctx
            .driver()
            .new_event(None)
            .map_err(driver("make an event"))?;
        step_end.record(&compute).map_err(driver("record"))?;
        drop(batch);
        let t0 = Instant::now();
        batch = loader
            .next()
            .ok_or("the stream ended")?
            .map_err(fail("next batch"))?;
        batch
            .copied()
            .synchronize()
            .map_err(driver("wait for copies"))?;
        copy_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        // cudarc's query does not make the context current.
        ctx.driver()
            .bind_to_thread()
            .map_err(driver("bind the context"))?;
        let still_running = !step_end.try_is_complete().map_err(driver("query"))?;
        if still_running {
            overlapped += 1;
        } else if t0.elapsed() < step / 2 {
            return Err(format!(
                "step {k} ended before the copies of batch {} though they took {:.1} ms: the \
                 copies waited for the step",
                k + 1,
                copy_ms.last().unwrap()
            ));
        }
    }
    if overlapped < rounds - 1 {
        return Err(format!(
            "the copies of the next batch finished during the step in {overlapped} of {rounds} \
             rounds (next() to copies done: {copy_ms:.1?} ms, step 200 ms)"
        ));
    }
    Ok(format!(
        "copies of batch k+1 done during step k in {overlapped}/{rounds} rounds; next() to \
         copies done {:.1}-{:.1} ms against a 200 ms step; slots {:?}",
        copy_ms.iter().cloned().fold(f64::INFINITY, f64::min),
        copy_ms.iter().cloned().fold(0.0, f64::max),
        loader.sink().stats()
    ))
}

/// One batch of `rows x width = 2^28` cells, padded and packed, through the CUDA sink and the
/// host sink: equal byte for byte.
fn large(ctx: &Arc<CudaContext>) -> Outcome {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (rows, width) = (8192usize, 32768usize);
    assert_eq!((rows * width) as u64, MAX_BATCH_TOKENS);
    let sources = corpus(dir.path(), 3 * MAX_BATCH_TOKENS / 2, 20_000.0)?;
    let mut lines = Vec::new();
    for pack in [false, true] {
        let build = |sources: Vec<Source>| {
            LoaderBuilder::<i32>::new(sources)
                .with_order(OrderConfig {
                    local_batch: rows,
                    ..Default::default()
                })
                .with_collate(CollateConfig {
                    seq_len: width,
                    padding: Padding::Fixed,
                    pack,
                    ..Default::default()
                })
                // Batches of 2^28 cells: one in flight, few workers, so that the host holds
                // a handful of them (3.25 GiB each) and not the prefetch's dozens.
                .with_workers(2)
                .with_prefetch(1)
        };
        let t0 = Instant::now();
        let host = build(sources.clone())
            .build_host()
            .map_err(fail("build the host loader"))?
            .next()
            .ok_or("no host batch")?
            .map_err(fail("host batch"))?;
        let host_s = t0.elapsed().as_secs_f64();
        let sink = CudaSink::new(ctx.clone()).map_err(fail("make the sink"))?;
        let t0 = Instant::now();
        let device = build(sources.clone())
            .build(sink)
            .map_err(fail("build the CUDA loader"))?
            .next()
            .ok_or("no CUDA batch")?
            .map_err(fail("CUDA batch"))?;
        device.wait().map_err(fail("wait for the batch"))?;
        let device_s = t0.elapsed().as_secs_f64();
        let back = device.to_host().map_err(fail("read the batch back"))?;
        let what = if pack { "packed" } else { "padded" };
        if (back.rows, back.width) != (rows, width) {
            return Err(format!(
                "{what}: {}x{}, not {rows}x{width}",
                back.rows, back.width
            ));
        }
        // Field by field, without copying them into one buffer each.
        let differ: Vec<&str> = [
            ("ids", back.ids[..] == host.ids[..]),
            ("lengths", back.lengths[..] == host.lengths[..]),
            (
                "attention_mask",
                back.attention_mask.as_deref() == host.attention_mask.as_deref(),
            ),
            ("labels", back.labels.as_deref() == host.labels.as_deref()),
            (
                "position_ids",
                back.position_ids.as_deref() == host.position_ids.as_deref(),
            ),
            (
                "cu_seqlens",
                back.cu_seqlens.as_deref() == host.cu_seqlens.as_deref(),
            ),
            ("docs", back.docs[..] == host.docs[..]),
        ]
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(name, _)| name)
        .collect();
        if !differ.is_empty() {
            return Err(format!(
                "{what} 2^28-cell batch differs from the host's in {}",
                differ.join(", ")
            ));
        }
        lines.push(format!(
            "{what} {rows}x{width} equal ({} real tokens; host {host_s:.1} s, cuda {device_s:.1} s)",
            host.real_tokens()
        ));
    }
    Ok(lines.join("; "))
}
