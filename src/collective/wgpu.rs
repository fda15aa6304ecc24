//! The wgpu reduction engine for an in-process world: the ranks meet as in [`in_process`], and
//! the first rank to find a call complete stacks every rank's buffer on the device and reduces
//! it in one dispatch (`shaders/reduce_f64.wgsl`, `shaders/reduce_u64.wgsl`), in rank order;
//! every rank gets that one result.
//!
//! - f64 buffers need `SHADER_F64`; the sums, maxima and minima then equal the host engine's bit
//!   for bit (the same additions in the same order; ties keep the earlier rank's value). On an
//!   adapter without f64 they are reduced on the host, exactly, and [`WgpuRank::f64_on_device`]
//!   says so: f32 would lose integer counts past 2^24.
//! - u64 buffers travel as pairs of u32 with carry, exact on every adapter.
//!
//! [`in_process`]: super::in_process

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::world::{WorldRank, in_process, reduce_f64};
use super::{Collective, ReduceOp};
use crate::error::Result;
use crate::gpu::{Shader, WgpuContext};

/// One rank of an in-process world that reduces on a wgpu device. Create the world with
/// [`wgpu_world`].
pub struct WgpuRank {
    inner: WorldRank,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WgpuRank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuRank")
            .field("rank", &self.inner.rank())
            .field("device", &self.shared.ctx.name())
            .finish()
    }
}

/// A result, and how many ranks have taken it.
type Done = (Arc<Vec<u8>>, usize);

struct Shared {
    ctx: Arc<WgpuContext>,
    f64_on_device: bool,
    world: usize,
    results: Mutex<HashMap<u64, Done>>,
}

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
    let shared = Arc::new(Shared {
        ctx,
        f64_on_device,
        world,
        results: Mutex::new(HashMap::new()),
    });
    Ok(in_process(world, timeout)
        .into_iter()
        .map(|inner| WgpuRank {
            inner,
            shared: shared.clone(),
        })
        .collect())
}

impl WgpuRank {
    /// Whether f64 all-reduces run on the device (the adapter has `SHADER_F64`).
    pub fn f64_on_device(&self) -> bool {
        self.shared.f64_on_device
    }

    /// The result of call `call`: computed by the first rank that gets here, taken by the rest.
    fn once(&self, call: u64, compute: impl FnOnce() -> Result<Vec<u8>>) -> Result<Arc<Vec<u8>>> {
        let mut results = self
            .shared
            .results
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let result = match results.get_mut(&call) {
            Some((result, taken)) => {
                *taken += 1;
                result.clone()
            }
            None => {
                let result = Arc::new(compute()?);
                results.insert(call, (result.clone(), 1));
                result
            }
        };
        if results
            .get(&call)
            .is_some_and(|(_, taken)| *taken == self.shared.world)
        {
            results.remove(&call);
        }
        Ok(result)
    }

    /// Stacks `parts` (each `len` elements of `size` bytes) on the device and runs `shader`.
    fn reduce_on_device(
        &self,
        shader: Shader,
        parts: &[&[u8]],
        len: usize,
        op: ReduceOp,
    ) -> Result<Vec<u8>> {
        let ctx = &self.shared.ctx;
        let bytes = parts.first().map_or(0, |p| p.len());
        if len == 0 {
            return Ok(Vec::new());
        }
        use wgpu::BufferUsages as U;
        let stacked = ctx.buffer(
            "stacked ranks",
            (bytes * parts.len()) as u64,
            U::STORAGE | U::COPY_DST,
        );
        let out = ctx.buffer("reduced", bytes as u64, U::STORAGE | U::COPY_SRC);
        let params = ctx.buffer("reduce params", 16, U::UNIFORM | U::COPY_DST);
        let code = match op {
            ReduceOp::Sum => 0u32,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        };
        let bind = ctx.bind(shader, &[&params, &stacked, &out])?;
        ctx.scoped("reduce across ranks", || {
            for (r, part) in parts.iter().enumerate() {
                ctx.queue().write_buffer(&stacked, (r * bytes) as u64, part);
            }
            let p = [len as u32, parts.len() as u32, code, 0];
            ctx.queue()
                .write_buffer(&params, 0, bytemuck::cast_slice(&p));
            ctx.dispatch(shader, &bind, len.div_ceil(64) as u32)
        })??;
        ctx.read(&out, 0, bytes as u64)
    }
}

impl Collective for WgpuRank {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn world(&self) -> usize {
        self.inner.world()
    }

    fn all_reduce_f64(&self, buf: &mut [f64], op: ReduceOp) -> Result<()> {
        let (call, parts) = self.inner.gather_f64(buf, op)?;
        if !self.shared.f64_on_device {
            reduce_f64(buf, parts, op);
            return Ok(());
        }
        let result = self.once(call, || {
            let bytes: Vec<&[u8]> = parts.iter().map(|p| bytemuck::cast_slice(p)).collect();
            self.reduce_on_device(Shader::ReduceF64, &bytes, buf.len(), op)
        })?;
        bytemuck::cast_slice_mut::<f64, u8>(buf).copy_from_slice(&result);
        Ok(())
    }

    fn all_reduce_u64(&self, buf: &mut [u64], op: ReduceOp) -> Result<()> {
        let (call, parts) = self.inner.gather_u64(buf, op)?;
        // Little-endian u64 is (low u32, high u32): the shader's vec2<u32> layout.
        let result = self.once(call, || {
            let bytes: Vec<&[u8]> = parts.iter().map(|p| bytemuck::cast_slice(p)).collect();
            self.reduce_on_device(Shader::ReduceU64, &bytes, buf.len(), op)
        })?;
        bytemuck::cast_slice_mut::<u64, u8>(buf).copy_from_slice(&result);
        Ok(())
    }

    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.inner.all_gather_bytes(mine)
    }

    fn barrier(&self) -> Result<()> {
        self.inner.barrier()
    }
}
