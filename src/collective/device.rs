//! In-process worlds whose all-reduces run on a device: the ranks meet as in [`in_process`],
//! and the first rank to find a call complete stacks every rank's buffer on the device and
//! reduces it in one kernel, in rank order; every rank gets that one result. The device part is
//! a [`StackedReduce`]: `shaders/reduce_*.wgsl` on wgpu ([`wgpu_world`]), `kernels/reduce.cu` on
//! CUDA (`cuda_world`).
//!
//! - f64 sums, maxima and minima equal the host engine's bit for bit (the same additions in the
//!   same order; ties keep the earlier rank's value). A device without f64 (a wgpu adapter
//!   without `SHADER_F64`) reduces them on the host, exactly, and [`DeviceRank::f64_on_device`]
//!   says so: f32 would lose integer counts past 2^24.
//! - u64 buffers are exact on every device (wgpu: pairs of u32 with carry).
//!
//! [`in_process`]: super::in_process
//! [`wgpu_world`]: super::wgpu_world

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::world::{WorldRank, in_process, reduce_f64};
use super::{Collective, ReduceOp};
use crate::error::Result;

/// The element type of a stacked reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    /// f64.
    F64,
    /// u64 (sums wrap).
    U64,
}

/// What reduces rank buffers stacked on a device.
pub trait StackedReduce: Send + Sync + 'static {
    /// The device, as reports name it.
    fn device(&self) -> String;

    /// Whether f64 buffers are reduced on the device.
    fn f64_on_device(&self) -> bool;

    /// `parts` (each rank's buffer, `len` elements of `elem`, little-endian bytes) reduced
    /// elementwise by `op` in rank order; the result's bytes.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Device`] naming the device and the operation.
    fn reduce(&self, elem: Elem, parts: &[&[u8]], len: usize, op: ReduceOp) -> Result<Vec<u8>>;
}

/// One rank of an in-process world that reduces on a device.
pub struct DeviceRank<R: StackedReduce> {
    inner: WorldRank,
    shared: Arc<Shared<R>>,
}

impl<R: StackedReduce> std::fmt::Debug for DeviceRank<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceRank")
            .field("rank", &self.inner.rank())
            .field("device", &self.shared.device.device())
            .finish()
    }
}

/// A result, and how many ranks have taken it.
type Done = (Arc<Vec<u8>>, usize);

struct Shared<R> {
    device: R,
    world: usize,
    results: Mutex<HashMap<u64, Done>>,
}

/// A world of `world` ranks in this process whose all-reduces run on `device`.
///
/// # Panics
///
/// If `world` is 0.
pub fn device_world<R: StackedReduce>(
    world: usize,
    timeout: Duration,
    device: R,
) -> Vec<DeviceRank<R>> {
    let shared = Arc::new(Shared {
        device,
        world,
        results: Mutex::new(HashMap::new()),
    });
    in_process(world, timeout)
        .into_iter()
        .map(|inner| DeviceRank {
            inner,
            shared: shared.clone(),
        })
        .collect()
}

impl<R: StackedReduce> DeviceRank<R> {
    /// Whether f64 all-reduces run on the device.
    pub fn f64_on_device(&self) -> bool {
        self.shared.device.f64_on_device()
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

    fn reduce<E: bytemuck::Pod>(
        &self,
        elem: Elem,
        buf: &mut [E],
        call: u64,
        parts: &[Vec<E>],
        op: ReduceOp,
    ) -> Result<()> {
        let result = self.once(call, || {
            let bytes: Vec<&[u8]> = parts.iter().map(|p| bytemuck::cast_slice(p)).collect();
            if buf.is_empty() {
                return Ok(Vec::new());
            }
            self.shared.device.reduce(elem, &bytes, buf.len(), op)
        })?;
        bytemuck::cast_slice_mut::<E, u8>(buf).copy_from_slice(&result);
        Ok(())
    }
}

impl<R: StackedReduce> Collective for DeviceRank<R> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }

    fn world(&self) -> usize {
        self.inner.world()
    }

    fn all_reduce_f64(&self, buf: &mut [f64], op: ReduceOp) -> Result<()> {
        let (call, parts) = self.inner.gather_f64(buf, op)?;
        if !self.f64_on_device() {
            reduce_f64(buf, parts, op);
            return Ok(());
        }
        self.reduce(Elem::F64, buf, call, &parts, op)
    }

    fn all_reduce_u64(&self, buf: &mut [u64], op: ReduceOp) -> Result<()> {
        let (call, parts) = self.inner.gather_u64(buf, op)?;
        self.reduce(Elem::U64, buf, call, &parts, op)
    }

    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.inner.all_gather_bytes(mine)
    }

    fn barrier(&self) -> Result<()> {
        self.inner.barrier()
    }
}

/// The operation code of the reduce kernels (`shaders/reduce_*.wgsl`, `kernels/reduce.cu`).
pub(crate) fn op_code(op: ReduceOp) -> u32 {
    match op {
        ReduceOp::Sum => 0,
        ReduceOp::Max => 1,
        ReduceOp::Min => 2,
    }
}
