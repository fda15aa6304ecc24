//! The NCCL engine (feature `cuda`): [`Collective`](super::Collective) over NCCL, one rank per
//! GPU, that never hangs.
//!
//! - [`NcclCollective::join_store`]: one process per GPU; rank 0 makes the unique id and the
//!   others read it from the [`FileStore`].
//! - [`NcclCollective::join_devices`]: one process, one rank per visible GPU (one thread each).
//! - [`NcclCollective::join`]: a rank of a communicator whose id the caller hands around.
//!
//! Each rank's communicator, device context and stream live on a thread of their own
//! ([`Served`]): NCCL's communicator must not be used from two threads at once, while the
//! trait's calls come from any thread. Buffers are copied to the device, reduced there by NCCL
//! (u64 counts as `ncclUint64`, so they stay exact), and copied back; an empty buffer makes no
//! NCCL call at all.
//!
//! **Deadlines.** The communicator is non-blocking ([`comm`]): its initialization and every
//! collective are polled, with NCCL's asynchronous errors, up to the deadline
//! ([`NcclCollective::with_deadline`]; by default [`super::COLLECTIVE_TIMEOUT_ENV`] in seconds,
//! else the file store's 300 s). A rank that dies, stalls or never starts makes every other
//! rank fail within the deadline with [`Error::Collective`] naming the operation, the rank, the
//! time waited and NCCL's reason; the communicator is then aborted (`ncclCommAbort`) and every
//! later call fails at once. Dropping the ranks afterwards returns.
//!
//! **The unique id in the store.** The n-th communicator that a rank makes through a store uses
//! the key `nccl_id.n` (each rank counts its communicators in the store, under
//! `nccl_generation.RANK`), and every rank passes a barrier once it has read the id: a
//! re-created engine in the same run never reads an earlier communicator's id.
//!
//! **Finding NCCL.** See [`NCCL_LIB_ENV`] and [`nccl_library`]: `libnccl.so.2` (the PyPI wheel
//! `nvidia-nccl-cu12`, the distributions' packages) or `libnccl.so` on the loader's path, or the
//! file that [`NCCL_LIB_ENV`] names. Every constructor checks that libcuda and libnccl load
//! before touching the device: without them the result is [`Error::Device`] saying which is
//! missing.

mod comm;
mod ffi;

pub use ffi::NCCL_LIB_ENV;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, DriverError};

use self::comm::Comm;
use super::served::{AbortHandle, Engine, Served, collective_deadline};
use super::{FileStore, ReduceOp};
use crate::error::{Error, Result};
use crate::gpu::cuda::{CudaContext, cuda_present};

/// The NCCL library this process loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NcclLibrary {
    /// The file, as the dynamic loader resolved it.
    pub path: PathBuf,
    /// NCCL's version, `major.minor.patch`.
    pub version: String,
}

/// The NCCL library this process loads (see the module docs for where it is looked for). Needs
/// no GPU: `ncclGetVersion` runs without one.
///
/// # Errors
///
/// [`Error::Device`] saying where libnccl was looked for, or that it is older than NCCL 2.14.
pub fn nccl_library() -> Result<NcclLibrary> {
    let nccl = ffi::nccl()?;
    Ok(NcclLibrary {
        path: nccl.path.clone(),
        version: nccl.version(),
    })
}

/// Makes ranks of an NCCL world: each a [`Served`] engine (a
/// [`Collective`](super::Collective)) whose device context, stream and communicator live on its
/// thread, every call bounded by the deadline.
///
/// ```no_run
/// # fn main() -> shardflow::Result<()> {
/// use std::time::Duration;
/// use shardflow::collective::{FileStore, NcclCollective};
/// let store = FileStore::from_env("job-7", 0, 2)?;
/// let nccl = NcclCollective::new()?
///     .with_deadline(Duration::from_secs(120))
///     .join_store(&store, 0)?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct NcclCollective {
    deadline: Duration,
}

impl NcclCollective {
    /// NCCL ranks whose calls wait at most [`collective_deadline`] (the environment's, else the
    /// file store's default).
    ///
    /// # Errors
    ///
    /// [`Error::Environment`] for a bad [`super::COLLECTIVE_TIMEOUT_ENV`].
    pub fn new() -> Result<Self> {
        Ok(NcclCollective {
            deadline: collective_deadline()?,
        })
    }

    /// Waits at most `deadline` for the communicator's initialization and for each call.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The deadline of every call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// A new NCCL unique id (128 bytes) for rank 0 to hand to the others.
    ///
    /// # Errors
    ///
    /// [`Error::Device`] when libcuda or libnccl is missing, or NCCL fails.
    pub fn unique_id() -> Result<Vec<u8>> {
        let nccl = libraries("make an NCCL unique id")?;
        let mut id = ffi::UniqueId { internal: [0; 128] };
        // SAFETY: ncclGetUniqueId writes the 128 bytes of `id`.
        let result = unsafe { (nccl.get_unique_id)(&mut id) };
        if result != ffi::SUCCESS {
            return Err(nccl_error(
                "ncclGetUniqueId",
                nccl.describe(result, std::ptr::null_mut()),
            ));
        }
        Ok(id.internal.iter().map(|&c| c as u8).collect())
    }

    /// Rank `rank` of `world` on GPU `local_rank % device_count`, joining the communicator of
    /// `id` (from [`NcclCollective::unique_id`] on rank 0).
    ///
    /// # Errors
    ///
    /// [`Error::Device`] for missing libraries, a bad id or rank, no device;
    /// [`Error::Collective`] when the other ranks do not join within the deadline, or NCCL
    /// fails (its reason).
    pub fn join(&self, local_rank: usize, rank: usize, world: usize, id: &[u8]) -> Result<Served> {
        let op = "join an NCCL communicator";
        let nccl = libraries(op)?;
        let id: [u8; 128] = id.try_into().map_err(|_| {
            nccl_error(
                op,
                format!("an NCCL unique id has 128 bytes, not {}", id.len()),
            )
        })?;
        if world == 0 || rank >= world || world > i32::MAX as usize {
            return Err(nccl_error(op, format!("rank {rank} of a world of {world}")));
        }
        if std::env::var("NCCL_COMM_BLOCKING").as_deref() == Ok("1") {
            // NCCL then makes the communicator blocking whatever its config says: its
            // initialization and finalization could hang past every deadline.
            return Err(nccl_error(
                op,
                "NCCL_COMM_BLOCKING=1 makes NCCL communicators blocking, which would let a \
                 rank that dies hang the others: unset it (shardflow polls non-blocking \
                 communicators up to its deadline)"
                    .into(),
            ));
        }
        let deadline = self.deadline;
        let started = Instant::now();
        Served::spawn_with_deadline("nccl", deadline, move || {
            let ctx = CudaContext::for_local_rank(local_rank)?;
            let stream = ctx.compute_stream().clone();
            stream
                .context()
                .bind_to_thread()
                .map_err(|e| nccl_error("bind the CUDA context", format!("{e:?}")))?;
            let abort = Arc::new(AtomicBool::new(false));
            // The context's creation counts against the deadline (from `started`): NCCL's own
            // timeout comes before the serving thread's.
            let comm = Comm::init(nccl, &id, (rank, world), deadline, started, abort.clone())?;
            Ok(NcclEngine {
                comm,
                stream,
                _ctx: ctx,
                rank,
                world,
                abort,
            })
        })
    }

    /// This process's rank in a job of processes, one per GPU: rank 0 publishes a unique id
    /// under a key of its own for this communicator (see the module docs), the others wait for
    /// it, and all pass a barrier before joining.
    ///
    /// # Errors
    ///
    /// As [`NcclCollective::join`]; the store's errors and timeouts (naming the ranks that never
    /// arrived); [`Error::Device`] with rank 0's reason when rank 0 could not make the id.
    pub fn join_store(&self, store: &FileStore, local_rank: usize) -> Result<Served> {
        libraries("join an NCCL communicator")?;
        let id = exchange_id(store, Self::unique_id)?;
        self.join(local_rank, store.rank(), store.world(), &id)
    }

    /// One rank per visible GPU in this process (rank r on GPU r), each served by its own
    /// thread; the ranks join together, as NCCL requires.
    ///
    /// # Errors
    ///
    /// As [`NcclCollective::join`] (the first rank's error); [`Error::Device`] when there is
    /// no GPU.
    pub fn join_devices(&self) -> Result<Vec<Served>> {
        libraries("join an NCCL communicator")?;
        let n = crate::gpu::cuda::device_count()?;
        if n == 0 {
            return Err(nccl_error(
                "join an NCCL communicator",
                "no CUDA device".into(),
            ));
        }
        let id = Self::unique_id()?;
        // Every rank's initialization waits until all have joined: start them together.
        std::thread::scope(|s| {
            let joins: Vec<_> = (0..n)
                .map(|r| {
                    let id = &id;
                    s.spawn(move || self.join(r, r, n, id))
                })
                .collect();
            joins
                .into_iter()
                .map(|j| {
                    j.join().unwrap_or_else(|_| {
                        Err(nccl_error(
                            "join an NCCL communicator",
                            "a rank's start panicked".into(),
                        ))
                    })
                })
                .collect()
        })
    }
}

/// The store key of the unique id of the `generation`-th communicator made through a store.
fn id_key(generation: u64) -> String {
    format!("nccl_id.{generation}")
}

/// The store key where `rank` counts the communicators it made through the store.
fn generation_key(rank: usize) -> String {
    format!("nccl_generation.{rank}")
}

/// What rank 0 publishes instead of an id when it cannot make one.
const FAILED: &[u8] = b"failed: ";

/// The unique id of this rank's next communicator through `store`: rank 0 makes it with
/// `make_id` and publishes it under [`id_key`] of this rank's next generation, the others wait
/// for it; then every rank passes a barrier, so none moves on to a later generation (or rank 0
/// to a new id) before all have read this one.
fn exchange_id(store: &FileStore, make_id: impl FnOnce() -> Result<Vec<u8>>) -> Result<Vec<u8>> {
    let counter = generation_key(store.rank());
    let generation = match store.get(&counter)? {
        None => 0,
        Some(bytes) => {
            u64::from_le_bytes(bytes.as_slice().try_into().map_err(|_| Error::Store {
                path: store.dir().join(&counter),
                reason: format!("{} bytes, not a generation number", bytes.len()),
            })?)
        }
    };
    store.set(&counter, &(generation + 1).to_le_bytes())?;
    let key = id_key(generation);
    let id = if store.rank() == 0 {
        match make_id() {
            Ok(id) => {
                store.set(&key, &id)?;
                id
            }
            Err(e) => {
                // The others fail at once with the reason, instead of at their deadline.
                store.set(&key, &[FAILED, e.to_string().as_bytes()].concat())?;
                return Err(e);
            }
        }
    } else {
        let id = store.wait(&key)?;
        if let Some(reason) = id.strip_prefix(FAILED) {
            return Err(nccl_error(
                "join an NCCL communicator",
                format!(
                    "rank 0 could not make the unique id of communicator {generation}: {}",
                    String::from_utf8_lossy(reason)
                ),
            ));
        }
        id
    };
    store.barrier(&format!("{key}.read"))?;
    Ok(id)
}

fn nccl_error(op: &str, reason: String) -> Error {
    Error::Device {
        device: "nccl".into(),
        op: op.into(),
        reason,
    }
}

fn copy_error(what: &str, rank: usize, start: Instant, e: DriverError) -> Error {
    Error::Collective {
        engine: "nccl".into(),
        op: what.into(),
        rank: Some(rank),
        waited: start.elapsed(),
        reason: format!("a copy between host and device failed: {e:?}"),
    }
}

/// libcuda and libnccl, or the error naming the one missing.
fn libraries(op: &str) -> Result<&'static ffi::Nccl> {
    if !cuda_present() {
        return Err(Error::Device {
            device: "cuda".into(),
            op: op.into(),
            reason: "libcuda.so (the NVIDIA driver library) was not found: the NCCL engine needs \
                     an NVIDIA driver and GPU"
                .into(),
        });
    }
    ffi::nccl()
}

/// What lives on the serving thread.
struct NcclEngine {
    /// Dropped first: finalized (or aborted) while the context lives.
    comm: Comm,
    stream: Arc<CudaStream>,
    _ctx: Arc<CudaContext>,
    rank: usize,
    world: usize,
    abort: Arc<AtomicBool>,
}

fn nccl_op(op: ReduceOp) -> std::ffi::c_int {
    match op {
        ReduceOp::Sum => ffi::SUM,
        ReduceOp::Max => ffi::MAX,
        ReduceOp::Min => ffi::MIN,
    }
}

impl NcclEngine {
    /// `buf` reduced in place on the device; no NCCL call for an empty buffer.
    fn reduce<T: cudarc::driver::DeviceRepr + Copy>(
        &mut self,
        buf: &mut [T],
        op: ReduceOp,
        dtype: std::ffi::c_int,
        what: &str,
    ) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let start = Instant::now();
        let stream = self.stream.clone();
        let mut d = stream
            .clone_htod(buf)
            .map_err(|e| copy_error(what, self.rank, start, e))?;
        {
            let (ptr, _written) = d.device_ptr_mut(&stream);
            // SAFETY: `d` holds `buf.len()` elements of `T` (of NCCL type `dtype`) on this
            // rank's device and lives past the call, which waits until the stream has run it.
            unsafe {
                self.comm
                    .all_reduce(what, ptr, ptr, buf.len(), dtype, nccl_op(op), &stream)?
            };
        }
        stream
            .memcpy_dtoh(&d, buf)
            .map_err(|e| copy_error(what, self.rank, start, e))
    }

    /// Every rank's `mine` (all of one length), in rank order.
    fn gather<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + Copy>(
        &mut self,
        mine: &[T],
        dtype: std::ffi::c_int,
        what: &str,
    ) -> Result<Vec<T>> {
        let start = Instant::now();
        let (stream, world, rank) = (self.stream.clone(), self.world, self.rank);
        let fail = |e| copy_error(what, rank, start, e);
        let send = stream.clone_htod(mine).map_err(fail)?;
        let mut all = stream.alloc_zeros::<T>(mine.len() * world).map_err(fail)?;
        {
            let (src, _read) = send.device_ptr(&stream);
            let (dst, _written) = all.device_ptr_mut(&stream);
            // SAFETY: `send` holds `mine.len()` and `all` `mine.len() * world` elements of `T`
            // (NCCL type `dtype`) on this device; both live past the call.
            unsafe {
                self.comm
                    .all_gather(what, src, dst, mine.len(), dtype, &stream)?
            };
        }
        stream.clone_dtoh(&all).map_err(fail)
    }

    /// The lengths first, then every rank's bytes padded to the longest (no second call when
    /// every rank's bytes are empty).
    fn gather_bytes(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let lens = self.gather(&[mine.len() as u64], ffi::UINT64, "ncclAllGather lengths")?;
        let longest = lens.iter().copied().max().unwrap_or(0) as usize;
        if longest == 0 {
            return Ok(vec![Vec::new(); self.world]);
        }
        let mut padded = mine.to_vec();
        padded.resize(longest, 0);
        let all = self.gather(&padded, ffi::UINT8, "ncclAllGather bytes")?;
        Ok(lens
            .iter()
            .enumerate()
            .map(|(r, &n)| all[r * longest..r * longest + n as usize].to_vec())
            .collect())
    }

    /// `out`, after ending the communicator when it is an error: whatever failed (a copy, an
    /// allocation, NCCL), this rank may be a call behind its peers and must make no more.
    fn settle<R>(&mut self, what: &str, out: Result<R>) -> Result<R> {
        if let Err(e) = &out {
            self.comm.give_up(what, e);
        }
        out
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
        let out = self.reduce(buf, op, ffi::FLOAT64, "ncclAllReduce f64");
        self.settle("ncclAllReduce f64", out)
    }

    fn all_reduce_u64(&mut self, buf: &mut [u64], op: ReduceOp) -> Result<()> {
        let out = self.reduce(buf, op, ffi::UINT64, "ncclAllReduce u64");
        self.settle("ncclAllReduce u64", out)
    }

    /// The lengths first, then every rank's bytes padded to the longest (no second call when
    /// every rank's bytes are empty).
    fn all_gather_bytes(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let out = self.gather_bytes(mine);
        self.settle("ncclAllGather", out)
    }

    fn barrier(&mut self) -> Result<()> {
        let mut one = [0u8];
        let out = self.reduce(&mut one, ReduceOp::Sum, ffi::UINT8, "barrier");
        self.settle("barrier", out)
    }

    /// Sets the flag that the communicator's poll answers with `ncclCommAbort`.
    fn abort_handle(&self) -> Option<AbortHandle> {
        let abort = self.abort.clone();
        Some(AbortHandle::new(move |_| {
            abort.store(true, Ordering::Release)
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// Rank 0's id of communicator `g`.
    fn id(g: u8) -> Vec<u8> {
        vec![g; 128]
    }

    #[test]
    fn each_communicator_reads_its_own_id_through_the_store_never_an_earlier_one() {
        assert_eq!(
            (id_key(0), id_key(7)),
            ("nccl_id.0".into(), "nccl_id.7".into())
        );
        let dir = tempfile::tempdir().unwrap();
        let deadline = Duration::from_secs(10);
        let seen: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|r| {
                    let root = dir.path();
                    s.spawn(move || {
                        let store = FileStore::new(root, "ids", r, 2)
                            .unwrap()
                            .with_deadline(deadline);
                        (1..=3u8)
                            .map(|g| {
                                if r == 1 {
                                    // A slow rank: rank 0 has long published the id of this
                                    // communicator, and under a fixed key it might be the last
                                    // one's.
                                    std::thread::sleep(Duration::from_millis(30));
                                }
                                exchange_id(&store, || {
                                    assert_eq!(r, 0, "only rank 0 makes ids");
                                    Ok(id(g))
                                })
                                .unwrap()
                            })
                            .collect()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for ids in seen {
            assert_eq!(ids, [id(1), id(2), id(3)]);
        }
    }

    #[test]
    fn rank_0_that_cannot_make_an_id_fails_the_others_at_once_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let results: Vec<(Result<Vec<u8>>, Duration)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|r| {
                    let root = dir.path();
                    s.spawn(move || {
                        let store = FileStore::new(root, "fails", r, 3)
                            .unwrap()
                            .with_deadline(Duration::from_secs(20));
                        let t = Instant::now();
                        let out = exchange_id(&store, || {
                            Err(nccl_error("ncclGetUniqueId", "no network interface".into()))
                        });
                        (out, t.elapsed())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (r, (out, took)) in results.into_iter().enumerate() {
            let err = out.unwrap_err().to_string();
            assert!(err.contains("no network interface"), "rank {r}: {err}");
            if r > 0 {
                assert!(err.contains("rank 0 could not make the unique id"), "{err}");
            }
            assert!(took < Duration::from_secs(5), "rank {r} waited {took:?}");
        }
    }
}
