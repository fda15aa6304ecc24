//! An in-process world: N ranks as threads of one process, meeting in shared memory.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{Collective, ReduceOp};
use crate::error::{Error, Result};

/// One rank's contribution to a call.
#[derive(Clone, Debug, PartialEq)]
enum Part {
    F64(Vec<f64>, ReduceOp),
    U64(Vec<u64>, ReduceOp),
    Bytes(Vec<u8>),
    Barrier,
}

impl Part {
    fn name(&self) -> &'static str {
        match self {
            Part::F64(..) => "all_reduce_f64",
            Part::U64(..) => "all_reduce_u64",
            Part::Bytes(_) => "all_gather_bytes",
            Part::Barrier => "barrier",
        }
    }
}

/// The parts of one call, filled in as ranks arrive.
struct Round {
    parts: Vec<Option<Part>>,
    /// Ranks that have read the complete round.
    read: usize,
}

struct Shared {
    world: usize,
    timeout: Duration,
    rounds: Mutex<BTreeMap<u64, Round>>,
    arrived: Condvar,
}

/// One rank of an in-process world. Create the world with [`in_process`] and hand one rank to
/// each thread.
pub struct WorldRank {
    rank: usize,
    shared: Arc<Shared>,
    calls: Mutex<u64>,
}

impl std::fmt::Debug for WorldRank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorldRank")
            .field("rank", &self.rank)
            .field("world", &self.shared.world)
            .finish()
    }
}

/// A world of `world` ranks in this process; a rank that waits longer than `timeout` for the
/// others fails with [`Error::RankTimeout`] naming the missing ranks.
///
/// # Panics
///
/// If `world` is 0.
pub fn in_process(world: usize, timeout: Duration) -> Vec<WorldRank> {
    assert!(world > 0, "a world holds at least one rank");
    let shared = Arc::new(Shared {
        world,
        timeout,
        rounds: Mutex::new(BTreeMap::new()),
        arrived: Condvar::new(),
    });
    (0..world)
        .map(|rank| WorldRank {
            rank,
            shared: shared.clone(),
            calls: Mutex::new(0),
        })
        .collect()
}

impl WorldRank {
    /// Contributes `part` to this rank's next call and returns every rank's part, in rank order.
    fn exchange(&self, part: Part) -> Result<Vec<Part>> {
        self.exchange_call(part).map(|(_, parts)| parts)
    }

    /// [`WorldRank::exchange`], with the call's number (the same on every rank).
    fn exchange_call(&self, part: Part) -> Result<(u64, Vec<Part>)> {
        let op = part.name();
        let call = {
            let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
            *calls += 1;
            *calls - 1
        };
        let n = self.shared.world;
        let start = Instant::now();
        let mut rounds = self.shared.rounds.lock().unwrap_or_else(|e| e.into_inner());
        rounds
            .entry(call)
            .or_insert_with(|| Round {
                parts: vec![None; n],
                read: 0,
            })
            .parts[self.rank] = Some(part);
        self.shared.arrived.notify_all();
        loop {
            let round = rounds
                .get(&call)
                .expect("a round stays until every rank has read it");
            if round.parts.iter().all(Option::is_some) {
                break;
            }
            let left = self.shared.timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                let missing = (0..n).filter(|&r| round.parts[r].is_none()).collect();
                return Err(Error::RankTimeout {
                    op: op.into(),
                    call,
                    rank: self.rank,
                    missing,
                    waited: start.elapsed(),
                });
            }
            rounds = self
                .shared
                .arrived
                .wait_timeout(rounds, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let round = rounds.get_mut(&call).expect("the round is complete");
        let parts: Vec<Part> = round
            .parts
            .iter()
            .map(|p| p.clone().expect("complete"))
            .collect();
        round.read += 1;
        if round.read == n {
            rounds.remove(&call);
        }
        drop(rounds);
        check_alike(&parts, op, call)?;
        Ok((call, parts))
    }

    /// Every rank's f64 buffer for this call, in rank order, and the call's number.
    fn gather_f64(&self, buf: &[f64], op: ReduceOp) -> Result<(u64, Vec<Vec<f64>>)> {
        let (call, parts) = self.exchange_call(Part::F64(buf.to_vec(), op))?;
        let vecs = parts.into_iter().map(|p| match p {
            Part::F64(v, _) => v,
            _ => unreachable!("check_alike made every part an f64 all-reduce"),
        });
        Ok((call, vecs.collect()))
    }

    /// Every rank's u64 buffer for this call, in rank order, and the call's number.
    fn gather_u64(&self, buf: &[u64], op: ReduceOp) -> Result<(u64, Vec<Vec<u64>>)> {
        let (call, parts) = self.exchange_call(Part::U64(buf.to_vec(), op))?;
        let vecs = parts.into_iter().map(|p| match p {
            Part::U64(v, _) => v,
            _ => unreachable!("check_alike made every part a u64 all-reduce"),
        });
        Ok((call, vecs.collect()))
    }
}

/// Fails unless every rank made the same kind of call with the same length and operation.
fn check_alike(parts: &[Part], op: &str, call: u64) -> Result<()> {
    let shape = |p: &Part| match p {
        Part::F64(v, o) => (p.name(), v.len(), Some(*o)),
        Part::U64(v, o) => (p.name(), v.len(), Some(*o)),
        Part::Bytes(_) => (p.name(), 0, None),
        Part::Barrier => (p.name(), 0, None),
    };
    let first = shape(&parts[0]);
    if let Some(r) = parts.iter().position(|p| shape(p) != first) {
        return Err(Error::CollectiveMismatch {
            op: op.into(),
            call,
            reason: format!(
                "rank 0 called {:?} but rank {r} called {:?}",
                first,
                shape(&parts[r])
            ),
        });
    }
    Ok(())
}

fn reduce<T: Copy>(out: &mut [T], parts: impl IntoIterator<Item = Vec<T>>, f: impl Fn(T, T) -> T) {
    // Rank order, always: every rank computes bitwise the same result.
    for (i, part) in parts.into_iter().enumerate() {
        if i == 0 {
            out.copy_from_slice(&part);
        } else {
            out.iter_mut().zip(part).for_each(|(o, v)| *o = f(*o, v));
        }
    }
}

/// Reduces f64 buffers on the host, in rank order. Max and min keep the earlier value on ties
/// (`-0.0` against `0.0`), so every rank gets the same bits.
fn reduce_f64(out: &mut [f64], parts: Vec<Vec<f64>>, op: ReduceOp) {
    match op {
        ReduceOp::Sum => reduce(out, parts, |a, b| a + b),
        ReduceOp::Max => reduce(out, parts, |a, b| if b > a { b } else { a }),
        ReduceOp::Min => reduce(out, parts, |a, b| if b < a { b } else { a }),
    }
}

/// Reduces u64 buffers on the host, in rank order; sums wrap.
fn reduce_u64(out: &mut [u64], parts: Vec<Vec<u64>>, op: ReduceOp) {
    match op {
        ReduceOp::Sum => reduce(out, parts, u64::wrapping_add),
        ReduceOp::Max => reduce(out, parts, u64::max),
        ReduceOp::Min => reduce(out, parts, u64::min),
    }
}

impl Collective for WorldRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_f64(&self, buf: &mut [f64], op: ReduceOp) -> Result<()> {
        let (_, parts) = self.gather_f64(buf, op)?;
        reduce_f64(buf, parts, op);
        Ok(())
    }

    fn all_reduce_u64(&self, buf: &mut [u64], op: ReduceOp) -> Result<()> {
        let (_, parts) = self.gather_u64(buf, op)?;
        reduce_u64(buf, parts, op);
        Ok(())
    }

    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let parts = self.exchange(Part::Bytes(mine.to_vec()))?;
        Ok(parts
            .into_iter()
            .map(|p| match p {
                Part::Bytes(b) => b,
                _ => unreachable!("check_alike made every part an all-gather"),
            })
            .collect())
    }

    fn barrier(&self) -> Result<()> {
        self.exchange(Part::Barrier).map(|_| ())
    }
}
