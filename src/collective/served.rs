//! An engine whose handles cannot cross threads (an MPI communicator, an NCCL communicator),
//! served from a thread of its own: [`Served`] is the [`Collective`] the rest of the crate calls
//! from any thread; the [`Engine`] lives, works and is dropped on the serving thread.
//!
//! Nothing here waits forever. Every call waits at most the deadline (the one given to
//! [`Served::spawn_with_deadline`], else [`COLLECTIVE_TIMEOUT_ENV`] in seconds, else
//! [`DEFAULT_DEADLINE`], the file store's) plus a grace of a tenth of it (20 ms to 5 s), so that
//! an engine that keeps its own deadline (NCCL) reports first, with its own reason. When the
//! wait ends without an answer:
//!
//! 1. the call fails with [`Error::Collective`] naming the engine, the operation, the rank and
//!    the time waited;
//! 2. the [`Served`] is poisoned: every later call fails at once, saying which call timed out;
//! 3. the engine's [`AbortHandle`], if it gave one, is called from the waiting thread: NCCL
//!    aborts its communicator, MPI aborts the job (an MPI call cannot be interrupted).
//!
//! Dropping a poisoned [`Served`] ends its thread and waits for it a bounded time (up to 30 s
//! for an abort to finish, two seconds when nothing can interrupt it); a thread still stuck then
//! is left behind with a warning (`tracing`), so that dropping never hangs on a call that timed
//! out. A healthy engine's own drop is waited for, with a warning each deadline: MPI's
//! finalization waits for every rank, and a late rank (one writing its last checkpoint) is no
//! reason to abort the job. NCCL bounds its own finalization.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::store::DEFAULT_DEADLINE;
use super::{Collective, ReduceOp};
use crate::error::{Error, Result};

/// The environment variable that gives the deadline of every collective call, in seconds, when
/// the constructor is given none ([`collective_deadline`]).
pub const COLLECTIVE_TIMEOUT_ENV: &str = "SHARDFLOW_COLLECTIVE_TIMEOUT";

/// How long a dropped [`Served`] whose call timed out waits for its thread when the engine
/// cannot be interrupted (at most its deadline): nothing will end it, so not long.
const STUCK: Duration = Duration::from_secs(2);

/// How long a dropped [`Served`] whose engine was aborted waits for the abort to finish (at most
/// its deadline): `ncclCommAbort` tears down network connections, which can take seconds, and
/// a process that exits meanwhile can crash in the driver's shutdown.
const AFTER_ABORT: Duration = Duration::from_secs(30);

/// The deadline of a collective call: [`COLLECTIVE_TIMEOUT_ENV`] in seconds when it is set,
/// else [`DEFAULT_DEADLINE`] (as the file store's waits).
///
/// # Errors
///
/// [`Error::Environment`] when the variable is set but not a positive number of seconds.
pub fn collective_deadline() -> Result<Duration> {
    Ok(super::env::seconds_from_env(COLLECTIVE_TIMEOUT_ENV)?.unwrap_or(DEFAULT_DEADLINE))
}

/// How long [`Served`] waits for an answer: the deadline and a grace of a tenth of it (20 ms to
/// 5 s), so that an engine with a deadline of its own answers first.
fn with_grace(deadline: Duration) -> Duration {
    deadline
        .saturating_add((deadline / 10).clamp(Duration::from_millis(20), Duration::from_secs(5)))
}

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

    /// How another thread ends a call of this engine that does not return (asked once, on the
    /// serving thread, after the engine is made). [`Served`] calls it when a call passes its
    /// deadline. `None` (the default): the
    /// engine cannot be interrupted, and a stuck thread is left behind.
    fn abort_handle(&self) -> Option<AbortHandle> {
        None
    }
}

/// Ends the stuck call of an [`Engine`] from another thread: NCCL's sets a flag that its
/// polling thread answers with `ncclCommAbort`; MPI's aborts the job with the error as its
/// message. It is given the error that the waiting caller is about to return.
#[derive(Clone)]
pub struct AbortHandle(Arc<dyn Fn(&Error) + Send + Sync>);

impl AbortHandle {
    /// A handle that calls `abort` with the error that made [`Served`] give up.
    pub fn new(abort: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        AbortHandle(Arc::new(abort))
    }

    /// Asks the engine to end its stuck call; returns at once (or never, for an engine that
    /// ends the process).
    pub fn abort(&self, why: &Error) {
        (self.0)(why)
    }
}

impl std::fmt::Debug for AbortHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AbortHandle")
    }
}

/// A call sent to the serving thread, with where its answer goes.
enum Call {
    F64(Vec<f64>, ReduceOp, Sender<Result<Vec<f64>>>),
    U64(Vec<u64>, ReduceOp, Sender<Result<Vec<u64>>>),
    Gather(Vec<u8>, Sender<Result<Vec<Vec<u8>>>>),
    Barrier(Sender<Result<()>>),
}

/// What the serving thread sends once the engine is made.
type Ready = Result<(usize, usize, Option<AbortHandle>)>;

/// A [`Collective`] whose engine lives on a thread of its own, every call bounded by a deadline
/// (see the module docs). Dropping it ends the thread, which drops the engine there (finalizing
/// MPI, destroying a communicator).
pub struct Served {
    name: String,
    rank: usize,
    world: usize,
    deadline: Duration,
    calls: Mutex<Option<Sender<Call>>>,
    /// Held for the whole of a call: calls from several threads take turns, and each one's
    /// deadline counts from when the engine gets it, not from when it queued behind another.
    turn: Mutex<()>,
    /// Why this engine can no longer be used: the first call that timed out or panicked (the
    /// serving thread records a panic).
    poisoned: Arc<Mutex<Option<String>>>,
    abort: Option<AbortHandle>,
    /// Disconnected when the serving thread has ended.
    ended: Mutex<Receiver<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("name", &self.name)
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Served {
    /// Starts the thread `name`, makes the engine there with `make`, and serves it, every call
    /// bounded by [`collective_deadline`].
    ///
    /// # Errors
    ///
    /// As [`Served::spawn_with_deadline`]; [`Error::Environment`] for a bad
    /// [`COLLECTIVE_TIMEOUT_ENV`].
    pub fn spawn<E: Engine + 'static>(
        name: &str,
        make: impl FnOnce() -> Result<E> + Send + 'static,
    ) -> Result<Self> {
        Self::spawn_with_deadline(name, collective_deadline()?, make)
    }

    /// Starts the thread `name`, makes the engine there with `make`, and serves it; `make` and
    /// every call are waited for at most `deadline` (and its grace).
    ///
    /// # Errors
    ///
    /// What `make` returns; [`Error::Spawn`] when the thread cannot start;
    /// [`Error::Collective`] when `make` neither returns nor fails in time (its thread is left
    /// behind) or panics.
    pub fn spawn_with_deadline<E: Engine + 'static>(
        name: &str,
        deadline: Duration,
        make: impl FnOnce() -> Result<E> + Send + 'static,
    ) -> Result<Self> {
        let (ready_tx, ready_rx) = channel::<Ready>();
        let (calls_tx, calls_rx) = channel::<Call>();
        let (ended_tx, ended) = channel::<()>();
        let thread_name = name.to_string();
        let poisoned = Arc::new(Mutex::new(None));
        let poisoned_there = poisoned.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // Dropped when this thread ends, however it ends: the drop's signal.
                let _ended = ended_tx;
                serve(&thread_name, make, ready_tx, calls_rx, &poisoned_there);
            })
            .map_err(|error| Error::Spawn {
                what: format!("the thread of collective engine {name}"),
                error,
            })?;
        let start = Instant::now();
        let (rank, world, abort) = match ready_rx.recv_timeout(with_grace(deadline)) {
            Ok(ready) => ready?,
            Err(e) => {
                let reason = match e {
                    RecvTimeoutError::Timeout => {
                        "the engine did not start in time (its thread is left behind)".to_string()
                    }
                    RecvTimeoutError::Disconnected => "its thread ended (a panic)".to_string(),
                };
                return Err(Error::Collective {
                    engine: name.into(),
                    op: "start".into(),
                    rank: None,
                    waited: start.elapsed(),
                    reason,
                });
            }
        };
        Ok(Served {
            name: name.to_string(),
            rank,
            world,
            deadline,
            calls: Mutex::new(Some(calls_tx)),
            turn: Mutex::new(()),
            poisoned,
            abort,
            ended: Mutex::new(ended),
            thread: Some(thread),
        })
    }

    /// The deadline of every call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The engine's name (its thread's).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Why this engine can no longer be used (a call that timed out or panicked), if so.
    pub fn poisoned(&self) -> Option<String> {
        self.poisoned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn error(&self, op: &str, waited: Duration, reason: String) -> Error {
        Error::Collective {
            engine: self.name.clone(),
            op: op.into(),
            rank: Some(self.rank),
            waited,
            reason,
        }
    }

    fn call<R>(&self, op: &str, make: impl FnOnce(Sender<Result<R>>) -> Call) -> Result<R> {
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = self.poisoned() {
            return Err(self.error(op, Duration::ZERO, format!("unusable: {why}")));
        }
        let (tx, rx) = channel();
        {
            let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            let calls = calls
                .as_ref()
                .ok_or_else(|| self.error(op, Duration::ZERO, "the engine was shut down".into()))?;
            calls
                .send(make(tx))
                .map_err(|_| self.error(op, Duration::ZERO, "its thread ended".into()))?;
        }
        let start = Instant::now();
        let wait = with_grace(self.deadline);
        match rx.recv_timeout(wait) {
            Ok(answer) => answer,
            Err(RecvTimeoutError::Disconnected) => {
                // The serving thread answers a panic with an error; this is a thread that
                // ended without answering.
                Err(self.error(
                    op,
                    start.elapsed(),
                    "its thread ended during the call".into(),
                ))
            }
            Err(RecvTimeoutError::Timeout) => {
                let waited = start.elapsed();
                let why = format!(
                    "{op} on rank {} did not finish within {:.1} s",
                    self.rank,
                    waited.as_secs_f64()
                );
                self.poison(why);
                let fate = if self.abort.is_some() {
                    "the engine was aborted and is unusable"
                } else {
                    "the engine cannot be interrupted: its thread is left behind and the engine \
                     is unusable"
                };
                let err = self.error(
                    op,
                    waited,
                    format!(
                        "no answer within the deadline of {:.1} s (and a grace of {:.1} s): a \
                         rank stopped, died or is late, or the ranks do not make the same calls; \
                         {fate}",
                        self.deadline.as_secs_f64(),
                        (wait - self.deadline).as_secs_f64(),
                    ),
                );
                tracing::error!(engine = %self.name, rank = self.rank, op, "{err}");
                if let Some(abort) = &self.abort {
                    abort.abort(&err);
                }
                Err(err)
            }
        }
    }

    fn poison(&self, why: String) {
        self.poisoned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
    }
}

/// The serving thread: makes the engine, reports, answers calls until the sender is dropped,
/// then drops the engine here.
fn serve<E: Engine>(
    name: &str,
    make: impl FnOnce() -> Result<E>,
    ready: Sender<Ready>,
    calls: Receiver<Call>,
    poisoned: &Mutex<Option<String>>,
) {
    let mut engine = match catch_unwind(AssertUnwindSafe(make)) {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => {
            let _ = ready.send(Err(e));
            return;
        }
        Err(panic) => {
            let _ = ready.send(Err(Error::Collective {
                engine: name.into(),
                op: "start".into(),
                rank: None,
                waited: Duration::ZERO,
                reason: format!("the engine panicked: {}", panic_message(&*panic)),
            }));
            return;
        }
    };
    let _ = ready.send(Ok((engine.rank(), engine.world(), engine.abort_handle())));
    let rank = engine.rank();
    for call in calls {
        let start = Instant::now();
        let serving = Serving {
            name,
            rank,
            start,
            poisoned,
        };
        let panicked = match call {
            Call::F64(mut buf, op, answer) => serving.answer(answer, "all-reduce f64", || {
                engine.all_reduce_f64(&mut buf, op).map(|()| buf)
            }),
            Call::U64(mut buf, op, answer) => serving.answer(answer, "all-reduce u64", || {
                engine.all_reduce_u64(&mut buf, op).map(|()| buf)
            }),
            Call::Gather(mine, answer) => serving.answer(answer, "all-gather bytes", || {
                engine.all_gather_bytes(&mine)
            }),
            Call::Barrier(answer) => serving.answer(answer, "barrier", || engine.barrier()),
        };
        // A panic ends the service: the engine's state is unknown.
        if panicked {
            break;
        }
    }
    // The engine is dropped here, on the thread that made it.
    drop(engine);
}

/// One call being served.
struct Serving<'a> {
    name: &'a str,
    rank: usize,
    start: Instant,
    poisoned: &'a Mutex<Option<String>>,
}

impl Serving<'_> {
    /// Runs the call and sends its answer. A panic poisons the engine, is answered as an error
    /// naming it, and gives `true`.
    fn answer<R>(
        &self,
        answer: Sender<Result<R>>,
        op: &str,
        run: impl FnOnce() -> Result<R>,
    ) -> bool {
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(out) => {
                let _ = answer.send(out);
                false
            }
            Err(panic) => {
                let why = format!("{op} panicked: {}", panic_message(&*panic));
                tracing::error!(
                    engine = self.name,
                    rank = self.rank,
                    "{why}; its service ends"
                );
                self.poisoned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(why.clone());
                let _ = answer.send(Err(Error::Collective {
                    engine: self.name.into(),
                    op: op.into(),
                    rank: Some(self.rank),
                    waited: self.start.elapsed(),
                    reason: format!("{why}; the engine is unusable"),
                }));
                true
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not a string)".into())
}

impl Drop for Served {
    fn drop(&mut self) {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(thread) = self.thread.take() else {
            return;
        };
        let poisoned = self.poisoned();
        let signal = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        let ended = |wait: Duration| {
            matches!(
                signal.recv_timeout(wait),
                Err(RecvTimeoutError::Disconnected) | Ok(())
            )
        };
        let done = if poisoned.is_some() {
            // A call timed out: the engine was aborted (wait for the abort to finish) or cannot
            // be interrupted (nothing will end it); either way dropping returns.
            let wait = if self.abort.is_some() {
                AFTER_ABORT
            } else {
                STUCK
            };
            ended(wait.min(self.deadline))
        } else {
            // A healthy engine finalizing: MPI_Finalize waits for every rank, and a late rank
            // (one writing its last checkpoint) is not a dead one. Wait, saying so each
            // deadline; never abort a job that did nothing wrong. (NCCL bounds its own
            // finalization.)
            let mut waited = Duration::ZERO;
            loop {
                let round = with_grace(self.deadline);
                if ended(round) {
                    break true;
                }
                waited += round;
                tracing::warn!(
                    engine = %self.name,
                    rank = self.rank,
                    "the engine's thread has not ended {:.0} s after it was dropped (MPI's \
                     finalization waits for every rank); still waiting",
                    waited.as_secs_f64()
                );
            }
        };
        if done {
            let _ = thread.join();
        } else {
            tracing::warn!(
                engine = %self.name,
                rank = self.rank,
                poisoned = ?poisoned,
                "the engine's thread is stuck and is left behind; dropping returns"
            );
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
