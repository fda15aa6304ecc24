//! The CUDA reduction engine for an in-process world ([`super::device`]): every call's rank
//! buffers are stacked on the device and reduced by `kernels/reduce.cu` in one launch, in rank
//! order, f64 and u64 alike (CUDA has both natively), so the results equal the host engine's bit
//! for bit. For ranks in separate processes or on several GPUs, use [`super::NcclCollective`].

use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};

use super::ReduceOp;
use super::device::{DeviceRank, Elem, StackedReduce, device_world, op_code};
use crate::error::Result;
use crate::gpu::cuda::CudaContext;
use crate::gpu::nvrtc::Kernel;

/// The reductions of a [`cuda_world`] on its device.
pub struct CudaReduce {
    ctx: Arc<CudaContext>,
    f64: CudaFunction,
    u64: CudaFunction,
}

/// One rank of an in-process world that reduces on a CUDA device.
pub type CudaRank = DeviceRank<CudaReduce>;

/// A world of `world` ranks in this process whose all-reduces run on `ctx`'s device.
///
/// # Errors
///
/// [`crate::Error::Kernel`] or [`crate::Error::Device`] when the reduce kernel cannot be
/// compiled or loaded.
///
/// # Panics
///
/// If `world` is 0.
pub fn cuda_world(world: usize, timeout: Duration, ctx: Arc<CudaContext>) -> Result<Vec<CudaRank>> {
    let f64 = ctx.function(Kernel::Reduce, "reduce_f64")?;
    let u64 = ctx.function(Kernel::Reduce, "reduce_u64")?;
    Ok(device_world(world, timeout, CudaReduce { ctx, f64, u64 }))
}

impl StackedReduce for CudaReduce {
    fn device(&self) -> String {
        self.ctx.label()
    }

    fn f64_on_device(&self) -> bool {
        true
    }

    fn reduce(&self, elem: Elem, parts: &[&[u8]], len: usize, op: ReduceOp) -> Result<Vec<u8>> {
        let stream = self.ctx.compute_stream();
        let fail = self.ctx.fail("reduce across ranks");
        // Both element types are 8 bytes: the stacked buffer travels as u64 words.
        let words: Vec<u64> = parts
            .iter()
            .flat_map(|p| bytemuck::pod_collect_to_vec::<u8, u64>(p))
            .collect();
        let stacked = stream.clone_htod(&words).map_err(&fail)?;
        let mut out = stream.alloc_zeros::<u64>(len).map_err(&fail)?;
        let function = match elem {
            Elem::F64 => &self.f64,
            Elem::U64 => &self.u64,
        };
        let (len32, ranks, code) = (len as u32, parts.len() as u32, op_code(op));
        let mut launch = stream.launch_builder(function);
        launch
            .arg(&stacked)
            .arg(&len32)
            .arg(&ranks)
            .arg(&code)
            .arg(&mut out);
        // SAFETY: reduce_f64 and reduce_u64 take (stacked, len, ranks, op, out) as here; the
        // stacked buffer holds ranks * len 8-byte elements and `out` len; the kernel indexes
        // below those.
        unsafe { launch.launch(LaunchConfig::for_num_elems(len32)) }.map_err(&fail)?;
        let back = stream.clone_dtoh(&out).map_err(&fail)?;
        Ok(bytemuck::cast_slice(&back).to_vec())
    }
}
