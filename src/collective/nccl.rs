//! The NCCL engine (feature `cuda`): [`Collective`] over `cudarc::nccl`, one rank per GPU.
//!
//! `nccl::Comm` holds a raw communicator and is neither `Send` nor `Sync`, while the trait's
//! calls come from any thread: each [`NcclCollective`] keeps its communicator, device context and
//! stream on a thread of its own ([`Served`]), as `shardflow-mpi` does for MPI. Buffers are copied to the device, reduced there by NCCL (u64 counts as `ncclUint64`,
//! so they stay exact), and copied back.
//!
//! - [`NcclCollective::from_store`]: one process per GPU; rank 0 makes the unique id and the
//!   others read it from the [`FileStore`].
//! - [`NcclCollective::from_devices`]: one process, one rank per visible GPU (one thread each).
//!
//! Every constructor checks that libcuda and libnccl can be loaded before touching cudarc (which
//! panics otherwise): without them the result is [`Error::Device`] saying which is missing.

use std::sync::Arc;

use cudarc::driver::{CudaStream, DriverError};
use cudarc::nccl::{Comm, Id, ReduceOp as NcclOp};

use super::served::{Engine, Served};
use super::{FileStore, ReduceOp};
use crate::error::{Error, Result};
use crate::gpu::cuda::{CudaContext, cuda_present, nccl_present};

/// Makes ranks of an NCCL world: each a [`Served`] engine (a [`Collective`](super::Collective)) whose device
/// context, stream and communicator live on its thread.
pub struct NcclCollective;

fn nccl_error(op: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device {
        device: "nccl".into(),
        op: op.into(),
        reason: format!("{e:?}"),
    }
}

fn copy_error(e: DriverError) -> Error {
    nccl_error("copy a buffer", e)
}

/// libcuda and libnccl, or the error naming the one missing.
fn libraries(op: &str) -> Result<()> {
    if !cuda_present() {
        return Err(Error::Device {
            device: "cuda".into(),
            op: op.into(),
            reason: "libcuda.so (the NVIDIA driver library) was not found: the NCCL engine needs \
                     an NVIDIA driver and GPU"
                .into(),
        });
    }
    if !nccl_present() {
        return Err(crate::gpu::cuda::nccl_version().unwrap_err());
    }
    Ok(())
}

impl NcclCollective {
    /// A new NCCL unique id (128 bytes) for rank 0 to hand to the others.
    ///
    /// # Errors
    ///
    /// [`Error::Device`] when libcuda or libnccl is missing, or NCCL fails.
    pub fn unique_id() -> Result<Vec<u8>> {
        libraries("make an NCCL unique id")?;
        let id = Id::new().map_err(|e| nccl_error("ncclGetUniqueId", e))?;
        Ok(id.internal().iter().map(|&c| c as u8).collect())
    }

    /// Rank `rank` of `world` on GPU `local_rank % device_count`, joining the communicator of
    /// `id` (from [`NcclCollective::unique_id`] on rank 0).
    ///
    /// # Errors
    ///
    /// [`Error::Device`] for missing libraries, a bad id, or NCCL's reason.
    pub fn from_rank(local_rank: usize, rank: usize, world: usize, id: &[u8]) -> Result<Served> {
        libraries("join an NCCL communicator")?;
        let id: [u8; 128] = id.try_into().map_err(|_| {
            nccl_error(
                "join an NCCL communicator",
                format!("an NCCL unique id has 128 bytes, not {}", id.len()),
            )
        })?;
        Served::spawn(&format!("nccl rank {rank}"), move || {
            let ctx = CudaContext::for_local_rank(local_rank)?;
            let stream = ctx.compute_stream().clone();
            let id = Id::uninit(id.map(|b| b as std::ffi::c_char));
            let comm = Comm::from_rank(stream.clone(), rank, world, id)
                .map_err(|e| nccl_error("ncclCommInitRank", e))?;
            Ok(NcclEngine {
                _ctx: ctx,
                stream,
                comm,
                rank,
                world,
            })
        })
    }

    /// This process's rank in a job of processes, one per GPU: rank 0 publishes a unique id
    /// under `nccl_id` in `store`, the others wait for it.
    ///
    /// # Errors
    ///
    /// As [`NcclCollective::from_rank`]; the store's errors and timeouts.
    pub fn from_store(store: &FileStore, local_rank: usize) -> Result<Served> {
        libraries("join an NCCL communicator")?;
        let id = if store.rank() == 0 {
            let id = Self::unique_id()?;
            store.set("nccl_id", &id)?;
            id
        } else {
            store.wait("nccl_id")?
        };
        Self::from_rank(local_rank, store.rank(), store.world(), &id)
    }

    /// One rank per visible GPU in this process (rank r on GPU r), each served by its own
    /// thread; the ranks join together, as NCCL requires.
    ///
    /// # Errors
    ///
    /// As [`NcclCollective::from_rank`]; [`Error::Device`] when there is no GPU.
    pub fn from_devices() -> Result<Vec<Served>> {
        libraries("join an NCCL communicator")?;
        let n = crate::gpu::cuda::device_count()?;
        if n == 0 {
            return Err(nccl_error("join an NCCL communicator", "no CUDA device"));
        }
        let id = Self::unique_id()?;
        // Every rank's initialization blocks until all have joined: start them together.
        std::thread::scope(|s| {
            let joins: Vec<_> = (0..n)
                .map(|r| {
                    let id = &id;
                    s.spawn(move || Self::from_rank(r, r, n, id))
                })
                .collect();
            joins
                .into_iter()
                .map(|j| j.join().expect("an NCCL rank's start panicked"))
                .collect()
        })
    }
}

/// What lives on the serving thread.
struct NcclEngine {
    _ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    comm: Comm,
    rank: usize,
    world: usize,
}

fn nccl_op(op: ReduceOp) -> NcclOp {
    match op {
        ReduceOp::Sum => NcclOp::Sum,
        ReduceOp::Max => NcclOp::Max,
        ReduceOp::Min => NcclOp::Min,
    }
}

impl NcclEngine {
    /// `buf` reduced in place on the device.
    fn reduce<T>(&self, buf: &mut [T], op: ReduceOp, what: &str) -> Result<()>
    where
        T: cudarc::driver::DeviceRepr
            + cudarc::driver::ValidAsZeroBits
            + cudarc::nccl::NcclType
            + Copy,
    {
        let mut d = self.stream.clone_htod(buf).map_err(copy_error)?;
        self.comm
            .all_reduce_in_place(&mut d, &nccl_op(op))
            .map_err(|e| nccl_error(what, e))?;
        let out = self.stream.clone_dtoh(&d).map_err(copy_error)?;
        buf.copy_from_slice(&out);
        Ok(())
    }
}

impl Engine for NcclEngine {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_f64(&mut self, buf: &mut [f64], op: ReduceOp) -> Result<()> {
        self.reduce(buf, op, "ncclAllReduce f64")
    }

    fn all_reduce_u64(&mut self, buf: &mut [u64], op: ReduceOp) -> Result<()> {
        self.reduce(buf, op, "ncclAllReduce u64")
    }

    /// The lengths first, then every rank's bytes padded to the longest.
    fn all_gather_bytes(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let (stream, world) = (&self.stream, self.world);
        let len = stream
            .clone_htod(&[mine.len() as u64])
            .map_err(copy_error)?;
        let mut lens = stream.alloc_zeros::<u64>(world).map_err(copy_error)?;
        self.comm
            .all_gather(&len, &mut lens)
            .map_err(|e| nccl_error("ncclAllGather lengths", e))?;
        let lens = stream.clone_dtoh(&lens).map_err(copy_error)?;
        let longest = lens.iter().copied().max().unwrap_or(0) as usize;
        if longest == 0 {
            return Ok(vec![Vec::new(); world]);
        }
        let mut padded = mine.to_vec();
        padded.resize(longest, 0);
        let send = stream.clone_htod(&padded).map_err(copy_error)?;
        let mut all = stream
            .alloc_zeros::<u8>(longest * world)
            .map_err(copy_error)?;
        self.comm
            .all_gather(&send, &mut all)
            .map_err(|e| nccl_error("ncclAllGather bytes", e))?;
        let all = stream.clone_dtoh(&all).map_err(copy_error)?;
        Ok(lens
            .iter()
            .enumerate()
            .map(|(r, &n)| all[r * longest..r * longest + n as usize].to_vec())
            .collect())
    }

    fn barrier(&mut self) -> Result<()> {
        let mut one = [0u8];
        self.reduce(&mut one, ReduceOp::Sum, "barrier")?;
        self.stream.synchronize().map_err(copy_error)
    }
}
