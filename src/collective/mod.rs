//! Collectives across ranks: the [`Collective`] trait and its host engines.
//!
//! - [`Solo`]: a world of one.
//! - [`in_process`]: a world of N ranks in one process, one per thread, reducing in a fixed rank
//!   order so every rank gets bitwise the same result; a rank that does not arrive in time is an
//!   error naming it, never a hang.
//! - [`Counting`]: wraps any engine and counts its calls and bytes (for tests and benchmarks).
//! - `NcclCollective` (feature `cuda`): NCCL (libnccl loaded at run time, found as
//!   `libnccl.so.2`), one rank per GPU, the communicator non-blocking and owned by a thread of its
//!   own; every call bounded by a deadline, aborted past it.
//! - [`Served`]: an [`Engine`] whose handles cannot cross threads (MPI, NCCL), served from a
//!   thread of its own as a [`Collective`]; every call waits at most a deadline
//!   ([`COLLECTIVE_TIMEOUT_ENV`]), a timed-out engine is aborted and poisoned, and dropping it
//!   never hangs.
//! - [`FileStore`]: a key-value rendezvous for separate processes in a shared directory (atomic,
//!   checksummed records; polls with backoff up to a deadline; counters and barriers), joined
//!   through a [`Rendezvous`]: rank 0 opens each run as a fresh generation with a nonce and
//!   admits every rank by a token it drew, so an earlier run's records are never read as this
//!   run's; a long wait reports the ranks not yet arrived.
//! - [`RunSpec`], [`agree`]: rank 0 publishes the run spec (canonical config, its hash, a run
//!   name derived from it); every rank checks that all ranks hold the same config.
//! - [`World::from_env`]: rank, world size and local rank as torchrun, SLURM or Open MPI set
//!   them; [`JobId::from_env`]: the job id that the launcher gives.

mod env;
mod join;
#[cfg(feature = "cuda")]
mod nccl;
mod served;
mod spec;
mod store;
mod wait;
mod world;

pub use env::{JOB_ENV, JobId, World};
pub use join::{Rendezvous, STORE_TIMEOUT_ENV};
#[cfg(feature = "cuda")]
pub use nccl::{NCCL_LIB_ENV, NcclCollective, NcclLibrary, nccl_library};
pub use served::{AbortHandle, COLLECTIVE_TIMEOUT_ENV, Engine, Served, collective_deadline};
pub use spec::*;
pub use store::*;
pub use wait::StoreWait;
pub use world::{WorldRank, in_process};

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Result;

/// A reduction operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ReduceOp {
    /// Elementwise sum.
    Sum,
    /// Elementwise maximum.
    Max,
    /// Elementwise minimum.
    Min,
}

/// Rank, world size, all-reduce, all-gather and barrier, as NCCL and MPI offer them.
///
/// Every rank must make the same calls in the same order with buffers of the same length.
pub trait Collective: Send + Sync {
    /// This rank, in `0..world()`.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn world(&self) -> usize;

    /// Reduces `buf` elementwise over all ranks, in place.
    ///
    /// # Errors
    ///
    /// [`crate::Error::RankTimeout`], [`crate::Error::CollectiveMismatch`], or an engine error.
    fn all_reduce_f64(&self, buf: &mut [f64], op: ReduceOp) -> Result<()>;

    /// Reduces `buf` elementwise over all ranks, in place (sums wrap on overflow).
    ///
    /// # Errors
    ///
    /// As [`Collective::all_reduce_f64`].
    fn all_reduce_u64(&self, buf: &mut [u64], op: ReduceOp) -> Result<()>;

    /// Every rank's bytes, in rank order.
    ///
    /// # Errors
    ///
    /// As [`Collective::all_reduce_f64`].
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>>;

    /// Returns once every rank has called it.
    ///
    /// # Errors
    ///
    /// As [`Collective::all_reduce_f64`].
    fn barrier(&self) -> Result<()>;
}

/// Every rank's `mine`, in rank order, exchanged as JSON through
/// [`Collective::all_gather_bytes`]: for the small, rare exchanges of names and counts.
///
/// # Errors
///
/// The collective's errors; [`crate::Error::CollectiveMismatch`] naming `what` and the rank
/// whose bytes do not parse.
pub fn all_gather_json<T: serde::Serialize + serde::de::DeserializeOwned>(
    collective: &dyn Collective,
    mine: &T,
    what: &str,
) -> Result<Vec<T>> {
    let bytes = serde_json::to_vec(mine).expect("the exchanged values serialize");
    collective
        .all_gather_bytes(&bytes)?
        .iter()
        .enumerate()
        .map(|(rank, theirs)| {
            serde_json::from_slice(theirs).map_err(|e| crate::Error::CollectiveMismatch {
                op: what.to_string(),
                call: 0,
                reason: format!("rank {rank} sent unreadable {what}: {e}"),
            })
        })
        .collect()
}

/// A world of one: every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_f64(&self, _: &mut [f64], _: ReduceOp) -> Result<()> {
        Ok(())
    }
    fn all_reduce_u64(&self, _: &mut [u64], _: ReduceOp) -> Result<()> {
        Ok(())
    }
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![mine.to_vec()])
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// Calls and bytes counted by [`Counting`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CollectiveCounts {
    /// All-reduce calls.
    pub all_reduces: u64,
    /// All-gather calls.
    pub all_gathers: u64,
    /// Barrier calls.
    pub barriers: u64,
    /// Bytes this rank contributed.
    pub bytes: u64,
}

impl CollectiveCounts {
    /// All collective calls.
    pub fn total(&self) -> u64 {
        self.all_reduces + self.all_gathers + self.barriers
    }
}

/// Wraps a collective and counts what passes through it.
#[derive(Debug, Default)]
pub struct Counting<C> {
    inner: C,
    all_reduces: AtomicU64,
    all_gathers: AtomicU64,
    barriers: AtomicU64,
    bytes: AtomicU64,
}

impl<C: Collective> Counting<C> {
    /// Counts the calls made through `inner`.
    pub fn new(inner: C) -> Self {
        Counting {
            inner,
            all_reduces: AtomicU64::new(0),
            all_gathers: AtomicU64::new(0),
            barriers: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> CollectiveCounts {
        CollectiveCounts {
            all_reduces: self.all_reduces.load(Ordering::Relaxed),
            all_gathers: self.all_gathers.load(Ordering::Relaxed),
            barriers: self.barriers.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    fn count(&self, counter: &AtomicU64, bytes: usize) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

impl<C: Collective> Collective for Counting<C> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn world(&self) -> usize {
        self.inner.world()
    }
    fn all_reduce_f64(&self, buf: &mut [f64], op: ReduceOp) -> Result<()> {
        self.count(&self.all_reduces, size_of_val(buf));
        self.inner.all_reduce_f64(buf, op)
    }
    fn all_reduce_u64(&self, buf: &mut [u64], op: ReduceOp) -> Result<()> {
        self.count(&self.all_reduces, size_of_val(buf));
        self.inner.all_reduce_u64(buf, op)
    }
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.count(&self.all_gathers, mine.len());
        self.inner.all_gather_bytes(mine)
    }
    fn barrier(&self) -> Result<()> {
        self.count(&self.barriers, 0);
        self.inner.barrier()
    }
}
