//! An engine whose handles cannot cross threads (an MPI communicator, an NCCL `Comm`), served
//! from a thread of its own: [`Served`] is the [`Collective`] the rest of the crate calls from
//! any thread; the [`Engine`] lives, works and is dropped on the serving thread.

use std::sync::Mutex;
use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;

use super::{Collective, ReduceOp};
use crate::error::{Error, Result};

/// The collective calls of an engine that stays on one thread.
pub trait Engine {
    /// This rank.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world(&self) -> usize;
    /// As [`Collective::all_reduce_f64`].
    ///
    /// # Errors
    ///
    /// The engine's errors.
    fn all_reduce_f64(&mut self, buf: &mut [f64], op: ReduceOp) -> Result<()>;
    /// As [`Collective::all_reduce_u64`].
    ///
    /// # Errors
    ///
    /// The engine's errors.
    fn all_reduce_u64(&mut self, buf: &mut [u64], op: ReduceOp) -> Result<()>;
    /// As [`Collective::all_gather_bytes`].
    ///
    /// # Errors
    ///
    /// The engine's errors.
    fn all_gather_bytes(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// As [`Collective::barrier`].
    ///
    /// # Errors
    ///
    /// The engine's errors.
    fn barrier(&mut self) -> Result<()>;
}

/// A call sent to the serving thread, with where its answer goes.
enum Call {
    F64(Vec<f64>, ReduceOp, Sender<Result<Vec<f64>>>),
    U64(Vec<u64>, ReduceOp, Sender<Result<Vec<u64>>>),
    Gather(Vec<u8>, Sender<Result<Vec<Vec<u8>>>>),
    Barrier(Sender<Result<()>>),
}

/// A [`Collective`] whose engine lives on a thread of its own. Dropping it ends the thread,
/// which drops the engine there (finalizing MPI, destroying a communicator).
pub struct Served {
    name: String,
    rank: usize,
    world: usize,
    calls: Mutex<Option<Sender<Call>>>,
    thread: Option<JoinHandle<()>>,
}

impl Served {
    /// Starts the thread `name`, makes the engine there with `make`, and serves it.
    ///
    /// # Errors
    ///
    /// What `make` returns; [`Error::Device`] when the thread cannot start.
    pub fn spawn<E: Engine + 'static>(
        name: &str,
        make: impl FnOnce() -> Result<E> + Send + 'static,
    ) -> Result<Self> {
        let (ready_tx, ready_rx) = channel::<Result<(usize, usize)>>();
        let (calls_tx, calls_rx) = channel::<Call>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let mut engine = match make() {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok((engine.rank(), engine.world())));
                for call in calls_rx {
                    match call {
                        Call::F64(mut buf, op, answer) => {
                            let out = engine.all_reduce_f64(&mut buf, op).map(|()| buf);
                            let _ = answer.send(out);
                        }
                        Call::U64(mut buf, op, answer) => {
                            let out = engine.all_reduce_u64(&mut buf, op).map(|()| buf);
                            let _ = answer.send(out);
                        }
                        Call::Gather(mine, answer) => {
                            let _ = answer.send(engine.all_gather_bytes(&mine));
                        }
                        Call::Barrier(answer) => {
                            let _ = answer.send(engine.barrier());
                        }
                    }
                }
                // The engine is dropped here, on the thread that made it.
            })
            .map_err(|e| served_error(name, "start its thread", e.to_string()))?;
        let (rank, world) = ready_rx
            .recv()
            .map_err(|_| served_error(name, "start", "its thread ended".into()))??;
        Ok(Served {
            name: name.to_string(),
            rank,
            world,
            calls: Mutex::new(Some(calls_tx)),
            thread: Some(thread),
        })
    }

    fn call<R>(&self, op: &str, make: impl FnOnce(Sender<Result<R>>) -> Call) -> Result<R> {
        let (tx, rx) = channel();
        {
            let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            let calls = calls
                .as_ref()
                .ok_or_else(|| served_error(&self.name, op, "the engine was shut down".into()))?;
            calls
                .send(make(tx))
                .map_err(|_| served_error(&self.name, op, "its thread ended".into()))?;
        }
        rx.recv()
            .map_err(|_| served_error(&self.name, op, "its thread ended during the call".into()))?
    }
}

fn served_error(name: &str, op: &str, reason: String) -> Error {
    Error::Device {
        device: name.into(),
        op: op.into(),
        reason,
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Collective for Served {
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
