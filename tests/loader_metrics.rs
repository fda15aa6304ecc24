//! The loader's metrics: the standard metric transform, user metrics, and totals that survive
//! checkpoint and resume and reduce across ranks.

mod common;

use std::time::Duration;

use common::{mixture, write_dataset};
use shardflow::collate::{CollateConfig, Padding};
use shardflow::collective::in_process;
use shardflow::loader::{Loader, LoaderBuilder, LoaderState, Source};
use shardflow::metrics::{Kind, ReportValue};
use shardflow::order::{OrderConfig, Shuffle, StreamLimit};
use shardflow::transform::{BadSamplePolicy, TransformConfig};

#[test]
fn standard_metrics_count_exactly() {
    let dir = tempfile::tempdir().unwrap();
    // Lengths 3, 10, 5, 7; max length 6 cuts samples 1 and 3; one epoch and a half.
    let data = write_dataset(dir.path(), "d", 0, &[3, 10, 5, 7]);
    let loader = LoaderBuilder::<i32>::new(vec![Source::new("d", data, 1.0)])
        .with_order(OrderConfig {
            shuffle: Shuffle::None,
            local_batch: 2,
            limit: StreamLimit::Epochs(1.5),
            ..Default::default()
        })
        .with_collate(CollateConfig {
            seq_len: 6,
            padding: Padding::Longest,
            ..Default::default()
        })
        .with_user_metric(|_, ids, m| {
            m.record("first_id", Kind::Min, ids[0] as f64)
                .map_err(|e| e.to_string())
        })
        .with_workers(1)
        .build_host()
        .unwrap();
    let mut loader = loader;
    assert_eq!(loader.by_ref().count(), 3, "6 samples in batches of 2");
    let r = loader.metrics().report();
    // Epoch 0: samples 0..4, epoch 1: samples 0, 1 (sample 2 of epoch 1 is not reached).
    assert_eq!(r.number("d", "samples_seen"), Some(6.0));
    assert_eq!(
        r.number("d", "tokens_seen"),
        Some((3 + 6 + 5 + 6 + 3 + 6) as f64)
    );
    assert_eq!(
        r.number("d", "samples_truncated"),
        Some(3.0),
        "samples 1, 3, then 1 again"
    );
    assert_eq!(r.number("d", "samples_failed"), Some(0.0));
    assert_eq!(r.number("d", "epoch"), Some(1.0));
    assert_eq!(r.number("d", "first_id"), Some(0.0));
    let Some(ReportValue::Stats(s)) = r.get("d", "seq_len") else {
        panic!("{r:?}")
    };
    assert_eq!(
        (s["count"], s["min"], s["max"], s["sum"]),
        (6.0, 3.0, 6.0, 29.0)
    );
    assert!((s["p50"] - 5.0).abs() <= 0.05, "{s:?}");
}

#[test]
fn skipped_samples_count_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), "d", 0, &[3, 4, 5, 6]);
    let mut loader = LoaderBuilder::<i32>::new(vec![Source::new("d", data, 1.0)])
        .with_order(OrderConfig {
            shuffle: Shuffle::None,
            local_batch: 4,
            limit: StreamLimit::Epochs(1.0),
            ..Default::default()
        })
        .with_transform(TransformConfig {
            bad_samples: BadSamplePolicy::Skip { max_per_epoch: 9 },
            ..Default::default()
        })
        .with_user_transform(|info, _| {
            if info.sample == 1 {
                Err("bad".into())
            } else {
                Ok(())
            }
        })
        .with_workers(0)
        .build_host()
        .unwrap();
    loader.by_ref().for_each(|b| drop(b.unwrap()));
    let r = loader.metrics().report();
    assert_eq!(r.number("d", "samples_failed"), Some(1.0));
    assert_eq!(r.number("d", "samples_seen"), Some(3.0));
    assert_eq!(r.number("d", "tokens_seen"), Some(14.0));
}

/// A loader of rank `rank` in a world of `world` ranks sharing a global batch of 8 rows.
fn rank_loader(
    sources: &[Source],
    world: usize,
    rank: usize,
    state: Option<LoaderState>,
) -> Loader<i32> {
    let b = LoaderBuilder::new(sources.to_vec())
        .with_order(OrderConfig {
            seed: 4,
            world,
            rank,
            local_batch: 8 / world,
            ..Default::default()
        })
        .with_collate(CollateConfig {
            seq_len: 40,
            padding: Padding::Multiple(8),
            ..Default::default()
        })
        .with_workers(rank % 2 + 1);
    match state {
        Some(s) => b.resume(s),
        None => b,
    }
    .build_host()
    .unwrap()
}

#[test]
fn reduce_after_resume_equals_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let sources = mixture(dir.path());
    let world = in_process(2, Duration::from_secs(20));
    let reports: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = world
            .iter()
            .enumerate()
            .map(|(rank, c)| {
                let sources = &sources;
                s.spawn(move || {
                    let mut whole = rank_loader(sources, 2, rank, None);
                    whole.by_ref().take(30).for_each(|b| drop(b.unwrap()));
                    let uninterrupted = whole.metrics_mut().reduce(c).unwrap().report();

                    let mut first = rank_loader(sources, 2, rank, None);
                    first.by_ref().take(12).for_each(|b| drop(b.unwrap()));
                    let json = serde_json::to_string(&first.state()).unwrap();
                    drop(first);
                    let state: LoaderState = serde_json::from_str(&json).unwrap();
                    let mut resumed = rank_loader(sources, 2, rank, Some(state));
                    resumed.by_ref().take(18).for_each(|b| drop(b.unwrap()));
                    assert_eq!(
                        resumed.metrics().report(),
                        whole.metrics().report(),
                        "rank {rank} alone"
                    );
                    let after_resume = resumed.metrics_mut().reduce(c).unwrap().report();
                    (uninterrupted, after_resume)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (uninterrupted, after_resume) in &reports {
        assert_eq!(uninterrupted, after_resume);
        assert_eq!(
            uninterrupted, &reports[0].0,
            "every rank has the same global totals"
        );
    }
    let total: f64 = ["web", "code", "books"]
        .iter()
        .map(|d| reports[0].0.number(d, "samples_seen").unwrap())
        .sum();
    assert_eq!(total, 30.0 * 2.0 * 4.0, "30 steps x 2 ranks x 4 rows");
}

/// Runs `world` ranks on threads, each through `f(rank, collective)`.
fn on_world<T: Send>(
    world: usize,
    f: impl Fn(usize, &shardflow::collective::WorldRank) -> T + Sync,
) -> Vec<T> {
    let ranks = in_process(world, Duration::from_secs(20));
    std::thread::scope(|s| {
        let handles: Vec<_> = ranks
            .iter()
            .enumerate()
            .map(|(rank, c)| {
                let f = &f;
                s.spawn(move || f(rank, c))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn a_world_checkpoint_resumed_with_another_world_size_keeps_the_reduced_totals() {
    let dir = tempfile::tempdir().unwrap();
    let sources = mixture(dir.path());
    let (steps, at) = (20, 7);
    let uninterrupted = on_world(4, |rank, c| {
        let mut l = rank_loader(&sources, 4, rank, None);
        l.by_ref().take(steps).for_each(|b| drop(b.unwrap()));
        l.metrics_mut().reduce(c).unwrap().report()
    });
    // Four ranks take 7 steps and checkpoint the world's totals; each also keeps its own state.
    let saved = on_world(4, |rank, c| {
        let mut l = rank_loader(&sources, 4, rank, None);
        l.by_ref().take(at).for_each(|b| drop(b.unwrap()));
        (l.checkpoint(c).unwrap(), l.state())
    });
    // Every rank's world checkpoint holds the same totals.
    assert!(saved.iter().all(|(w, _)| w.metrics == saved[0].0.metrics));

    // Two ranks continue the global stream from it; the reduce then gives the uninterrupted totals.
    let json = serde_json::to_string(&saved[0].0).unwrap();
    let resumed = on_world(2, |rank, c| {
        let state = LoaderState::from_json(json.as_bytes()).unwrap();
        let mut l = rank_loader(&sources, 2, rank, Some(state));
        l.by_ref().take(steps - at).for_each(|b| drop(b.unwrap()));
        l.metrics_mut().reduce(c).unwrap().report()
    });
    for r in &resumed {
        assert_eq!(r, &uninterrupted[0]);
    }
    let samples: f64 = ["web", "code", "books"]
        .iter()
        .map(|d| resumed[0].number(d, "samples_seen").unwrap())
        .sum();
    assert_eq!(samples, (steps * 8) as f64);

    // A rank's own state cannot move to a world of another size while metrics are on.
    let own = saved[0].1.clone();
    let e = LoaderBuilder::<i32>::new(sources.clone())
        .with_order(OrderConfig {
            seed: 4,
            world: 2,
            local_batch: 4,
            ..Default::default()
        })
        .with_collate(CollateConfig {
            seq_len: 40,
            padding: Padding::Multiple(8),
            ..Default::default()
        })
        .resume(own)
        .build_host()
        .err()
        .unwrap();
    let msg = e.to_string();
    assert!(
        msg.contains("holds the metric totals of rank 0 of 4, and this loader is rank 0 of 2"),
        "{msg}"
    );
    assert!(msg.contains("Loader::checkpoint"), "{msg}");
}

#[test]
fn skipped_lists_the_samples_the_last_batch_skipped() {
    use shardflow::collate::DocRef;
    let dir = tempfile::tempdir().unwrap();
    // Samples 1 and 4 fail; batches of 2 in order: {0, 1}, {2, 3}, {4, 5}.
    let data = write_dataset(dir.path(), "d", 0, &[3, 4, 5, 6, 7, 8]);
    let mut loader = LoaderBuilder::<i32>::new(vec![Source::new("d", data, 1.0)])
        .with_order(OrderConfig {
            shuffle: Shuffle::None,
            local_batch: 2,
            limit: StreamLimit::Epochs(1.0),
            ..Default::default()
        })
        .with_transform(TransformConfig {
            bad_samples: BadSamplePolicy::Skip { max_per_epoch: 9 },
            ..Default::default()
        })
        .with_user_transform(|info, _| match info.sample {
            1 | 4 => Err("bad".into()),
            _ => Ok(()),
        })
        .with_workers(2)
        .build_host()
        .unwrap();
    assert!(loader.skipped().is_empty(), "no batch yet");
    let mut seen = Vec::new();
    while let Some(batch) = loader.next() {
        let batch = batch.unwrap();
        let skipped: Vec<(u32, u64, u64, u32, u32)> = loader
            .skipped()
            .iter()
            .map(|d| (d.dataset, d.sample, d.epoch, d.len, d.flags))
            .collect();
        // The batch's own rows say the same.
        let in_batch: Vec<u64> = batch
            .docs
            .iter()
            .filter(|d| d.flags & DocRef::SKIPPED != 0)
            .map(|d| d.sample)
            .collect();
        assert_eq!(
            skipped.iter().map(|s| s.1).collect::<Vec<_>>(),
            in_batch,
            "step {}",
            loader.step()
        );
        seen.push((loader.step(), skipped));
    }
    let s = DocRef::SKIPPED;
    assert_eq!(
        seen,
        vec![
            (1, vec![(0, 1, 0, 0, s)]),
            (2, vec![]),
            (3, vec![(0, 4, 0, 0, s)]),
        ]
    );
    assert_eq!(loader.stats().skipped, 2);
}

#[test]
fn losses_recorded_without_burn_merge_with_the_data_metrics() {
    use shardflow::metrics::{Aggregator, loss_names, record_loss_values};
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), "d", 0, &[3, 4, 5, 6]);
    let mut loader = LoaderBuilder::<i32>::new(vec![Source::new("d", data, 1.0)])
        .with_order(OrderConfig {
            shuffle: Shuffle::None,
            local_batch: 2,
            limit: StreamLimit::Epochs(1.0),
            ..Default::default()
        })
        .with_workers(0)
        .build_host()
        .unwrap();
    let names = loader.plan().names().to_vec();
    let mut losses = Aggregator::default();
    for batch in loader.by_ref() {
        let batch = batch.unwrap();
        let per_row: Vec<f64> = batch.docs.iter().map(|d| d.sample as f64).collect();
        record_loss_values(&mut losses, &names, &batch.docs, &per_row).unwrap();
    }
    let mut all = loader.metrics().clone();
    all.merge(&losses).unwrap();
    let r = all.report();
    assert_eq!(r.number("d", "samples_seen"), Some(4.0));
    assert_eq!(r.number("d", loss_names::LOSS_SAMPLES), Some(4.0));
    assert_eq!(
        r.number("d", loss_names::LOSS_MEAN),
        Some(1.5),
        "(0 + 1 + 2 + 3) / 4"
    );
    // Every sample's tokens but its first carry a label: 2 + 3 + 4 + 5.
    assert_eq!(r.number("d", loss_names::LOSS_TOKENS), Some(14.0));
    // A loss per row, no fewer.
    let e = record_loss_values(&mut losses, &names, &[Default::default()], &[]).unwrap_err();
    assert!(
        e.to_string().contains("0 losses for a batch of 1 rows"),
        "{e}"
    );
}
