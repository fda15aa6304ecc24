//! `shardflow devices`: what this machine offers the device paths, or why each is missing.

use std::process::ExitCode;

use super::{Out, outln};
use crate::Result;

pub fn run() -> Result<ExitCode> {
    let mut out = Out::new();
    wgpu(&mut out)?;
    cuda(&mut out)?;
    out.show()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "wgpu")]
fn wgpu(out: &mut Out) -> Result<()> {
    match crate::gpu::WgpuContext::new() {
        Ok(ctx) => outln!(
            out,
            "wgpu: {} (f64 in shaders: {})",
            ctx.name(),
            ctx.has_f64()
        ),
        Err(e) => outln!(out, "wgpu: none: {e}"),
    }
}

#[cfg(not(feature = "wgpu"))]
fn wgpu(out: &mut Out) -> Result<()> {
    outln!(out, "wgpu: not built (feature wgpu)")
}

#[cfg(feature = "cuda")]
fn cuda(out: &mut Out) -> Result<()> {
    use crate::gpu::cuda::{CudaContext, device_count, nccl_version};
    use crate::gpu::nvrtc::nvrtc_version;
    match device_count() {
        Ok(n) => {
            outln!(out, "cuda: {n} device(s)")?;
            for i in 0..n {
                match CudaContext::new(i) {
                    Ok(c) => outln!(
                        out,
                        "  cuda:{i}: {} (compute {}.{}, {:.1} GiB)",
                        c.name(),
                        c.capability().0,
                        c.capability().1,
                        c.memory() as f64 / (1u64 << 30) as f64
                    )?,
                    Err(e) => outln!(out, "  cuda:{i}: {e}")?,
                }
            }
        }
        Err(e) => outln!(out, "cuda: none: {e}")?,
    }
    match nvrtc_version() {
        Ok((major, minor)) => outln!(out, "nvrtc: {major}.{minor}")?,
        Err(e) => outln!(out, "nvrtc: none: {e}")?,
    }
    match nccl_version() {
        Ok(v) => outln!(out, "nccl: {v}"),
        Err(e) => outln!(out, "nccl: none: {e}"),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda(out: &mut Out) -> Result<()> {
    outln!(out, "cuda, nvrtc, nccl: not built (feature cuda)")
}
