//! The run spec and config agreement: every rank must hold the same configuration before the
//! first batch, and a run's name follows from it, never from chance.
//!
//! Rank 0 publishes the [`RunSpec`] (the canonical config, its hash, the run name, and the NCCL
//! unique id when the CUDA path needs one) through the [`FileStore`]; every other rank reads it,
//! checks it, and derives the same name on its own. Then every rank gathers every rank's config
//! (an all-gather: a sum of hashes can hide a mismatch) and fails, on every rank, naming the
//! ranks that differ from rank 0 and the first key where they do.

use serde_json::Value;

use super::{Collective, FileStore};
use crate::error::{Error, Result};
use crate::shard::trailer::xxh64;

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
    /// The NCCL unique id (128 bytes), when the CUDA path needs one.
    pub nccl_id: Option<Vec<u8>>,
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
            nccl_id: None,
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

/// Publishes (rank 0) or reads (the others) the run spec of `mine` through `store`, then checks
/// that every rank's config equals rank 0's. Returns rank 0's spec, whose run name every rank
/// also derived on its own.
///
/// # Errors
///
/// [`Error::ConfigMismatch`] on every rank when any rank's config differs from rank 0's,
/// naming those ranks and the first differing key; [`Error::Store`] for a spec that does not
/// check out; the store's timeouts.
pub fn agree(store: &FileStore, mine: &RunSpec) -> Result<RunSpec> {
    let spec = if store.rank() == 0 {
        let bytes = serde_json::to_vec(mine).expect("a RunSpec serializes");
        store.set("run_spec", &bytes)?;
        mine.clone()
    } else {
        let bytes = store.wait("run_spec")?;
        let spec: RunSpec = serde_json::from_slice(&bytes).map_err(|e| Error::Store {
            path: store.dir().join("run_spec"),
            reason: format!("the run spec does not parse: {e}"),
        })?;
        spec.check().map_err(|reason| Error::Store {
            path: store.dir().join("run_spec"),
            reason,
        })?;
        spec
    };
    let mine_json = serde_json::to_vec(&mine.config).expect("a JSON value serializes");
    let all = store.gather("config", &mine_json)?;
    compare(&spec.config, &all)?;
    Ok(spec)
}

/// [`agree`]'s check over a collective: every rank's config gathered through
/// `collective.all_gather_bytes`, compared with rank 0's.
///
/// # Errors
///
/// [`Error::ConfigMismatch`] on every rank; the collective's errors.
pub fn agree_over(collective: &dyn Collective, mine: &RunSpec) -> Result<()> {
    let bytes = serde_json::to_vec(&mine.config).expect("a JSON value serializes");
    let all = collective.all_gather_bytes(&bytes)?;
    let first: Value = parse_rank(&all, 0)?;
    compare(&first, &all)
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
