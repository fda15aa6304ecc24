//! The run spec and config agreement: every rank must hold the same configuration before the
//! first batch, and a run's name follows from it, never from chance.
//!
//! One [`agree`], over whatever connects the ranks ([`Over`]: the [`FileStore`] of separate
//! processes, or any [`Collective`]): every rank gathers every rank's [`RunSpec`] (the canonical
//! config, its hash, the run name; an all-gather, since a sum of hashes can hide a mismatch),
//! checks that rank 0's hash and name follow from its config and seed, and fails, on every rank,
//! naming the ranks whose config differs from rank 0's and the first key where they do.

use serde_json::Value;

use super::{Collective, FileStore};
use crate::error::{Error, Result};
use crate::hash::xxh64;

/// What rank 0 publishes and every rank checks.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunSpec {
    /// The configuration, canonical: JSON objects with sorted keys.
    pub config: Value,
    /// XXH64 of the canonical config's compact JSON.
    pub hash: u64,
    /// `run-` and 16 hex digits of a hash of the config and the seed: every rank computes it.
    pub run_name: String,
    /// The seed the name includes.
    pub seed: u64,
}

impl RunSpec {
    /// The spec of `config` (anything serializable: a loader config, or a struct that holds it
    /// beside the user's own sections) with `seed`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the config does not serialize to JSON.
    pub fn new(config: &impl serde::Serialize, seed: u64) -> Result<Self> {
        let config = serde_json::to_value(config)
            .map_err(|e| Error::Config(format!("the config does not serialize to JSON: {e}")))?;
        // serde_json's maps are sorted by key: this value prints canonically.
        let hash = canonical_hash(&config);
        let mut named = serde_json::to_vec(&config).expect("a JSON value serializes");
        named.extend_from_slice(&seed.to_le_bytes());
        Ok(RunSpec {
            config,
            hash,
            run_name: format!("run-{:016x}", xxh64(&named)),
            seed,
        })
    }

    /// Checks a spec read from the store: its hash and name follow from its config and seed.
    fn check(&self) -> std::result::Result<(), String> {
        let again = RunSpec::new(&self.config, self.seed).map_err(|e| e.to_string())?;
        if again.hash != self.hash || again.run_name != self.run_name {
            return Err(format!(
                "the published spec says hash {:016x} and name {}, its config gives {:016x} and \
                 {}",
                self.hash, self.run_name, again.hash, again.run_name
            ));
        }
        Ok(())
    }
}

fn canonical_hash(config: &Value) -> u64 {
    xxh64(&serde_json::to_vec(config).expect("a JSON value serializes"))
}

/// What connects the ranks that must agree.
#[derive(Clone, Copy)]
pub enum Over<'a> {
    /// The file store of separate processes (before any collective exists).
    Store(&'a FileStore),
    /// A collective's all-gather (MPI, NCCL, an in-process world).
    Collective(&'a dyn Collective),
}

impl<'a> From<&'a FileStore> for Over<'a> {
    fn from(store: &'a FileStore) -> Self {
        Over::Store(store)
    }
}

impl<'a> From<&'a dyn Collective> for Over<'a> {
    fn from(collective: &'a dyn Collective) -> Self {
        Over::Collective(collective)
    }
}

impl<'a, C: Collective> From<&'a C> for Over<'a> {
    fn from(collective: &'a C) -> Self {
        Over::Collective(collective)
    }
}

/// Gathers every rank's run spec of `mine` over `over` and checks that every rank's config
/// equals rank 0's. Returns rank 0's spec, whose run name every rank derives from the config.
///
/// # Errors
///
/// [`Error::ConfigMismatch`] on every rank when any rank's config differs from rank 0's,
/// naming those ranks and the first differing key; [`Error::Store`] for rank 0's spec that
/// does not check out or parse; the store's timeouts or the collective's errors.
pub fn agree<'a>(over: impl Into<Over<'a>>, mine: &RunSpec) -> Result<RunSpec> {
    let bytes = serde_json::to_vec(mine).expect("a RunSpec serializes");
    let over = over.into();
    let all = match over {
        Over::Store(store) => store.gather("run_spec", &bytes)?,
        Over::Collective(c) => c.all_gather_bytes(&bytes)?,
    };
    let bad = |rank: usize, reason: String| match over {
        Over::Store(store) => Error::Store {
            path: store.dir().join(format!("run_spec.{rank}")),
            reason,
        },
        Over::Collective(_) => Error::ConfigMismatch {
            ranks: vec![rank],
            key: "(run spec)".into(),
            reason,
        },
    };
    let spec: RunSpec = serde_json::from_slice(&all[0])
        .map_err(|e| bad(0, format!("rank 0's run spec does not parse: {e}")))?;
    spec.check().map_err(|reason| bad(0, reason))?;
    let configs: Vec<Vec<u8>> = all
        .iter()
        .enumerate()
        .map(|(r, b)| {
            let theirs: RunSpec = serde_json::from_slice(b)
                .map_err(|e| bad(r, format!("rank {r}'s run spec does not parse: {e}")))?;
            Ok(serde_json::to_vec(&theirs.config).expect("a JSON value serializes"))
        })
        .collect::<Result<_>>()?;
    compare(&spec.config, &configs)?;
    Ok(spec)
}

fn parse_rank(all: &[Vec<u8>], rank: usize) -> Result<Value> {
    serde_json::from_slice(&all[rank]).map_err(|e| Error::ConfigMismatch {
        ranks: vec![rank],
        key: "(whole config)".into(),
        reason: format!("rank {rank}'s config does not parse: {e}"),
    })
}

/// Compares every rank's config (JSON bytes) with `reference` (rank 0's).
fn compare(reference: &Value, all: &[Vec<u8>]) -> Result<()> {
    let want = canonical_hash(reference);
    let mut differ = Vec::new();
    let mut first_key = None;
    for r in 0..all.len() {
        let theirs = parse_rank(all, r)?;
        if canonical_hash(&theirs) != want {
            if first_key.is_none() {
                first_key = Some((r, first_difference(reference, &theirs, String::new())));
            }
            differ.push(r);
        }
    }
    match first_key {
        None => Ok(()),
        Some((r, (key, ours, theirs))) => Err(Error::ConfigMismatch {
            ranks: differ,
            key: key.clone(),
            reason: format!("rank 0 has {key} = {ours}, rank {r} has {theirs}"),
        }),
    }
}

/// The first key path (`order.seed`, `datasets[1].weight`) where `a` and `b` differ, with both
/// values as JSON (`(absent)` for a missing key).
fn first_difference(a: &Value, b: &Value, at: String) -> (String, String, String) {
    let show = |v: Option<&Value>| v.map_or("(absent)".to_string(), |v| v.to_string());
    let join = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) if p == q => {}
                    (Some(p), Some(q)) => return first_difference(p, q, join(k)),
                    (p, q) => return (join(k), show(p), show(q)),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                if p != q {
                    return first_difference(p, q, format!("{at}[{i}]"));
                }
            }
        }
        _ => {}
    }
    let at = if at.is_empty() { "(root)".into() } else { at };
    (at, a.to_string(), b.to_string())
}
