//! shardflow's [`Collective`] over MPI (rsmpi): the metric reduce across the processes of a job
//! that `mpiexec` (or SLURM with PMI) started.
//!
//! MPI handles cannot cross threads, and the loader reduces from whichever thread the caller
//! uses, so [`MpiCollective`] keeps MPI on a thread of its own (`shardflow::collective::Served`):
//! that thread initializes MPI (funneled: every MPI call is made from it), serves the collective
//! calls, and finalizes MPI when the collective is dropped.
//!
//! - all-reduce of f64 and u64 buffers: `MPI_Allreduce` with SUM, MAX or MIN;
//! - all-gather of bytes of varying lengths: the lengths, then `MPI_Allgatherv`;
//! - barrier: `MPI_Barrier`.
//!
//! **Deadlines.** An MPI call cannot be interrupted: a rank that dies or stalls leaves the others
//! in `MPI_Allreduce` for ever. So every call is waited for at most a deadline
//! ([`MpiConfig::deadline`]; by default `SHARDFLOW_COLLECTIVE_TIMEOUT` in seconds, else 300 s,
//! the file store's), and past it the job is aborted (`MPI_Abort`) with a message naming the
//! operation, the rank and the time waited, printed to stderr and logged: every process of the
//! job ends, none hangs. With [`OnTimeout::ReturnError`] the call returns that error instead and
//! the engine is unusable (its thread stays stuck in MPI): the caller decides, and should end
//! the process soon, since the other ranks wait for this one. Dropping the collective finalizes
//! MPI on its thread, which waits for every rank (a late rank is not a dead one: a warning is
//! logged each deadline, the job is not aborted; after a timeout the engine is poisoned and the
//! drop returns at once).
//!
//! ```no_run
//! use std::time::Duration;
//! use shardflow::collective::Collective;
//! use shardflow_mpi::{MpiConfig, OnTimeout};
//! let mpi = MpiConfig {
//!     deadline: Duration::from_secs(600),
//!     on_timeout: OnTimeout::AbortJob,
//! }
//! .init()
//! .expect("started by mpiexec");
//! let mut buf = [mpi.rank() as f64];
//! mpi.all_reduce_f64(&mut buf, shardflow::collective::ReduceOp::Sum).unwrap();
//! ```

use std::time::Duration;

use mpi::Threading;
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};
#[cfg(doc)]
use shardflow::collective::Collective;
use shardflow::collective::{AbortHandle, Engine, ReduceOp, Served, collective_deadline};
use shardflow::{Error, Result};

/// The world of `MPI_COMM_WORLD`, served from a thread that owns MPI.
pub struct MpiCollective;

impl MpiCollective {
    /// Initializes MPI on a thread of its own and returns the world, a [`Collective`], with
    /// [`MpiConfig::from_env`]'s settings: the job is aborted when a call passes the deadline.
    ///
    /// # Errors
    ///
    /// As [`MpiConfig::from_env`] and [`MpiConfig::init`].
    pub fn world() -> Result<Served> {
        MpiConfig::from_env()?.init()
    }
}

/// What happens when an MPI call passes its deadline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnTimeout {
    /// `MPI_Abort` on the world with exit code [`ABORT_CODE`], after printing the error to
    /// stderr: every process of the job ends.
    #[default]
    AbortJob,
    /// The call returns [`Error::Collective`]; the engine is unusable and its thread stays
    /// stuck in MPI until the process ends.
    ReturnError,
}

/// The exit code of a job aborted at a deadline.
pub const ABORT_CODE: i32 = 124;

/// The MPI engine's settings: how long a call may take, and what a timeout does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MpiConfig {
    /// How long a collective call (and MPI's initialization) may take.
    pub deadline: Duration,
    /// What a call that passes it does.
    pub on_timeout: OnTimeout,
}

impl MpiConfig {
    /// The deadline of `SHARDFLOW_COLLECTIVE_TIMEOUT` in seconds (else 300 s), and the job
    /// aborted past it.
    ///
    /// # Errors
    ///
    /// [`Error::Environment`] when `SHARDFLOW_COLLECTIVE_TIMEOUT` is not a positive number.
    pub fn from_env() -> Result<Self> {
        Ok(MpiConfig {
            deadline: collective_deadline()?,
            on_timeout: OnTimeout::AbortJob,
        })
    }

    /// Initializes MPI on a thread of its own and returns the world, a [`Collective`].
    ///
    /// # Errors
    ///
    /// [`Error::Device`] when MPI was initialized already in this process or cannot give the
    /// funneled threading level; [`Error::Collective`] when initialization does not end in
    /// time.
    pub fn init(self) -> Result<Served> {
        let on_timeout = self.on_timeout;
        Served::spawn_with_deadline("mpi", self.deadline, move || MpiEngine::init(on_timeout))
    }
}

fn mpi_error(op: &str, reason: String) -> Error {
    Error::Device {
        device: "mpi".into(),
        op: op.into(),
        reason,
    }
}

fn system_op(op: ReduceOp) -> SystemOperation {
    match op {
        ReduceOp::Sum => SystemOperation::sum(),
        ReduceOp::Max => SystemOperation::max(),
        ReduceOp::Min => SystemOperation::min(),
    }
}

/// MPI on its thread: the universe (dropped last, which finalizes MPI there) and the world.
struct MpiEngine {
    world: SimpleCommunicator,
    on_timeout: OnTimeout,
    _universe: Universe,
}

impl MpiEngine {
    fn init(on_timeout: OnTimeout) -> Result<Self> {
        let (universe, level) =
            mpi::initialize_with_threading(Threading::Funneled).ok_or_else(|| {
                mpi_error(
                    "initialize MPI",
                    "MPI was initialized already in this process".into(),
                )
            })?;
        if level < Threading::Funneled {
            return Err(mpi_error(
                "initialize MPI",
                format!(
                    "the MPI library gives threading level {level:?}; shardflow needs Funneled \
                     (all calls from the thread that initialized MPI)"
                ),
            ));
        }
        Ok(MpiEngine {
            world: universe.world(),
            on_timeout,
            _universe: universe,
        })
    }
}

impl Engine for MpiEngine {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_f64(&mut self, buf: &mut [f64], op: ReduceOp) -> Result<()> {
        let send = buf.to_vec();
        self.world.all_reduce_into(&send[..], buf, system_op(op));
        Ok(())
    }

    fn all_reduce_u64(&mut self, buf: &mut [u64], op: ReduceOp) -> Result<()> {
        let send = buf.to_vec();
        self.world.all_reduce_into(&send[..], buf, system_op(op));
        Ok(())
    }

    /// The lengths first, then `MPI_Allgatherv`.
    fn all_gather_bytes(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        if mine.len() > i32::MAX as usize {
            return Err(mpi_error(
                "all-gather bytes",
                format!("{} bytes exceed MPI's count limit", mine.len()),
            ));
        }
        let n = self.world.size() as usize;
        let mut lens = vec![0u64; n];
        self.world
            .all_gather_into(&(mine.len() as u64), &mut lens[..]);
        let counts: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
        let displs: Vec<i32> = counts
            .iter()
            .scan(0i32, |at, &c| {
                let d = *at;
                *at += c;
                Some(d)
            })
            .collect();
        let mut all = vec![0u8; lens.iter().sum::<u64>() as usize];
        // Every rank knows the lengths: when all are empty, none calls Allgatherv (Open MPI
        // refuses its empty buffers).
        if !all.is_empty() {
            let mut part = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            self.world.all_gather_varcount_into(mine, &mut part);
        }
        Ok((0..n)
            .map(|r| {
                let at = displs[r] as usize;
                all[at..at + counts[r] as usize].to_vec()
            })
            .collect())
    }

    fn barrier(&mut self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }

    /// [`OnTimeout::AbortJob`]: `MPI_Abort` from the thread that gave up waiting, since the
    /// serving thread is inside the stuck call. That is outside what the funneled threading
    /// level promises, and what Open MPI and MPICH do in practice: the runtime ends every
    /// process of the job (checked under Open MPI 4.1 by this crate's `deadline` test).
    fn abort_handle(&self) -> Option<AbortHandle> {
        match self.on_timeout {
            OnTimeout::ReturnError => None,
            OnTimeout::AbortJob => Some(AbortHandle::new(|why| {
                // The process ends now: stderr, not only a log that may not be flushed.
                eprintln!("shardflow-mpi: aborting the MPI job (exit code {ABORT_CODE}): {why}");
                SimpleCommunicator::world().abort(ABORT_CODE)
            })),
        }
    }
}
