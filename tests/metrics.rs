//! Metrics: kinds, the sketch against exact values, the fused reduce over in-process worlds.

use std::time::Duration;

use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use shardflow::Error;
use shardflow::collective::{Collective, Counting, Solo, in_process};
use shardflow::metrics::{Aggregator, Kind, Mapping, Metric, ReportValue, Sketch};

/// Runs `f(rank, collective)` on every rank of an in-process world, one thread each.
fn on_world<T: Send>(
    n: usize,
    f: impl Fn(usize, &Counting<shardflow::collective::WorldRank>) -> T + Sync,
) -> Vec<T> {
    let ranks = in_process(n, Duration::from_secs(20));
    std::thread::scope(|s| {
        let handles: Vec<_> = ranks
            .into_iter()
            .enumerate()
            .map(|(r, c)| {
                let f = &f;
                s.spawn(move || f(r, &Counting::new(c)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The exact nearest-rank quantile of `values`.
fn exact_quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn within_alpha(got: f64, want: f64, alpha: f64) -> bool {
    (got - want).abs() <= alpha * want.abs() + 1e-9
}

/// Rank r's values of `latency`: different sizes and ranges per rank; rank `empty` records none.
fn rank_values(r: usize, empty: usize) -> Vec<f64> {
    if r == empty {
        return Vec::new();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(r as u64);
    (0..(200 + 150 * r))
        .map(|_| {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            (u * 12.0 - 3.0).exp() * (1.0 + r as f64)
        })
        .collect()
}

fn record_rank(agg: &mut Aggregator, r: usize, empty: usize) {
    if r == empty {
        return;
    }
    for v in rank_values(r, empty) {
        agg.record("web", "latency", Kind::Distribution, v).unwrap();
    }
    agg.record("web", "tokens", Kind::Sum, 100.0 * (r + 1) as f64)
        .unwrap();
    // Unequal counts: rank r records r+1 values of value r.
    for _ in 0..=r {
        agg.record("web", "loss", Kind::Mean, r as f64).unwrap();
    }
    agg.record("web", "longest", Kind::Max, 10.0 * r as f64)
        .unwrap();
    agg.record("web", "shortest", Kind::Min, 5.0 - r as f64)
        .unwrap();
    agg.record_category("web", "lang", "en").unwrap();
    if r % 2 == 1 {
        agg.record_category("web", "lang", &format!("only-rank-{r}"))
            .unwrap();
    }
    agg.record("code", "files", Kind::Sum, r as f64).unwrap();
}

#[test]
fn reduce_over_worlds_of_2_and_4_matches_the_union() {
    for world in [2usize, 4] {
        let empty = world - 1; // the last rank records nothing
        let reports = on_world(world, |r, c| {
            let mut agg = Aggregator::default();
            record_rank(&mut agg, r, empty);
            let first = agg.reduce(c).unwrap();
            // A second reduce with nothing new: exactly three all-reduces (the header, the SUM
            // and the MAX buffers), no exchange.
            let before = c.counts();
            let second = agg.reduce(c).unwrap();
            let steady = c.counts();
            assert_eq!(steady.all_reduces - before.all_reduces, 3);
            assert_eq!(steady.all_gathers, before.all_gathers);
            assert_eq!(first.report(), second.report());
            (first.report(), before.total())
        });
        // Every rank has bitwise the same result.
        for (report, first_calls) in &reports {
            assert_eq!(report, &reports[0].0);
            assert!(
                *first_calls <= 4,
                "the first reduce takes at most 4 collectives"
            );
        }
        let report = &reports[0].0;
        let live: Vec<usize> = (0..world).filter(|&r| r != empty).collect();
        let sum: f64 = live.iter().map(|&r| 100.0 * (r + 1) as f64).sum();
        assert_eq!(report.number("web", "tokens"), Some(sum));
        let (num, den) = live.iter().fold((0.0, 0.0), |(n, d), &r| {
            (n + (r * (r + 1)) as f64, d + (r + 1) as f64)
        });
        assert_eq!(
            report.number("web", "loss"),
            Some(num / den),
            "weighted by count, not a mean of means"
        );
        assert_eq!(
            report.number("web", "longest"),
            Some(10.0 * *live.last().unwrap() as f64)
        );
        assert_eq!(
            report.number("web", "shortest"),
            Some(5.0 - *live.last().unwrap() as f64)
        );
        let Some(ReportValue::Counts(langs)) = report.get("web", "lang") else {
            panic!("{report:?}")
        };
        assert_eq!(langs["en"], live.len() as u64);
        for r in &live {
            assert_eq!(
                langs.get(&format!("only-rank-{r}")).copied(),
                (r % 2 == 1).then_some(1)
            );
        }
        // The distribution against exact values over the union of the ranks' values.
        let all: Vec<f64> = live.iter().flat_map(|&r| rank_values(r, empty)).collect();
        let Some(ReportValue::Stats(stats)) = report.get("web", "latency") else {
            panic!()
        };
        assert_eq!(stats["count"], all.len() as f64);
        assert_eq!(
            stats["min"],
            all.iter().copied().fold(f64::INFINITY, f64::min)
        );
        assert_eq!(
            stats["max"],
            all.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        );
        assert!(
            (stats["mean"] - all.iter().sum::<f64>() / all.len() as f64).abs()
                < 1e-9 * stats["mean"]
        );
        for (name, q) in [("p05", 0.05), ("p50", 0.5), ("p95", 0.95)] {
            let want = exact_quantile(&all, q);
            assert!(
                within_alpha(stats[name], want, 0.01),
                "{name}: {} vs {want}",
                stats[name]
            );
        }
    }
}

#[test]
fn new_keys_later_take_four_collectives_at_most() {
    on_world(3, |r, c| {
        let mut agg = Aggregator::default();
        agg.record("a", "x", Kind::Sum, 1.0).unwrap();
        agg.reduce(c).unwrap();
        let before = c.counts();
        if r == 2 {
            agg.record("b", "late", Kind::Max, 7.0).unwrap();
        }
        let global = agg.reduce(c).unwrap();
        let used = c.counts().total() - before.total();
        assert_eq!(used, 4, "header, gather of new names, SUM, MAX");
        assert_eq!(global.report().number("b", "late"), Some(7.0));
        assert_eq!(global.report().number("a", "x"), Some(3.0));
    });
}

#[test]
fn ranks_that_disagree_on_a_kind_get_an_error() {
    let errors = on_world(2, |r, c| {
        let mut agg = Aggregator::default();
        let kind = if r == 0 { Kind::Sum } else { Kind::Max };
        agg.record("web", "clash", kind, 1.0).unwrap();
        agg.reduce(c).unwrap_err().to_string()
    });
    for e in errors {
        assert!(
            e.contains("dataset web metric clash: rank 0 records it as Sum but rank 1 as Max"),
            "{e}"
        );
    }
}

#[test]
fn ranks_with_different_sketch_settings_get_an_error_naming_them() {
    // Same keys, so the buffers have the same length and an engine would sum them silently;
    // the layout fingerprint in the header tells the ranks apart, before any buffer is reduced.
    let results = on_world(3, |r, c| {
        let alpha = if r == 2 { 0.0100001 } else { 0.01 };
        let mut agg = Aggregator::new(shardflow::metrics::MetricsConfig {
            alpha,
            ..Default::default()
        });
        agg.record("web", "tokens", Kind::Sum, 10.0).unwrap();
        let result = agg.reduce(c).map(|_| ());
        (result, c.counts())
    });
    for (r, (result, counts)) in results.iter().enumerate() {
        // The header's all-reduce, then the all-gather that names the ranks: no buffer.
        assert_eq!((counts.all_reduces, counts.all_gathers), (1, 1), "rank {r}");
        let err = result.as_ref().unwrap_err().to_string();
        assert!(err.contains("reduce layouts differ"), "rank {r}: {err}");
        assert!(
            err.contains("layout fingerprint ranges over"),
            "rank {r}: {err}"
        );
        assert!(err.contains("rank 2 (mapping"), "rank {r}: {err}");
        assert!(!err.contains("rank 1 (mapping"), "rank {r}: {err}");
    }
}

#[test]
fn ranks_with_different_buffer_lengths_or_calls_are_refused_before_the_buffers() {
    // Rank 1 has a category more in its agreed layout (a longer SUM buffer): an engine such as
    // NCCL would reduce buffers of different lengths. The header refuses first.
    let results = on_world(3, |r, c| {
        let mut agg = Aggregator::default();
        agg.record("web", "tokens", Kind::Sum, 1.0).unwrap();
        agg.reduce(c).unwrap();
        if r == 1 {
            agg.record_category("web", "lang", "en").unwrap();
            agg.reduce(&Solo).unwrap(); // agreed alone: its layout now differs
        }
        let before = c.counts();
        let err = agg.reduce(c).unwrap_err();
        (err, c.counts().all_reduces - before.all_reduces)
    });
    for (r, (err, all_reduces)) in results.iter().enumerate() {
        assert_eq!(*all_reduces, 1, "rank {r}: the header only");
        let text = err.to_string();
        assert!(matches!(err, Error::CollectiveMismatch { .. }), "{text}");
        assert!(
            text.contains("SUM buffer length ranges over 1..=2"),
            "rank {r}: {text}"
        );
        assert!(
            text.contains("reduce call ranges over 1..=2"),
            "rank {r}: {text}"
        );
        assert!(text.contains("rank 1 (mapping"), "rank {r}: {text}");
        assert!(!text.contains("rank 2 (mapping"), "rank {r}: {text}");
    }
    // Ranks at different reduce calls with the same layout: refused, naming the call numbers.
    let results = on_world(2, |r, c| {
        let mut agg = Aggregator::default();
        agg.record("web", "tokens", Kind::Sum, 1.0).unwrap();
        agg.reduce(c).unwrap();
        if r == 0 {
            agg.reduce(&Solo).unwrap();
        }
        agg.reduce(c).unwrap_err().to_string()
    });
    for text in results {
        assert!(text.contains("reduce call ranges over 1..=2"), "{text}");
        assert!(!text.contains("buffer length ranges"), "{text}");
        assert!(text.contains("rank 1 (mapping"), "{text}");
        assert!(text.contains("; reduce call 1)"), "{text}");
    }
}

#[test]
fn a_missing_rank_is_a_timeout_naming_it() {
    let mut ranks = in_process(3, Duration::from_millis(200));
    let _absent = ranks.pop().unwrap(); // rank 2 never calls
    let errors: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = ranks
            .iter()
            .map(|c| {
                s.spawn(move || {
                    c.all_reduce_f64(&mut [1.0], shardflow::collective::ReduceOp::Sum)
                        .unwrap_err()
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap().to_string())
            .collect()
    });
    for e in errors {
        assert!(e.contains("ranks [2] did not arrive"), "{e}");
    }
}

#[test]
fn state_round_trips_through_json() {
    let mut agg = Aggregator::default();
    record_rank(&mut agg, 1, 9);
    agg.record("web", "latency", Kind::Distribution, -3.5)
        .unwrap();
    agg.record("web", "latency", Kind::Distribution, 0.0)
        .unwrap();
    agg.reduce(&Solo).unwrap();
    let json = serde_json::to_string(&agg.state()).unwrap();
    let back = Aggregator::from_state(serde_json::from_str(&json).unwrap());
    assert_eq!(back, agg);
    assert_eq!(back.report(), agg.report());
    assert!(agg.report().flat().contains_key("web/latency/p95"));
    let mut reset = agg.clone();
    reset.reset();
    assert!(reset.report().datasets.is_empty());
}

#[test]
fn bad_values_and_kind_conflicts_are_errors() {
    let mut agg = Aggregator::default();
    for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let e = agg.record("web", "loss", Kind::Mean, v).unwrap_err();
        assert!(
            matches!(&e, Error::Metric { dataset, metric, .. } if dataset == "web" && metric == "loss"),
            "{e}"
        );
        assert!(e.to_string().contains("is not finite"), "{e}");
    }
    agg.record("web", "loss", Kind::Mean, 1.0).unwrap();
    let e = agg.record("web", "loss", Kind::Sum, 1.0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "dataset web metric loss: recorded as Mean before, now as Sum"
    );
    let e = agg
        .update(&Metric::category("web", "loss", "en"))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("recorded as Mean before, now as Categorical"),
        "{e}"
    );
    let mut other = Aggregator::default();
    other.record("web", "loss", Kind::Max, 1.0).unwrap();
    assert!(agg.merge(&other).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Percentiles within alpha of the exact nearest-rank values, over mixed signs, zeros and a
    /// wide range of magnitudes, for several accuracies.
    #[test]
    fn sketch_quantiles_are_within_alpha(
        values in proptest::collection::vec(
            prop_oneof![-1e6f64..-1e-3, Just(0.0), 1e-3f64..1e9, 0.5f64..2.0], 1..400),
        alpha in prop_oneof![Just(0.01), Just(0.02), Just(0.05)],
        q in 0.0f64..=1.0,
    ) {
        let map = Mapping::new(alpha);
        let mut sketch = Sketch::default();
        values.iter().for_each(|&v| sketch.add(&map, v));
        let got = sketch.quantile(&map, q).unwrap();
        let want = exact_quantile(&values, q);
        prop_assert!(within_alpha(got, want, alpha), "q {q}: {got} vs {want}");
        // Merging two halves equals adding everything to one sketch.
        let (a, b) = values.split_at(values.len() / 2);
        let (mut x, mut y) = (Sketch::default(), Sketch::default());
        a.iter().for_each(|&v| x.add(&map, v));
        b.iter().for_each(|&v| y.add(&map, v));
        x.merge(&y);
        prop_assert_eq!(x.pos, sketch.pos);
        prop_assert_eq!(x.count, sketch.count);
    }
}
