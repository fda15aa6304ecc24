//! Checkpoints are untrusted input: a state that does not fit the plan it resumes is an
//! `Error::Checkpoint` naming the field, never a panic, an underflow or an index out of bounds.
//! Also the configuration checks that keep a loader from failing in a worker.

mod common;

use std::sync::Arc;

use common::{mixture, write_dataset};
use proptest::prelude::*;
use shardflow::collate::{CollateConfig, Padding};
use shardflow::loader::{Loader, LoaderBuilder, LoaderState, Source};
use shardflow::metrics::MetricsConfig;
use shardflow::order::{MixtureMode, OrderConfig};
use shardflow::transform::{TransformConfig, TruncatePolicy};
use shardflow::{Dataset, Dtype, Error, Shard, TokenSlice};

fn loader(sources: &[Source], pack: bool, mode: MixtureMode) -> LoaderBuilder<i32> {
    LoaderBuilder::new(sources.to_vec())
        .with_order(OrderConfig {
            seed: 5,
            mixture: mode,
            local_batch: 3,
            ..Default::default()
        })
        .with_collate(CollateConfig {
            seq_len: 24,
            padding: Padding::Multiple(4),
            pack,
            ..Default::default()
        })
        .with_transform(TransformConfig {
            eos: Some(7),
            ..Default::default()
        })
        .with_workers(0)
}

/// A state after `n` batches, as JSON.
fn saved(sources: &[Source], pack: bool, mode: MixtureMode, n: usize) -> serde_json::Value {
    let mut l = loader(sources, pack, mode).build_host().unwrap();
    l.by_ref().take(n).for_each(|b| drop(b.unwrap()));
    serde_json::to_value(l.state()).unwrap()
}

/// Loads `json` as a checkpoint and resumes a loader from it; the error, if any.
fn resume(sources: &[Source], pack: bool, json: &serde_json::Value) -> Result<Loader<i32>, Error> {
    let state = LoaderState::from_json(json.to_string().as_bytes())?;
    loader(sources, pack, MixtureMode::Deterministic)
        .resume(state)
        .build_host()
}

fn checkpoint_error(sources: &[Source], pack: bool, json: &serde_json::Value) -> String {
    match resume(sources, pack, json) {
        Ok(_) => panic!("the tampered checkpoint was accepted: {json}"),
        Err(e) => {
            assert!(matches!(e, Error::Checkpoint { .. }), "{e}");
            e.to_string()
        }
    }
}

#[test]
fn tampered_fields_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let sources = mixture(dir.path());
    let good = saved(&sources, false, MixtureMode::Deterministic, 4);
    assert!(resume(&sources, false, &good).is_ok());

    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "/cursor/mixture_origin",
            serde_json::json!(1000),
            "cursor.mixture_origin: 1000 lies after the position 12",
        ),
        (
            "/cursor/datasets/web/consumed_at_origin",
            serde_json::json!(999),
            "cursor.datasets.web.consumed_at_origin: 999 is above consumed",
        ),
        (
            "/cursor/position",
            serde_json::json!(7),
            "cursor.datasets: the counts since the mixture origin add up to 12, but 7 rows",
        ),
        (
            "/position/rows_taken",
            serde_json::json!(2),
            "position: a padded stream delivers one batch per step",
        ),
        (
            "/rank",
            serde_json::json!(3),
            "rank: rank 3 is outside world size 1",
        ),
        ("/version", serde_json::json!(1), "version: version 1"),
        (
            "/metrics/config/alpha",
            serde_json::json!(1.5),
            "metrics.config: invalid configuration: metrics alpha 1.5",
        ),
    ];
    for (pointer, value, want) in cases {
        let mut bad = good.clone();
        *bad.pointer_mut(pointer).unwrap() = value;
        let msg = checkpoint_error(&sources, false, &bad);
        assert!(msg.contains(want), "{pointer}: {msg}");
    }

    // A sketch bucket outside the mapping's range (an index out of bounds in the reduce).
    let mut bad = good.clone();
    let seq_len = bad
        .pointer_mut("/metrics/entries/web/seq_len/sketch/pos/0/0")
        .unwrap();
    *seq_len = serde_json::json!(1_000_000);
    let msg = checkpoint_error(&sources, false, &bad);
    assert!(
        msg.contains("metrics.entries.web.seq_len: pos bucket 1000000 lies outside"),
        "{msg}"
    );
    // Buckets that do not add up to the count.
    let mut bad = good.clone();
    *bad.pointer_mut("/metrics/entries/web/seq_len/sketch/count")
        .unwrap() = serde_json::json!(99);
    let msg = checkpoint_error(&sources, false, &bad);
    assert!(msg.contains("the buckets hold"), "{msg}");
}

#[test]
fn a_packing_offset_past_its_document_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let sources = mixture(dir.path());
    let good = saved(&sources, true, MixtureMode::Deterministic, 3);
    assert!(resume(&sources, true, &good).is_ok());
    let mut bad = good.clone();
    *bad.pointer_mut("/position/doc_offset").unwrap() = serde_json::json!(100_000);
    let msg = checkpoint_error(&sources, true, &bad);
    assert!(
        msg.contains("position.doc_offset: 100000 tokens of a document of"),
        "{msg}"
    );
    let mut bad = good;
    *bad.pointer_mut("/position/rows_taken").unwrap() = serde_json::json!(50);
    let msg = checkpoint_error(&sources, true, &bad);
    assert!(msg.contains("position.rows_taken: 50 but step"), "{msg}");
}

/// Replaces numbers of `v` (walking it in a fixed order) by the values `mutations` gives.
fn mutate(v: &mut serde_json::Value, mutations: &mut impl Iterator<Item = (u8, i64)>) {
    match v {
        serde_json::Value::Number(n) => {
            if let Some((kind, x)) = mutations.next() {
                *n = match kind % 6 {
                    0 => return,
                    1 => (x as u64).into(),
                    2 => x.into(),
                    3 => (n.as_u64().unwrap_or(0).wrapping_add(x as u64 % 5)).into(),
                    4 => serde_json::Number::from_f64(x as f64 * 1e-3).unwrap_or(0.into()),
                    _ => (u64::MAX - (x as u64 % 3)).into(),
                };
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| mutate(x, mutations)),
        serde_json::Value::Object(o) => o.values_mut().for_each(|x| mutate(x, mutations)),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    /// Mutated checkpoints either resume (and the loader runs) or fail with an error; a panic
    /// fails the test.
    #[test]
    fn mutated_checkpoints_never_panic(
        pack in any::<bool>(),
        stochastic in any::<bool>(),
        after in 0usize..6,
        mutations in proptest::collection::vec((any::<u8>(), any::<i64>()), 1..400),
        skip in 0usize..200,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let sources = mixture(dir.path());
        let mode = if stochastic { MixtureMode::Stochastic } else { MixtureMode::Deterministic };
        let mut json = saved(&sources, pack, mode, after);
        // Leave the first `skip` numbers as they are, so mutations reach every part.
        let mut it = std::iter::repeat_n((0u8, 0i64), skip).chain(mutations);
        mutate(&mut json, &mut it);
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let state = LoaderState::from_json(json.to_string().as_bytes())?;
            let mut l = loader(&sources, pack, mode).resume(state).build_host()?;
            for b in l.by_ref().take(4) {
                b?;
            }
            let _ = l.metrics().report();
            Ok::<(), Error>(())
        }));
        prop_assert!(run.is_ok(), "a panic on {}", json);
    }
}

#[test]
fn configurations_that_cannot_work_are_refused_at_build() {
    let dir = tempfile::tempdir().unwrap();
    let sources = mixture(dir.path());
    let build = |transform: TransformConfig, metrics: Option<MetricsConfig>| {
        LoaderBuilder::<i32>::new(sources.clone())
            .with_collate(CollateConfig {
                seq_len: 2,
                ..Default::default()
            })
            .with_transform(transform)
            .with_metrics(metrics)
            .build_host()
            .err()
            .map(|e| e.to_string())
    };
    let bos_eos = TransformConfig {
        bos: Some(1),
        eos: Some(2),
        ..Default::default()
    };
    let msg = build(bos_eos.clone(), None).unwrap();
    assert!(
        msg.contains("leaves no room for content beside the 2 BOS/EOS tokens"),
        "{msg}"
    );
    let msg = build(
        TransformConfig {
            max_len: Some(1),
            eos: Some(2),
            ..Default::default()
        },
        None,
    )
    .unwrap();
    assert!(msg.contains("the longest sample, 1 tokens"), "{msg}");
    let ok = TransformConfig {
        eos: Some(2),
        ..Default::default()
    };
    assert_eq!(build(ok.clone(), None), None);
    for (metrics, want) in [
        (
            MetricsConfig {
                alpha: 0.0,
                ..Default::default()
            },
            "metrics alpha 0",
        ),
        (
            MetricsConfig {
                alpha: 1e-9,
                ..Default::default()
            },
            "must lie in [0.0001, 0.5]",
        ),
        (
            MetricsConfig {
                percentiles: vec![0.5, 95.0],
                ..Default::default()
            },
            "metrics percentile 95",
        ),
    ] {
        let msg = build(ok.clone(), Some(metrics)).unwrap();
        assert!(msg.contains(want), "{msg}");
    }
}

#[test]
fn packing_documents_that_are_all_dropped_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    // Every sample is longer than the maximum of 1, and the policy drops them.
    let sources = vec![
        Source::new("web", write_dataset(dir.path(), "web", 0, &[3, 4, 5]), 3.0),
        Source::new("code", write_dataset(dir.path(), "code", 1, &[2, 9]), 1.0),
        Source::new("books", write_dataset(dir.path(), "books", 2, &[7]), 2.0),
    ];
    for workers in [0, 2] {
        let mut l = LoaderBuilder::<i32>::new(sources.clone())
            .with_collate(CollateConfig {
                seq_len: 16,
                pack: true,
                ..Default::default()
            })
            .with_transform(TransformConfig {
                max_len: Some(1),
                truncate: TruncatePolicy::Drop,
                ..Default::default()
            })
            .with_workers(workers)
            .build_host()
            .unwrap();
        let e = l.next().unwrap().unwrap_err();
        assert!(
            e.to_string()
                .contains("a whole epoch of every dataset (web, code, books) gives empty"),
            "{e}"
        );
        assert!(l.next().is_none());
    }
}

/// A shard whose index panics when asked for a length (a broken custom `Shard`).
#[derive(Debug)]
struct Panicky;

impl Shard for Panicky {
    fn len(&self) -> usize {
        4
    }
    fn get(&self, _: usize) -> Option<TokenSlice<'_>> {
        panic!("the custom shard cannot read")
    }
    fn sequence_len(&self, _: usize) -> Option<usize> {
        panic!("the custom shard has no lengths")
    }
    fn tokens(&self) -> u64 {
        40
    }
    fn path(&self) -> &std::path::Path {
        std::path::Path::new("panicky")
    }
    fn dtype(&self) -> Dtype {
        Dtype::U16
    }
}

#[test]
fn a_panic_in_planning_is_an_error_with_or_without_worker_threads() {
    for workers in [0, 1] {
        let data = Dataset::from_shards(vec![Arc::new(Panicky) as Arc<dyn Shard>]);
        let mut l = LoaderBuilder::<i32>::new(vec![Source::new("p", data, 1.0)])
            .with_collate(CollateConfig {
                seq_len: 8,
                pack: true,
                ..Default::default()
            })
            .with_workers(workers)
            .build_host()
            .unwrap();
        let e = l.next().unwrap().unwrap_err();
        assert!(matches!(e, Error::WorkerPanic { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("in the planner: the custom shard has no lengths"),
            "{workers} workers: {e}"
        );
    }
}
