//! shardflow's [`Collective`] over MPI (rsmpi): the metric reduce across the processes of a job
//! that `mpiexec` (or SLURM with PMI) started.
//!
//! MPI handles cannot cross threads, and the loader reduces from whichever thread the caller
//! uses, so [`MpiCollective`] owns MPI on a thread of its own: that thread initializes MPI
//! (funneled: every MPI call is made from it), serves the collective calls sent to it, and
//! finalizes MPI when the collective is dropped.
//!
//! - all-reduce of f64 and u64 buffers: `MPI_Allreduce` with SUM, MAX or MIN;
//! - all-gather of bytes of varying lengths: the lengths, then `MPI_Allgatherv`;
//! - barrier: `MPI_Barrier`.
//!
//! ```no_run
//! use shardflow::collective::Collective;
//! let mpi = shardflow_mpi::MpiCollective::new().expect("started by mpiexec");
//! let mut buf = [mpi.rank() as f64];
//! mpi.all_reduce_f64(&mut buf, shardflow::collective::ReduceOp::Sum).unwrap();
//! ```

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use mpi::Threading;
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};
use shardflow::collective::{Collective, ReduceOp};
use shardflow::{Error, Result};

/// A call sent to the MPI thread, with where its answer goes.
enum Call {
    F64(Vec<f64>, ReduceOp, Sender<Vec<f64>>),
    U64(Vec<u64>, ReduceOp, Sender<Vec<u64>>),
    Gather(Vec<u8>, Sender<Vec<Vec<u8>>>),
    Barrier(Sender<()>),
}

/// The world of `MPI_COMM_WORLD`, served from a thread that owns MPI.
pub struct MpiCollective {
    rank: usize,
    world: usize,
    calls: Mutex<Option<Sender<Call>>>,
    thread: Option<JoinHandle<()>>,
}

impl MpiCollective {
    /// Initializes MPI on a thread of its own and returns the world.
    ///
    /// # Errors
    ///
    /// [`Error::Device`] when MPI was initialized already in this process or cannot give the
    /// funneled threading level.
    pub fn new() -> Result<Self> {
        let (ready_tx, ready_rx) = channel::<std::result::Result<(usize, usize), String>>();
        let (calls_tx, calls_rx) = channel::<Call>();
        let thread = std::thread::Builder::new()
            .name("shardflow-mpi".into())
            .spawn(move || serve(ready_tx, calls_rx))
            .map_err(|e| mpi_error("start the MPI thread", e.to_string()))?;
        let (rank, world) = ready_rx
            .recv()
            .map_err(|_| mpi_error("initialize MPI", "the MPI thread ended".into()))?
            .map_err(|reason| mpi_error("initialize MPI", reason))?;
        Ok(MpiCollective {
            rank,
            world,
            calls: Mutex::new(Some(calls_tx)),
            thread: Some(thread),
        })
    }

    fn call<R>(&self, op: &str, make: impl FnOnce(Sender<R>) -> Call) -> Result<R> {
        let (tx, rx) = channel();
        {
            let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            let calls = calls
                .as_ref()
                .ok_or_else(|| mpi_error(op, "MPI was finalized".into()))?;
            calls
                .send(make(tx))
                .map_err(|_| mpi_error(op, "the MPI thread ended".into()))?;
        }
        rx.recv()
            .map_err(|_| mpi_error(op, "the MPI thread ended during the call".into()))
    }
}

impl Drop for MpiCollective {
    fn drop(&mut self) {
        // Closing the channel ends the thread, which finalizes MPI.
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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

/// The MPI thread: initializes MPI, reports the world, serves calls until the channel closes.
fn serve(ready: Sender<std::result::Result<(usize, usize), String>>, calls: Receiver<Call>) {
    let Some((universe, level)) = mpi::initialize_with_threading(Threading::Funneled) else {
        let _ = ready.send(Err("MPI was initialized already in this process".into()));
        return;
    };
    if level < Threading::Funneled {
        let _ = ready.send(Err(format!(
            "the MPI library gives threading level {level:?}; shardflow needs Funneled (all \
             calls from the thread that initialized MPI)"
        )));
        return;
    }
    let world: SimpleCommunicator = universe.world();
    let _ = ready.send(Ok((world.rank() as usize, world.size() as usize)));
    for call in calls {
        match call {
            Call::F64(buf, op, answer) => {
                let mut out = vec![0f64; buf.len()];
                world.all_reduce_into(&buf[..], &mut out[..], system_op(op));
                let _ = answer.send(out);
            }
            Call::U64(buf, op, answer) => {
                let mut out = vec![0u64; buf.len()];
                world.all_reduce_into(&buf[..], &mut out[..], system_op(op));
                let _ = answer.send(out);
            }
            Call::Gather(mine, answer) => {
                let n = world.size() as usize;
                let mut lens = vec![0u64; n];
                world.all_gather_into(&(mine.len() as u64), &mut lens[..]);
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
                // Every rank knows the lengths: when all are empty, none calls Allgatherv
                // (Open MPI refuses its empty buffers).
                if !all.is_empty() {
                    let mut part = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
                    world.all_gather_varcount_into(&mine[..], &mut part);
                }
                let out = (0..n)
                    .map(|r| {
                        let at = displs[r] as usize;
                        all[at..at + counts[r] as usize].to_vec()
                    })
                    .collect();
                let _ = answer.send(out);
            }
            Call::Barrier(answer) => {
                world.barrier();
                let _ = answer.send(());
            }
        }
    }
    // Dropping the universe finalizes MPI, on the thread that initialized it.
    drop(universe);
}

impl Collective for MpiCollective {
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
        if mine.len() > i32::MAX as usize {
            return Err(mpi_error(
                "all-gather bytes",
                format!("{} bytes exceed MPI's count limit", mine.len()),
            ));
        }
        self.call("all-gather bytes", |tx| Call::Gather(mine.to_vec(), tx))
    }

    fn barrier(&self) -> Result<()> {
        self.call("barrier", Call::Barrier)
    }
}
