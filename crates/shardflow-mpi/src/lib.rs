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
//! ```no_run
//! use shardflow::collective::Collective;
//! let mpi = shardflow_mpi::MpiCollective::world().expect("started by mpiexec");
//! let mut buf = [mpi.rank() as f64];
//! mpi.all_reduce_f64(&mut buf, shardflow::collective::ReduceOp::Sum).unwrap();
//! ```

use mpi::Threading;
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};
#[cfg(doc)]
use shardflow::collective::Collective;
use shardflow::collective::{Engine, ReduceOp, Served};
use shardflow::{Error, Result};

/// The world of `MPI_COMM_WORLD`, served from a thread that owns MPI.
pub struct MpiCollective;

impl MpiCollective {
    /// Initializes MPI on a thread of its own and returns the world, a [`Collective`].
    ///
    /// # Errors
    ///
    /// [`Error::Device`] when MPI was initialized already in this process or cannot give the
    /// funneled threading level.
    pub fn world() -> Result<Served> {
        Served::spawn("mpi", MpiEngine::init)
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
    _universe: Universe,
}

impl MpiEngine {
    fn init() -> Result<Self> {
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
}
