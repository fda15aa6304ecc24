//! The deadline and abort logic of a served engine, proven with stand-in engines that stall, fail
//! or panic (no GPU, no MPI): a world where one rank stops answering fails every other rank
//! within the deadline, naming the missing rank; the stuck rank's own call fails after the
//! deadline, naming the engine, the operation, the rank and the time waited, and poisons it;
//! dropping everything afterwards returns.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use shardflow::Error;
use shardflow::collective::{
    AbortHandle, Collective, Engine, ReduceOp, Served, WorldRank, in_process,
};

/// What a stand-in engine does from its `from`-th call on (0-based).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Blocks forever and cannot be interrupted (an MPI call whose peer died).
    Hang,
    /// Blocks until its abort handle is called (NCCL polling its communicator).
    HangUntilAborted,
    /// Returns an error.
    Fail,
    /// Panics.
    Panic,
}

/// Shared flags a test reads after the engine is gone.
#[derive(Default)]
struct Seen {
    aborted: AtomicBool,
    dropped: AtomicBool,
    calls: AtomicU64,
}

/// A rank of an in-process world behind the [`Engine`] trait, with a fault from a given call on.
struct StandIn {
    rank: WorldRank,
    fault: Option<(u64, Fault)>,
    seen: Arc<Seen>,
    wake: Arc<(Mutex<bool>, Condvar)>,
}

impl StandIn {
    fn before_call(&mut self) -> shardflow::Result<()> {
        let call = self.seen.calls.fetch_add(1, Ordering::SeqCst);
        match self.fault {
            Some((from, fault)) if call >= from => match fault {
                Fault::Hang => loop {
                    std::thread::park();
                },
                Fault::HangUntilAborted => {
                    let (lock, cv) = &*self.wake;
                    let mut woken = lock.lock().unwrap();
                    while !*woken {
                        woken = cv.wait(woken).unwrap();
                    }
                    Err(Error::Collective {
                        engine: "stand-in".into(),
                        op: "call".into(),
                        rank: Some(self.rank.rank()),
                        waited: Duration::ZERO,
                        reason: "aborted".into(),
                    })
                }
                Fault::Fail => Err(Error::CheckFailed(format!("call {call} fails"))),
                Fault::Panic => panic!("stand-in engine panics at call {call}"),
            },
            _ => Ok(()),
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.seen.dropped.store(true, Ordering::SeqCst);
    }
}

impl Engine for StandIn {
    fn rank(&self) -> usize {
        self.rank.rank()
    }
    fn world(&self) -> usize {
        self.rank.world()
    }
    fn all_reduce_f64(&mut self, buf: &mut [f64], op: ReduceOp) -> shardflow::Result<()> {
        self.before_call()?;
        self.rank.all_reduce_f64(buf, op)
    }
    fn all_reduce_u64(&mut self, buf: &mut [u64], op: ReduceOp) -> shardflow::Result<()> {
        self.before_call()?;
        self.rank.all_reduce_u64(buf, op)
    }
    fn all_gather_bytes(&mut self, mine: &[u8]) -> shardflow::Result<Vec<Vec<u8>>> {
        self.before_call()?;
        self.rank.all_gather_bytes(mine)
    }
    fn barrier(&mut self) -> shardflow::Result<()> {
        self.before_call()?;
        self.rank.barrier()
    }
    fn abort_handle(&self) -> Option<AbortHandle> {
        if self.fault.map(|(_, f)| f) != Some(Fault::HangUntilAborted) {
            return None;
        }
        let (wake, seen) = (self.wake.clone(), self.seen.clone());
        Some(AbortHandle::new(move |_why| {
            seen.aborted.store(true, Ordering::SeqCst);
            *wake.0.lock().unwrap() = true;
            wake.1.notify_all();
        }))
    }
}

/// A world of `n` served stand-ins over an in-process world whose ranks wait `world_wait` for
/// each other; `faults` gives a rank's fault. Returns the spawn results and each rank's flags.
fn world(
    n: usize,
    world_wait: Duration,
    deadline: Duration,
    faults: &[(usize, u64, Fault)],
) -> (Vec<shardflow::Result<Served>>, Vec<Arc<Seen>>) {
    let mut served = Vec::new();
    let mut seen = Vec::new();
    for rank in in_process(n, world_wait) {
        let r = rank.rank();
        let fault = faults
            .iter()
            .find(|f| f.0 == r)
            .map(|&(_, from, fault)| (from, fault));
        let flags = Arc::new(Seen::default());
        seen.push(flags.clone());
        served.push(Served::spawn_with_deadline(
            "stand-in",
            deadline,
            move || {
                Ok(StandIn {
                    rank,
                    fault,
                    seen: flags,
                    wake: Arc::default(),
                })
            },
        ));
    }
    (served, seen)
}

/// Every rank's result of `f`, each rank on a thread of its own.
fn on_each<T: Send>(ranks: &[Served], f: impl Fn(&Served) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let hs: Vec<_> = ranks.iter().map(|c| s.spawn(|| f(c))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn a_rank_that_stops_answering_fails_every_other_rank_within_the_deadline_naming_it() {
    let deadline = Duration::from_millis(1500);
    let (served, _) = world(
        4,
        Duration::from_millis(300),
        deadline,
        &[(2, 1, Fault::Hang)],
    );
    let ranks: Vec<Served> = served.into_iter().map(Result::unwrap).collect();
    let start = Instant::now();
    let results = on_each(&ranks, |c| {
        // The first call works on every rank: the world is sound.
        let mut first = [c.rank() as f64];
        c.all_reduce_f64(&mut first, ReduceOp::Sum).unwrap();
        assert_eq!(first, [6.0]);
        // The second: rank 2 hangs in it.
        let t = Instant::now();
        let err = c.all_reduce_u64(&mut [1], ReduceOp::Sum).unwrap_err();
        (err, t.elapsed())
    });
    for (r, (err, took)) in results.iter().enumerate() {
        let text = err.to_string();
        if r == 2 {
            // The stuck rank's own call: named, timed, and the engine poisoned.
            match err {
                Error::Collective {
                    engine,
                    op,
                    rank,
                    waited,
                    ..
                } => {
                    assert_eq!(engine, "stand-in");
                    assert_eq!(op, "all-reduce u64");
                    assert_eq!(*rank, Some(2));
                    assert!(*waited >= deadline, "{waited:?}");
                }
                other => panic!("rank 2: {other}"),
            }
            assert!(text.contains("cannot be interrupted"), "{text}");
            assert!(*took < deadline * 2, "rank 2 waited {took:?}");
        } else {
            // The others: the world's own deadline, naming rank 2 and the call.
            assert!(
                matches!(err, Error::RankTimeout { missing, .. } if missing == &[2]),
                "rank {r}: {text}"
            );
            assert!(text.contains("all_reduce_u64 call 1"), "rank {r}: {text}");
            assert!(*took < deadline, "rank {r} waited {took:?}");
        }
    }
    // The stuck rank fails at once from now on, saying why.
    let t = Instant::now();
    let again = ranks[2].barrier().unwrap_err().to_string();
    assert!(t.elapsed() < Duration::from_millis(50));
    assert!(
        again.contains("unusable: all-reduce u64 on rank 2 did not finish"),
        "{again}"
    );
    assert!(ranks[2].poisoned().is_some());
    // Dropping everything returns: the stuck thread is left behind.
    let t = Instant::now();
    drop(ranks);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(start.elapsed() < Duration::from_secs(8));
}

#[test]
fn a_stalled_engine_with_an_abort_handle_is_aborted_and_drops_at_once() {
    let deadline = Duration::from_millis(300);
    let (served, seen) = world(
        1,
        Duration::from_secs(5),
        deadline,
        &[(0, 0, Fault::HangUntilAborted)],
    );
    let served = served.into_iter().next().unwrap().unwrap();
    let err = served
        .all_reduce_f64(&mut [1.0], ReduceOp::Max)
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("collective engine stand-in rank 0: all-reduce f64 failed after"),
        "{text}"
    );
    assert!(text.contains("was aborted"), "{text}");
    assert!(
        seen[0].aborted.load(Ordering::SeqCst),
        "the abort handle ran"
    );
    let again = served.all_gather_bytes(b"x").unwrap_err().to_string();
    assert!(again.contains("unusable"), "{again}");
    let t = Instant::now();
    drop(served);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(
        seen[0].dropped.load(Ordering::SeqCst),
        "the aborted engine was dropped on its thread, which ended"
    );
}

#[test]
fn an_engine_error_passes_through_and_a_panic_poisons_it() {
    let deadline = Duration::from_secs(5);
    let (served, seen) = world(
        2,
        Duration::from_secs(5),
        deadline,
        &[(0, 0, Fault::Fail), (1, 0, Fault::Panic)],
    );
    let ranks: Vec<Served> = served.into_iter().map(Result::unwrap).collect();
    // An engine's error is the call's error; the engine stays usable.
    let failed = ranks[0].barrier().unwrap_err().to_string();
    assert_eq!(failed, "check failed: call 0 fails");
    assert!(ranks[0].poisoned().is_none());
    // A panic is an error naming it, and the end of that engine.
    let t = Instant::now();
    let panicked = ranks[1]
        .all_reduce_f64(&mut [1.0], ReduceOp::Sum)
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(1));
    let text = panicked.to_string();
    assert!(
        text.contains("all-reduce f64 panicked: stand-in engine panics at call 0"),
        "{text}"
    );
    let again = ranks[1].barrier().unwrap_err().to_string();
    assert!(
        again.contains("unusable: all-reduce f64 panicked"),
        "{again}"
    );
    let t = Instant::now();
    drop(ranks);
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(seen.iter().all(|s| s.dropped.load(Ordering::SeqCst)));
}

#[test]
fn a_rank_that_fails_before_init_makes_the_others_fail_not_hang() {
    let deadline = Duration::from_secs(2);
    let mut served = Vec::new();
    let start = Instant::now();
    for rank in in_process(3, Duration::from_millis(300)) {
        let r = rank.rank();
        served.push(Served::spawn_with_deadline(
            "stand-in",
            deadline,
            move || {
                if r == 1 {
                    // Rank 1 never makes its engine (no GPU, say); its world rank is dropped.
                    return Err(Error::Device {
                        device: "cuda".into(),
                        op: "pick a device".into(),
                        reason: "no device".into(),
                    });
                }
                Ok(StandIn {
                    rank,
                    fault: None,
                    seen: Arc::default(),
                    wake: Arc::default(),
                })
            },
        ));
    }
    let err = served.remove(1).unwrap_err().to_string();
    assert!(err.contains("no device"), "{err}");
    let ranks: Vec<Served> = served.into_iter().map(Result::unwrap).collect();
    let errors = on_each(&ranks, |c| c.barrier().unwrap_err());
    for err in errors {
        let named = matches!(&err, Error::RankTimeout { missing, op, .. }
            if missing == &[1] && op == "barrier");
        assert!(named, "{err}");
    }
    drop(ranks);
    assert!(start.elapsed() < deadline * 2, "{:?}", start.elapsed());
}

#[test]
fn an_engine_that_never_starts_is_a_timeout_not_a_hang() {
    let t = Instant::now();
    let err = Served::spawn_with_deadline("never", Duration::from_millis(200), || {
        loop {
            std::thread::park();
        }
        #[allow(unreachable_code)]
        Ok(StandIn {
            rank: in_process(1, Duration::from_secs(1)).pop().unwrap(),
            fault: None,
            seen: Arc::default(),
            wake: Arc::default(),
        })
    })
    .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let text = err.to_string();
    assert!(
        text.contains("collective engine never: start failed after"),
        "{text}"
    );
    assert!(text.contains("did not start in time"), "{text}");
}

#[test]
fn a_metric_reduce_with_a_stalled_rank_fails_on_every_rank_naming_it() {
    use shardflow::metrics::{Aggregator, Kind};
    let deadline = Duration::from_millis(1200);
    let (served, _) = world(
        3,
        Duration::from_millis(300),
        deadline,
        &[(1, 0, Fault::Hang)],
    );
    let ranks: Vec<Served> = served.into_iter().map(Result::unwrap).collect();
    let results = on_each(&ranks, |c| {
        let mut agg = Aggregator::default();
        agg.record("web", "tokens", Kind::Sum, 1.0).unwrap();
        let t = Instant::now();
        (agg.reduce(c).unwrap_err(), t.elapsed())
    });
    for (r, (err, took)) in results.iter().enumerate() {
        let text = err.to_string();
        if r == 1 {
            assert!(
                text.contains("collective engine stand-in rank 1: all-reduce u64 failed after"),
                "{text}"
            );
        } else {
            // The header's all-reduce: the first collective of the reduce.
            assert!(
                text.contains("all_reduce_u64 call 0 on rank") && text.contains("ranks [1]"),
                "rank {r}: {text}"
            );
        }
        assert!(*took < deadline * 2, "rank {r}: {took:?}");
    }
    let t = Instant::now();
    drop(ranks);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}
