//! The wgpu reduction engine for an in-process world ([`super::device`]): every call's rank
//! buffers are stacked on the device and reduced in one dispatch of `shaders/reduce_f64.wgsl`
//! or `shaders/reduce_u64.wgsl` (u64 as pairs of u32 with carry, exact on every adapter; f64
//! only where the adapter has `SHADER_F64`).

use std::sync::Arc;
use std::time::Duration;

use super::ReduceOp;
use super::device::{DeviceRank, Elem, StackedReduce, device_world, op_code};
use crate::error::Result;
use crate::gpu::{Shader, WgpuContext};

/// The reductions of a [`wgpu_world`] on its device.
pub struct WgpuReduce {
    ctx: Arc<WgpuContext>,
    f64_on_device: bool,
}

/// One rank of an in-process world that reduces on a wgpu device.
pub type WgpuRank = DeviceRank<WgpuReduce>;

/// A world of `world` ranks in this process whose all-reduces run on `ctx`'s device.
///
/// # Errors
///
/// [`crate::Error::Device`] when the reduction shaders do not compile.
///
/// # Panics
///
/// If `world` is 0.
pub fn wgpu_world(world: usize, timeout: Duration, ctx: Arc<WgpuContext>) -> Result<Vec<WgpuRank>> {
    ctx.pipeline(Shader::ReduceU64)?;
    let f64_on_device = ctx.has_f64();
    if f64_on_device {
        ctx.pipeline(Shader::ReduceF64)?;
    }
    Ok(device_world(
        world,
        timeout,
        WgpuReduce { ctx, f64_on_device },
    ))
}

impl StackedReduce for WgpuReduce {
    fn device(&self) -> String {
        self.ctx.name().to_string()
    }

    fn f64_on_device(&self) -> bool {
        self.f64_on_device
    }

    fn reduce(&self, elem: Elem, parts: &[&[u8]], len: usize, op: ReduceOp) -> Result<Vec<u8>> {
        let ctx = &self.ctx;
        // Little-endian u64 is (low u32, high u32): the u64 shader's vec2<u32> layout.
        let shader = match elem {
            Elem::F64 => Shader::ReduceF64,
            Elem::U64 => Shader::ReduceU64,
        };
        let bytes = parts.first().map_or(0, |p| p.len());
        use wgpu::BufferUsages as U;
        let stacked = ctx.buffer(
            "stacked ranks",
            (bytes * parts.len()) as u64,
            U::STORAGE | U::COPY_DST,
        );
        let out = ctx.buffer("reduced", bytes as u64, U::STORAGE | U::COPY_SRC);
        let params = ctx.buffer("reduce params", 16, U::UNIFORM | U::COPY_DST);
        let bind = ctx.bind(shader, &[&params, &stacked, &out])?;
        ctx.scoped("reduce across ranks", || {
            for (r, part) in parts.iter().enumerate() {
                ctx.queue().write_buffer(&stacked, (r * bytes) as u64, part);
            }
            let p = [len as u32, parts.len() as u32, op_code(op), 0];
            ctx.queue()
                .write_buffer(&params, 0, bytemuck::cast_slice(&p));
            ctx.dispatch(shader, &bind, len.div_ceil(64) as u32)
        })??;
        ctx.read(&out, 0, bytes as u64)
    }
}
