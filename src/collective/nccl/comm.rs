//! A non-blocking NCCL communicator that never waits without a deadline: [`Comm`].
//!
//! Every NCCL call is made non-blocking (`ncclCommInitRankConfig` with `blocking = 0`) and then
//! polled: `ncclCommGetAsyncError` until the call is no longer `ncclInProgress` (the
//! communicator is ready, or the collective is enqueued), then an event recorded behind the
//! collective on the stream, together with `ncclCommGetAsyncError` (a peer's death or a network
//! error shows there), until the event completes. Polls sleep, 20 µs doubling to 2 ms: never a
//! spinning core, yet a small reduce costs microseconds more, not milliseconds.
//!
//! A call that passes its deadline, an asynchronous error, or the abort flag (set by another
//! thread through the engine's `AbortHandle`) aborts the communicator (`ncclCommAbort`): the
//! call fails with [`Error::Collective`] naming the operation, the rank, the time waited and
//! NCCL's reason, and every later call fails at once.

use std::ffi::c_int;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaEvent, CudaStream};

use super::ffi::{self, IN_PROGRESS, Nccl, NcclResult, RawComm, SUCCESS, UniqueId};
use crate::error::{Error, Result};

/// How long a dropped communicator may take to finalize (at most the deadline) before it is
/// aborted: every call has waited for its work, so there is nothing left to flush.
const FINALIZE: Duration = Duration::from_secs(10);

/// The first and the longest pause between two polls.
const FIRST_POLL: Duration = Duration::from_micros(20);
const LAST_POLL: Duration = Duration::from_millis(2);

/// One rank's communicator, on the thread that made it.
pub(super) struct Comm {
    nccl: &'static Nccl,
    /// Null once aborted or destroyed.
    raw: RawComm,
    rank: usize,
    deadline: Duration,
    /// Set by another thread to abort the call in progress.
    abort: Arc<AtomicBool>,
    /// Why the communicator was aborted: every later call fails with it.
    broken: Option<String>,
}

/// Why a poll stopped without the call finishing.
enum Stop {
    Deadline,
    Aborted,
    Nccl(NcclResult),
    Cuda(String),
}

impl Comm {
    /// Joins the communicator of `id` as `rank` of `world`, waiting for every rank to join
    /// until `deadline` after `start`; each later call may take `deadline`. The device of the
    /// calling thread's current context is this rank's.
    pub(super) fn init(
        nccl: &'static Nccl,
        id: &[u8; 128],
        (rank, world): (usize, usize),
        deadline: Duration,
        start: Instant,
        abort: Arc<AtomicBool>,
    ) -> Result<Self> {
        let unique = UniqueId {
            internal: id.map(|b| b as std::ffi::c_char),
        };
        let mut raw: RawComm = std::ptr::null_mut();
        let mut config = ffi::Config::non_blocking();
        // SAFETY: `raw` and `config` outlive the call (NCCL copies the config); the id is
        // passed by value; rank and world were checked by the caller to fit a c_int.
        let result = unsafe {
            (nccl.comm_init_rank_config)(
                &mut raw,
                world as c_int,
                unique,
                rank as c_int,
                &mut config,
            )
        };
        let mut comm = Comm {
            nccl,
            raw,
            rank,
            deadline,
            abort,
            broken: None,
        };
        let op = "ncclCommInitRankConfig";
        if result != SUCCESS && result != IN_PROGRESS {
            return Err(comm.fail(op, start, Stop::Nccl(result)));
        }
        if comm.raw.is_null() {
            return Err(comm.error(op, start, "NCCL gave no communicator".into()));
        }
        comm.poll(start, None)
            .map_err(|stop| comm.fail(op, start, stop))?;
        Ok(comm)
    }

    /// Reduces `count` elements of `dtype` at `send` into `recv` (the same pointer for in
    /// place) with `op`, on `stream`, and waits until the stream has done it.
    ///
    /// # Safety
    ///
    /// `send` and `recv` are device buffers of at least `count` elements of `dtype`, on this
    /// communicator's device, that stay allocated until this returns; `stream` belongs to that
    /// device's context.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn all_reduce(
        &mut self,
        what: &str,
        send: CUdeviceptr,
        recv: CUdeviceptr,
        count: usize,
        dtype: c_int,
        op: c_int,
        stream: &Arc<CudaStream>,
    ) -> Result<()> {
        let (nccl, raw) = (self.nccl, self.usable(what)?);
        // SAFETY: as the caller promises; `raw` is a live communicator.
        self.collective(what, stream, || unsafe {
            (nccl.all_reduce)(
                ffi::buffer(send),
                ffi::buffer(recv),
                count,
                dtype,
                op,
                raw,
                stream.cu_stream(),
            )
        })
    }

    /// Gathers `count` elements of `dtype` at `send` from every rank into `recv`, in rank
    /// order, on `stream`, and waits until the stream has done it.
    ///
    /// # Safety
    ///
    /// `send` holds at least `count` and `recv` at least `count * world` elements of `dtype`,
    /// as for [`Comm::all_reduce`].
    pub(super) unsafe fn all_gather(
        &mut self,
        what: &str,
        send: CUdeviceptr,
        recv: CUdeviceptr,
        count: usize,
        dtype: c_int,
        stream: &Arc<CudaStream>,
    ) -> Result<()> {
        let (nccl, raw) = (self.nccl, self.usable(what)?);
        // SAFETY: as the caller promises; `raw` is a live communicator.
        self.collective(what, stream, || unsafe {
            (nccl.all_gather)(
                ffi::buffer(send),
                ffi::buffer(recv),
                count,
                dtype,
                raw,
                stream.cu_stream(),
            )
        })
    }

    /// The live communicator, or the error that aborted it.
    fn usable(&self, what: &str) -> Result<RawComm> {
        match &self.broken {
            Some(why) => Err(self.error(
                what,
                Instant::now(),
                format!("the communicator was aborted earlier ({why})"),
            )),
            None => Ok(self.raw),
        }
    }

    /// Enqueues a collective with `call`, waits until it is enqueued, then until `stream` has
    /// run it.
    fn collective(
        &mut self,
        what: &str,
        stream: &Arc<CudaStream>,
        call: impl FnOnce() -> NcclResult,
    ) -> Result<()> {
        let start = Instant::now();
        if let Err(e) = stream.context().bind_to_thread() {
            // This rank would miss a call its peers make: end the communicator, never run out
            // of step.
            return Err(self.fail(
                what,
                start,
                Stop::Cuda(format!("cannot bind the CUDA context: {e:?}")),
            ));
        }
        let result = call();
        if result != SUCCESS && result != IN_PROGRESS {
            return Err(self.fail(what, start, Stop::Nccl(result)));
        }
        // Enqueued once the communicator is no longer in progress.
        self.poll(start, None)
            .map_err(|stop| self.fail(what, start, stop))?;
        let event = stream
            .record_event(None)
            .map_err(|e| self.fail(what, start, Stop::Cuda(format!("{e:?}"))))?;
        self.poll(start, Some(&event))
            .map_err(|stop| self.fail(what, start, stop))
    }

    /// Polls until the communicator is not in progress and `event` (if any) has completed.
    fn poll(&self, start: Instant, event: Option<&CudaEvent>) -> std::result::Result<(), Stop> {
        self.poll_until(start, self.deadline, event)
    }

    /// [`Comm::poll`] with a deadline of its own.
    fn poll_until(
        &self,
        start: Instant,
        deadline: Duration,
        event: Option<&CudaEvent>,
    ) -> std::result::Result<(), Stop> {
        let mut pause = FIRST_POLL;
        loop {
            if self.abort.load(Ordering::Acquire) {
                return Err(Stop::Aborted);
            }
            let mut state = SUCCESS;
            // SAFETY: `raw` is a live communicator (never polled after an abort); `state` is
            // one int.
            let result = unsafe { (self.nccl.comm_get_async_error)(self.raw, &mut state) };
            if result != SUCCESS {
                return Err(Stop::Nccl(result));
            }
            match state {
                IN_PROGRESS => {}
                SUCCESS => match event.map(CudaEvent::try_is_complete) {
                    None | Some(Ok(true)) => return Ok(()),
                    Some(Ok(false)) => {}
                    Some(Err(e)) => return Err(Stop::Cuda(format!("{e:?}"))),
                },
                error => return Err(Stop::Nccl(error)),
            }
            let waited = start.elapsed();
            if waited >= deadline {
                return Err(Stop::Deadline);
            }
            std::thread::sleep(pause.min(deadline - waited));
            pause = (pause * 2).min(LAST_POLL);
        }
    }

    /// Aborts the communicator and gives the error for `what`, which stopped for `stop`.
    fn fail(&mut self, what: &str, start: Instant, stop: Stop) -> Error {
        let reason = match stop {
            Stop::Deadline => format!(
                "not done within the deadline of {:.1} s: a rank stopped, died or is late, or \
                 the ranks do not make the same calls",
                self.deadline.as_secs_f64()
            ),
            Stop::Aborted => "aborted from another thread (the caller gave up waiting)".into(),
            Stop::Nccl(result) => format!("NCCL reports {}", self.nccl.describe(result, self.raw)),
            Stop::Cuda(e) => format!("CUDA reports {e}"),
        };
        self.abort();
        let reason = format!("{reason}; the communicator was aborted");
        self.broken = Some(format!(
            "{what} failed after {:.3} s: {reason}",
            start.elapsed().as_secs_f64()
        ));
        self.error(what, start, reason)
    }

    fn error(&self, what: &str, start: Instant, reason: String) -> Error {
        Error::Collective {
            engine: "nccl".into(),
            op: what.into(),
            rank: Some(self.rank),
            waited: start.elapsed(),
            reason,
        }
    }

    /// Aborts the communicator after an error outside NCCL in `what` (a copy or an allocation
    /// around a collective): this rank may have skipped a call its peers make, so it must
    /// never make another one; later calls fail at once, saying why.
    pub(super) fn give_up(&mut self, what: &str, err: &Error) {
        if self.broken.is_none() {
            self.abort();
            self.broken = Some(format!(
                "{what} failed: {err}; the communicator was aborted"
            ));
        }
    }

    /// `ncclCommAbort`: ends the communicator's kernels and frees it, whatever the peers do.
    fn abort(&mut self) {
        if self.raw.is_null() {
            return;
        }
        // SAFETY: `raw` is a live communicator, aborted once: it is nulled here.
        let result = unsafe { (self.nccl.comm_abort)(self.raw) };
        if result != SUCCESS {
            tracing::warn!(rank = self.rank, result, "ncclCommAbort failed");
        }
        self.raw = std::ptr::null_mut();
    }
}

impl Drop for Comm {
    /// A healthy communicator is finalized (polled up to [`FINALIZE`]) and destroyed; one that
    /// does not finalize in time is aborted.
    fn drop(&mut self) {
        if self.raw.is_null() {
            return;
        }
        let start = Instant::now();
        // SAFETY: `raw` is a live communicator, finalized once.
        let result = unsafe { (self.nccl.comm_finalize)(self.raw) };
        let finalized = (result == SUCCESS || result == IN_PROGRESS)
            && self
                .poll_until(start, FINALIZE.min(self.deadline), None)
                .is_ok();
        if finalized {
            // SAFETY: finalized, destroyed once, then nulled.
            unsafe { (self.nccl.comm_destroy)(self.raw) };
            self.raw = std::ptr::null_mut();
        } else {
            tracing::warn!(
                rank = self.rank,
                "ncclCommFinalize did not finish; aborting"
            );
            self.abort();
        }
    }
}
