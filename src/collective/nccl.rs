//! The NCCL engine (feature `cuda`): [`Collective`] over `cudarc::nccl`, one rank per GPU.
//!
//! `nccl::Comm` holds a raw communicator and is neither `Send` nor `Sync`, while the trait's
//! calls come from any thread: each [`NcclCollective`] owns its communicator, device context and
//! stream on a thread of its own and serves the calls from there (as `shardflow-mpi` does for
//! MPI). Buffers are copied to the device, reduced there by NCCL (u64 counts as `ncclUint64`,
//! so they stay exact), and copied back.
//!
//! - [`NcclCollective::from_store`]: one process per GPU; rank 0 makes the unique id and the
//!   others read it from the [`FileStore`].
//! - [`NcclCollective::from_devices`]: one process, one rank per visible GPU (one thread each).
//!
//! Every constructor checks that libcuda and libnccl can be loaded before touching cudarc (which
//! panics otherwise): without them the result is [`Error::Device`] saying which is missing.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use cudarc::nccl::{Comm, Id, ReduceOp as NcclOp};

use super::{Collective, FileStore, ReduceOp};
use crate::error::{Error, Result};
use crate::gpu::cuda::{CudaContext, cuda_present, nccl_present};

/// A call sent to the NCCL thread, with where its answer goes.
enum Call {
    F64(Vec<f64>, ReduceOp, Sender<Result<Vec<f64>>>),
    U64(Vec<u64>, ReduceOp, Sender<Result<Vec<u64>>>),
    Gather(Vec<u8>, Sender<Result<Vec<Vec<u8>>>>),
    Barrier(Sender<Result<()>>),
}

/// One rank of an NCCL world, served from a thread that owns its communicator.
pub struct NcclCollective {
    rank: usize,
    world: usize,
    calls: Mutex<Option<Sender<Call>>>,
    thread: Option<JoinHandle<()>>,
}

fn nccl_error(op: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device {
        device: "nccl".into(),
        op: op.into(),
        reason: format!("{e:?}"),
    }
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
    pub fn from_rank(local_rank: usize, rank: usize, world: usize, id: &[u8]) -> Result<Self> {
        libraries("join an NCCL communicator")?;
        let id: [u8; 128] = id.try_into().map_err(|_| {
            nccl_error(
                "join an NCCL communicator",
                format!("an NCCL unique id has 128 bytes, not {}", id.len()),
            )
        })?;
        let (ready_tx, ready_rx) = channel::<Result<()>>();
        let (calls_tx, calls_rx) = channel::<Call>();
        let thread = std::thread::Builder::new()
            .name(format!("shardflow-nccl-{rank}"))
            .spawn(move || serve(local_rank, rank, world, id, ready_tx, calls_rx))
            .map_err(|e| nccl_error("start the NCCL thread", e))?;
        ready_rx
            .recv()
            .map_err(|_| nccl_error("join an NCCL communicator", "the NCCL thread ended"))??;
        Ok(NcclCollective {
            rank,
            world,
            calls: Mutex::new(Some(calls_tx)),
            thread: Some(thread),
        })
    }

    /// This process's rank in a job of processes, one per GPU: rank 0 publishes a unique id
    /// under `nccl_id` in `store`, the others wait for it.
    ///
    /// # Errors
    ///
    /// As [`NcclCollective::from_rank`]; the store's errors and timeouts.
    pub fn from_store(store: &FileStore, local_rank: usize) -> Result<Self> {
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
    pub fn from_devices() -> Result<Vec<Self>> {
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

    fn call<R>(&self, op: &str, make: impl FnOnce(Sender<Result<R>>) -> Call) -> Result<R> {
        let (tx, rx) = channel();
        {
            let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            let calls = calls
                .as_ref()
                .ok_or_else(|| nccl_error(op, "the communicator was destroyed"))?;
            calls
                .send(make(tx))
                .map_err(|_| nccl_error(op, "the NCCL thread ended"))?;
        }
        rx.recv()
            .map_err(|_| nccl_error(op, "the NCCL thread ended during the call"))?
    }
}

impl Drop for NcclCollective {
    fn drop(&mut self) {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn nccl_op(op: ReduceOp) -> NcclOp {
    match op {
        ReduceOp::Sum => NcclOp::Sum,
        ReduceOp::Max => NcclOp::Max,
        ReduceOp::Min => NcclOp::Min,
    }
}

/// The NCCL thread: device, stream and communicator live and die here.
fn serve(
    local_rank: usize,
    rank: usize,
    world: usize,
    id: [u8; 128],
    ready: Sender<Result<()>>,
    calls: Receiver<Call>,
) {
    let ctx = match CudaContext::for_local_rank(local_rank) {
        Ok(ctx) => ctx,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let stream = ctx.compute_stream().clone();
    let id = Id::uninit(id.map(|b| b as std::ffi::c_char));
    let comm = match Comm::from_rank(stream.clone(), rank, world, id) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(nccl_error("ncclCommInitRank", e)));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let device = |e: cudarc::driver::DriverError| nccl_error("copy a buffer", e);
    for call in calls {
        match call {
            Call::F64(buf, op, answer) => {
                let out = stream.clone_htod(&buf).map_err(device).and_then(|mut d| {
                    comm.all_reduce_in_place(&mut d, &nccl_op(op))
                        .map_err(|e| nccl_error("ncclAllReduce f64", e))?;
                    stream.clone_dtoh(&d).map_err(device)
                });
                let _ = answer.send(out);
            }
            Call::U64(buf, op, answer) => {
                let out = stream.clone_htod(&buf).map_err(device).and_then(|mut d| {
                    comm.all_reduce_in_place(&mut d, &nccl_op(op))
                        .map_err(|e| nccl_error("ncclAllReduce u64", e))?;
                    stream.clone_dtoh(&d).map_err(device)
                });
                let _ = answer.send(out);
            }
            Call::Gather(mine, answer) => {
                let _ = answer.send(gather(&comm, &stream, world, &mine));
            }
            Call::Barrier(answer) => {
                let out = stream.clone_htod(&[0u8]).map_err(device).and_then(|mut d| {
                    comm.all_reduce_in_place(&mut d, &NcclOp::Sum)
                        .map_err(|e| nccl_error("barrier", e))?;
                    stream.synchronize().map_err(device)
                });
                let _ = answer.send(out);
            }
        }
    }
}

/// Every rank's bytes: the lengths first, then every rank's bytes padded to the longest.
fn gather(
    comm: &Comm,
    stream: &std::sync::Arc<cudarc::driver::CudaStream>,
    world: usize,
    mine: &[u8],
) -> Result<Vec<Vec<u8>>> {
    let device = |e: cudarc::driver::DriverError| nccl_error("copy a buffer", e);
    let len = stream.clone_htod(&[mine.len() as u64]).map_err(device)?;
    let mut lens = stream.alloc_zeros::<u64>(world).map_err(device)?;
    comm.all_gather(&len, &mut lens)
        .map_err(|e| nccl_error("ncclAllGather lengths", e))?;
    let lens = stream.clone_dtoh(&lens).map_err(device)?;
    let longest = lens.iter().copied().max().unwrap_or(0) as usize;
    if longest == 0 {
        return Ok(vec![Vec::new(); world]);
    }
    let mut padded = mine.to_vec();
    padded.resize(longest, 0);
    let send = stream.clone_htod(&padded).map_err(device)?;
    let mut all = stream.alloc_zeros::<u8>(longest * world).map_err(device)?;
    comm.all_gather(&send, &mut all)
        .map_err(|e| nccl_error("ncclAllGather bytes", e))?;
    let all = stream.clone_dtoh(&all).map_err(device)?;
    Ok(lens
        .iter()
        .enumerate()
        .map(|(r, &n)| all[r * longest..r * longest + n as usize].to_vec())
        .collect())
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_f64(&self, buf: &mut [f64], op: ReduceOp) -> Result<()> {
        let out = self.call("all-reduce f64", |tx| Call::F64(buf.to_vec(), op, tx))?;
        buf.copy_from_slice(&out);
        Ok(())
    }

    fn all_reduce_u64(&self, buf: &mut [u64], op: ReduceOp) -> Result<()> {
        let out = self.call("all-reduce u64", |tx| Call::U64(buf.to_vec(), op, tx))?;
        buf.copy_from_slice(&out);
        Ok(())
    }

    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.call("all-gather bytes", |tx| Call::Gather(mine.to_vec(), tx))
    }

    fn barrier(&self) -> Result<()> {
        self.call("barrier", Call::Barrier)
    }
}
