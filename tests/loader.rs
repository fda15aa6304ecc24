//! The loader: exact batch contents, exact resume, partitions, policies, threads, memory.

mod common;

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{lengths, mixture, token, write_dataset};
use shardflow::collate::{Batch, CollateConfig, DocRef, Padding};
use shardflow::loader::{Loader, LoaderBuilder, LoaderState, Source, WorkerStatus};
use shardflow::order::{MixtureMode, OrderConfig, Shuffle, StreamLimit};
use shardflow::transform::{BadSamplePolicy, TransformConfig, TruncatePolicy};
use shardflow::{Dataset, Dtype, Error, IndexedWriter};

type HostLoader = Loader<i32>;

fn builder(sources: Vec<Source>, order: OrderConfig, collate: CollateConfig) -> LoaderBuilder<i32> {
    LoaderBuilder::new(sources)
        .with_order(order)
        .with_collate(collate)
}

fn take<S: shardflow::device::DeviceSink<i32, Output = Batch<i32>>>(
    loader: &mut Loader<i32, S>,
    n: usize,
) -> Vec<Vec<u8>> {
    loader
        .by_ref()
        .take(n)
        .map(|b| b.unwrap().to_bytes())
        .collect()
}

/// The real tokens of each row, as ids.
fn rows(b: &Batch<i32>) -> Vec<Vec<i32>> {
    (0..b.rows)
        .map(|r| b.ids_row(r)[..b.lengths[r] as usize].to_vec())
        .collect()
}

fn collate(padding: Padding, pack: bool) -> CollateConfig {
    CollateConfig {
        seq_len: 32,
        padding,
        pack,
        ..Default::default()
    }
}

#[test]
fn padded_batch_holds_exact_ids_labels_positions_and_mask() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), "d", 0, &[3, 1, 4]);
    let order = OrderConfig {
        shuffle: Shuffle::None,
        local_batch: 3,
        ..Default::default()
    };
    let cfg = CollateConfig {
        seq_len: 8,
        padding: Padding::Multiple(4),
        pad_id: -1,
        ..Default::default()
    };
    let mut loader = builder(vec![Source::new("d", data, 1.0)], order, cfg)
        .with_workers(1)
        .build_host()
        .unwrap();
    let b = loader.next().unwrap().unwrap();
    let t = |s, j| token(0, s, j) as i32;
    assert_eq!((b.rows, b.width), (3, 4));
    assert_eq!(
        &b.ids[..],
        &[
            t(0, 0),
            t(0, 1),
            t(0, 2),
            -1,
            t(1, 0),
            -1,
            -1,
            -1,
            t(2, 0),
            t(2, 1),
            t(2, 2),
            t(2, 3)
        ]
    );
    assert_eq!(&b.lengths[..], &[3, 1, 4]);
    assert_eq!(
        &b.attention_mask.as_ref().unwrap()[..],
        &[1, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 1]
    );
    assert_eq!(
        &b.labels.as_ref().unwrap()[..],
        &[
            t(0, 1),
            t(0, 2),
            -100,
            -100,
            -100,
            -100,
            -100,
            -100,
            t(2, 1),
            t(2, 2),
            t(2, 3),
            -100
        ]
    );
    assert_eq!(
        &b.position_ids.as_ref().unwrap()[..],
        &[0, 1, 2, 0, 0, 0, 0, 0, 0, 1, 2, 3]
    );
    assert!(b.cu_seqlens.is_none());
    let docs: Vec<(u32, u64)> = b.docs.iter().map(|d| (d.dataset, d.sample)).collect();
    assert_eq!(docs, [(0, 0), (0, 1), (0, 2)]);
}

#[test]
fn packed_batches_cut_documents_and_carry_the_remainder() {
    let dir = tempfile::tempdir().unwrap();
    // Documents of 3, 5 and 2 tokens, EOS 9 after each: 4 + 6 + 3 = 13 tokens per epoch.
    let data = write_dataset(dir.path(), "d", 0, &[3, 5, 2]);
    let order = OrderConfig {
        shuffle: Shuffle::None,
        local_batch: 2,
        ..Default::default()
    };
    let cfg = CollateConfig {
        seq_len: 4,
        pack: true,
        ..Default::default()
    };
    let transform = TransformConfig {
        eos: Some(9),
        ..Default::default()
    };
    let make = || {
        builder(
            vec![Source::new("d", data.clone(), 1.0)],
            order.clone(),
            cfg.clone(),
        )
        .with_transform(transform.clone())
        .with_workers(0)
    };
    let mut loader = make().build_host().unwrap();
    let t = |s, j| token(0, s, j) as i32;
    let b0 = loader.next().unwrap().unwrap();
    assert_eq!(
        rows(&b0),
        [
            vec![t(0, 0), t(0, 1), t(0, 2), 9],
            vec![t(1, 0), t(1, 1), t(1, 2), t(1, 3)]
        ]
    );
    assert_eq!(
        &b0.position_ids.as_ref().unwrap()[..],
        &[0, 1, 2, 3, 0, 1, 2, 3]
    );
    assert_eq!(&b0.cu_seqlens.as_ref().unwrap()[..], &[0, 4, 8]);
    assert_eq!(
        &b0.labels.as_ref().unwrap()[..],
        &[t(0, 1), t(0, 2), 9, -100, t(1, 1), t(1, 2), t(1, 3), -100]
    );
    let state = loader.state();
    assert_eq!(
        (state.position.rows_taken, state.position.doc_offset),
        (1, 4)
    );
    let b1 = loader.next().unwrap().unwrap();
    // The cut document continues (positions restart per piece), then the next one, then the
    // next epoch begins.
    assert_eq!(
        rows(&b1),
        [
            vec![t(1, 4), 9, t(2, 0), t(2, 1)],
            vec![9, t(0, 0), t(0, 1), t(0, 2)]
        ]
    );
    assert_eq!(
        &b1.position_ids.as_ref().unwrap()[..],
        &[0, 1, 0, 1, 0, 0, 1, 2]
    );
    assert_eq!(&b1.cu_seqlens.as_ref().unwrap()[..], &[0, 2, 4, 5, 8]);
    let pieces: Vec<(u64, u32, u32, u32)> = b1
        .docs
        .iter()
        .map(|d| (d.sample, d.row, d.start, d.doc_offset))
        .collect();
    assert_eq!(
        pieces,
        [(1, 0, 0, 4), (2, 0, 2, 0), (2, 1, 0, 2), (0, 1, 1, 0)]
    );

    // Resuming from the state after batch 0 gives batch 1 again, exactly.
    let mut resumed = make().resume(state).build_host().unwrap();
    assert_eq!(resumed.next().unwrap().unwrap().to_bytes(), b1.to_bytes());
}

/// A loader over the mixture, optionally resumed.
fn mixture_loader(
    sources: &[Source],
    shuffle: Shuffle,
    collate: &CollateConfig,
    workers: usize,
    state: Option<LoaderState>,
) -> HostLoader {
    let order = OrderConfig {
        seed: 7,
        shuffle,
        world: 1,
        local_batch: 4,
        ..Default::default()
    };
    let transform = TransformConfig {
        bos: Some(1),
        eos: Some(2),
        ..Default::default()
    };
    let mut b = builder(sources.to_vec(), order, collate.clone())
        .with_transform(transform)
        .with_workers(workers)
        .with_prefetch(3);
    if let Some(s) = state {
        b = b.resume(s);
    }
    b.build_host().unwrap()
}

#[test]
fn resume_is_exact_for_every_worker_count_shuffle_padding_and_packing() {
    let dir = tempfile::tempdir().unwrap();
    let sources = mixture(dir.path());
    let paddings = [
        collate(Padding::Longest, false),
        collate(Padding::Multiple(8), false),
        collate(Padding::Fixed, false),
        collate(Padding::Longest, true),
    ];
    for shuffle in [Shuffle::None, Shuffle::Full] {
        for cfg in &paddings {
            let whole = take(&mut mixture_loader(&sources, shuffle, cfg, 2, None), 40);
            assert_eq!(whole.len(), 40);
            for (workers, resumed_workers, k) in [(0, 3, 7), (1, 0, 13), (3, 1, 26), (3, 3, 1)] {
                let mut first = mixture_loader(&sources, shuffle, cfg, workers, None);
                let head = take(&mut first, k);
                assert_eq!(head, whole[..k], "{shuffle:?} {cfg:?} workers {workers}");
                // Through a checkpoint file, as a training job would.
                let path = dir.path().join("ckpt.json");
                first.state().save(&path).unwrap();
                drop(first);
                let state = LoaderState::load(&path).unwrap();
                let mut second =
                    mixture_loader(&sources, shuffle, cfg, resumed_workers, Some(state));
                let tail = take(&mut second, 40 - k);
                assert_eq!(
                    tail,
                    whole[k..],
                    "{shuffle:?} {cfg:?} {workers}->{resumed_workers} at {k}"
                );
            }
        }
    }
}

#[test]
fn resume_exactly_at_an_epoch_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), "d", 0, &lengths(40, 20, 0));
    let make = |workers, state: Option<LoaderState>| {
        let order = OrderConfig {
            seed: 1,
            local_batch: 4,
            ..Default::default()
        };
        let mut b = builder(
            vec![Source::new("d", data.clone(), 1.0)],
            order,
            collate(Padding::Longest, false),
        )
        .with_workers(workers);
        if let Some(s) = state {
            b = b.resume(s);
        }
        b.build_host().unwrap()
    };
    let whole = take(&mut make(2, None), 25);
    let mut first = make(1, None);
    take(&mut first, 10); // 40 samples: exactly one epoch
    let state = first.state();
    assert_eq!(state.cursor.datasets["d"].consumed, 40);
    assert_eq!(take(&mut make(3, Some(state)), 15), whole[10..]);
}

#[test]
fn resume_with_world_4_to_2_continues_the_global_stream() {
    let dir = tempfile::tempdir().unwrap();
    let sources = mixture(dir.path());
    let cfg = collate(Padding::Longest, false);
    let rank_loader = |world, rank, local_batch, state: Option<LoaderState>| {
        let order = OrderConfig {
            seed: 3,
            world,
            rank,
            local_batch,
            ..Default::default()
        };
        // Metrics stay off: a rank's own totals cannot move to a world of another size (see
        // loader_metrics.rs for the world-scoped checkpoint that can).
        let mut b = builder(sources.clone(), order, cfg.clone())
            .with_workers(1)
            .with_metrics(None);
        if let Some(s) = state {
            b = b.resume(s);
        }
        b.build_host().unwrap()
    };
    let steps = 12;
    // Rows of every step, from world 4 (local batch 2) throughout.
    let mut four: Vec<HostLoader> = (0..4).map(|r| rank_loader(4, r, 2, None)).collect();
    let mut global: Vec<Vec<Vec<i32>>> = vec![Vec::new(); steps];
    for step in global.iter_mut() {
        for l in four.iter_mut() {
            step.extend(rows(&l.next().unwrap().unwrap()));
        }
    }
    // World 4 up to step 5, then world 2 (local batch 4) from rank 0's state.
    let mut before: Vec<HostLoader> = (0..4).map(|r| rank_loader(4, r, 2, None)).collect();
    for l in before.iter_mut() {
        take(l, 5);
    }
    let state = before[0].state();
    let mut two: Vec<HostLoader> = (0..2)
        .map(|r| rank_loader(2, r, 4, Some(state.clone())))
        .collect();
    for step in &global[5..] {
        let mut got = Vec::new();
        for l in two.iter_mut() {
            got.extend(rows(&l.next().unwrap().unwrap()));
        }
        assert_eq!(&got, step);
    }
}

#[test]
fn one_epoch_over_all_ranks_and_workers_yields_every_sample_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), "d", 0, &lengths(96, 16, 0));
    let mut seen = Vec::new();
    for rank in 0..3 {
        let order = OrderConfig {
            seed: 9,
            world: 3,
            rank,
            local_batch: 4,
            limit: StreamLimit::Epochs(1.0),
            ..Default::default()
        };
        let loader = builder(
            vec![Source::new("d", data.clone(), 1.0)],
            order,
            collate(Padding::Longest, false),
        )
        .with_workers(rank) // 0, 1 and 2 workers
        .build_host()
        .unwrap();
        for b in loader {
            let b = b.unwrap();
            for (r, d) in b.docs.iter().enumerate() {
                // The row holds exactly that sample's tokens.
                assert_eq!(b.ids_row(r)[0] as i64, token(0, d.sample as usize, 0));
                seen.push(d.sample);
            }
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..96).collect::<Vec<u64>>());
}

fn dataset_counts(mode: MixtureMode, dir: &std::path::Path) -> (BTreeMap<u32, f64>, u64) {
    let sources = mixture(dir);
    let order = OrderConfig {
        seed: 5,
        mixture: mode,
        local_batch: 100,
        ..Default::default()
    };
    let loader = builder(sources, order, collate(Padding::Longest, false))
        .with_workers(2)
        .build_host()
        .unwrap();
    let mut counts = BTreeMap::new();
    let mut n = 0;
    for b in loader.take(100) {
        for d in b.unwrap().docs.iter() {
            *counts.entry(d.dataset).or_insert(0.0) += 1.0;
            n += 1;
        }
    }
    (counts, n)
}

#[test]
fn mixture_counts_follow_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    let weights = [3.0 / 6.0, 1.0 / 6.0, 2.0 / 6.0];
    let (counts, n) = dataset_counts(MixtureMode::Deterministic, dir.path());
    assert_eq!(n, 10_000);
    for (d, w) in weights.iter().enumerate() {
        assert!(
            (counts[&(d as u32)] - w * n as f64).abs() <= 1.0,
            "{counts:?}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (counts, n) = dataset_counts(MixtureMode::Stochastic, dir.path());
    for (d, w) in weights.iter().enumerate() {
        assert!(
            (counts[&(d as u32)] / n as f64 - w).abs() <= 0.02,
            "{counts:?}"
        );
    }
}

/// Drops `loader` on another thread and fails if that takes longer than `limit`.
fn drops_within(loader: HostLoader, limit: Duration) -> Duration {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        drop(loader);
        tx.send(()).unwrap();
    });
    rx.recv_timeout(limit)
        .expect("dropping the loader joins its threads promptly");
    start.elapsed()
}

#[test]
fn a_panicking_transform_is_an_error_naming_the_sample() {
    let dir = tempfile::tempdir().unwrap();
    for workers in [0, 2] {
        let order = OrderConfig {
            shuffle: Shuffle::None,
            local_batch: 4,
            ..Default::default()
        };
        let mut loader = builder(mixture(dir.path()), order, collate(Padding::Longest, false))
            .with_workers(workers)
            .with_user_transform(|info, _ids| {
                if info.dataset == "code" && info.sample == 3 {
                    panic!("bad sample");
                }
                Ok(())
            })
            .build_host()
            .unwrap();
        let mut errors = Vec::new();
        for b in loader.by_ref().take(50) {
            if let Err(e) = b {
                errors.push(e);
            }
        }
        assert_eq!(errors.len(), 1);
        let e = &errors[0];
        assert!(
            matches!(e, Error::WorkerPanic { dataset, sample: 3, .. } if dataset == "code"),
            "{e}"
        );
        assert!(
            e.to_string().contains("dataset code sample 3: bad sample"),
            "{e}"
        );
        assert!(loader.next().is_none(), "the stream ends after the error");
        drops_within(loader, Duration::from_secs(10));
    }
}

#[test]
fn a_failing_transform_is_an_error_or_a_counted_skip() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), "d", 0, &lengths(20, 10, 0));
    let make = |policy| {
        let order = OrderConfig {
            shuffle: Shuffle::None,
            local_batch: 5,
            ..Default::default()
        };
        builder(
            vec![Source::new("d", data.clone(), 1.0)],
            order,
            collate(Padding::Longest, false),
        )
        .with_transform(TransformConfig {
            bad_samples: policy,
            ..Default::default()
        })
        .with_user_transform(|info, _| {
            if info.sample % 10 == 7 {
                Err("odd one".into())
            } else {
                Ok(())
            }
        })
        .with_workers(1)
        .build_host()
        .unwrap()
    };
    let e = make(BadSamplePolicy::Error).find_map(|b| b.err()).unwrap();
    assert!(
        matches!(&e, Error::Sample { step: 1, dataset, sample: 7, .. } if dataset == "d"),
        "{e}"
    );
    assert_eq!(e.to_string(), "batch 1: dataset d sample 7: odd one");

    // Skip: samples 7 and 17 leave empty rows, counted; the limit is per epoch.
    let mut loader = make(BadSamplePolicy::Skip { max_per_epoch: 2 });
    let batches: Vec<_> = loader.by_ref().take(8).map(|b| b.unwrap()).collect();
    assert_eq!(loader.stats().skipped, 4, "two per epoch, two epochs");
    let b1 = &batches[1];
    assert_eq!(b1.lengths[2], 0);
    assert_eq!(b1.docs[2].flags & DocRef::SKIPPED, DocRef::SKIPPED);
    assert!(b1.ids_row(2).iter().all(|&t| t == 0));
    let e = make(BadSamplePolicy::Skip { max_per_epoch: 1 })
        .find_map(|b| b.err())
        .unwrap();
    assert!(
        matches!(
            &e,
            Error::SkipLimit {
                epoch: 0,
                limit: 1,
                sample: 17,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("dataset d skipped more than 1 samples in epoch 0"),
        "{e}"
    );
    // The batch that passed the limit is not accounted: its skip does not count in the state, so
    // a checkpoint taken now resumes with that batch and counts its skip once.
    let mut limited = make(BadSamplePolicy::Skip { max_per_epoch: 1 });
    assert!(limited.find_map(|b| b.err()).is_some());
    let state = limited.state();
    let skipped: u64 = state.skips.iter().map(|c| c.skipped).sum();
    assert_eq!(
        (skipped, limited.stats().skipped),
        (1, 1),
        "{:?}",
        state.skips
    );
}

#[test]
fn oversized_samples_under_each_truncation_policy() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), "d", 0, &[3, 10, 5]);
    let run = |truncate, bad_samples| {
        let order = OrderConfig {
            shuffle: Shuffle::None,
            local_batch: 3,
            ..Default::default()
        };
        let cfg = CollateConfig {
            seq_len: 6,
            padding: Padding::Fixed,
            ..Default::default()
        };
        let transform = TransformConfig {
            bos: Some(-7),
            eos: Some(-8),
            truncate,
            bad_samples,
            ..Default::default()
        };
        builder(vec![Source::new("d", data.clone(), 1.0)], order, cfg)
            .with_transform(transform)
            .with_workers(0)
            .build_host()
            .unwrap()
            .next()
            .unwrap()
    };
    let t = |s, j| token(0, s, j) as i32;
    let b = run(TruncatePolicy::Truncate, BadSamplePolicy::Error).unwrap();
    assert_eq!(rows(&b)[1], [-7, t(1, 0), t(1, 1), t(1, 2), t(1, 3), -8]);
    assert_eq!(rows(&b)[0], [-7, t(0, 0), t(0, 1), t(0, 2), -8]);
    let flags: Vec<u32> = b.docs.iter().map(|d| d.flags).collect();
    assert_eq!(flags, [0, DocRef::TRUNCATED, DocRef::TRUNCATED]);

    let b = run(TruncatePolicy::Drop, BadSamplePolicy::Error).unwrap();
    assert_eq!(&b.lengths[..], &[5, 0, 0]);
    assert_eq!(b.docs[1].flags, DocRef::DROPPED);

    let e = run(TruncatePolicy::Error, BadSamplePolicy::Error).unwrap_err();
    assert!(matches!(e, Error::Sample { sample: 1, .. }), "{e}");
    assert!(
        e.to_string()
            .contains("10 tokens (with BOS/EOS: 12) exceed the maximum length 6"),
        "{e}"
    );

    let b = run(
        TruncatePolicy::Error,
        BadSamplePolicy::Skip { max_per_epoch: 5 },
    )
    .unwrap();
    assert_eq!(&b.lengths[..], &[5, 0, 0]);
    assert_eq!(b.docs[2].flags, DocRef::SKIPPED);
}

#[test]
fn dropping_a_busy_loader_returns_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let order = OrderConfig {
        local_batch: 8,
        ..Default::default()
    };
    let mut loader = builder(mixture(dir.path()), order, collate(Padding::Longest, false))
        .with_workers(2)
        .with_prefetch(16)
        .with_user_transform(|_, _| {
            std::thread::sleep(Duration::from_millis(20));
            Ok(())
        })
        .build_host()
        .unwrap();
    loader.next().unwrap().unwrap();
    // Workers are mid-batch (8 samples x 20 ms each); they stop at the next sample.
    let took = drops_within(loader, Duration::from_secs(10));
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn steady_state_allocates_no_staging_memory() {
    let dir = tempfile::tempdir().unwrap();
    for pack in [false, true] {
        for workers in [0, 2] {
            let order = OrderConfig {
                local_batch: 8,
                ..Default::default()
            };
            let mut loader = builder(
                mixture(dir.path()),
                order,
                collate(Padding::Multiple(8), pack),
            )
            .with_workers(workers)
            .with_prefetch(4)
            .build_host()
            .unwrap();
            take(&mut loader, 50);
            let warm = loader.stats().pool;
            take(&mut loader, 300);
            let after = loader.stats().pool;
            let what = format!("pack {pack}, workers {workers}: {warm:?} -> {after:?}");
            if workers == 0 {
                // One batch in flight at a time: once warm, every buffer is a reuse.
                assert_eq!(after.allocations, warm.allocations, "{what}");
            } else {
                // Threads reach their peak concurrency at times of their choosing, but buffers
                // never exceed (prefetch + the caller's batch + one being built) x the ~10
                // buffers of a batch, however many batches pass.
                assert!(after.allocations <= 6 * 12, "{what}");
            }
            assert!(after.reuses >= warm.reuses + 300 * 7, "{what}");
            let stats = loader.stats();
            assert_eq!(stats.batches, 350);
            assert!(stats.padded_tokens >= stats.real_tokens && stats.real_tokens > 0);
            assert!(
                stats.queue_depth <= 4,
                "memory stays bounded by the prefetch depth"
            );
        }
    }
}

#[test]
fn resume_with_a_changed_configuration_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let sources = mixture(dir.path());
    let cfg = collate(Padding::Longest, false);
    let mut first = mixture_loader(&sources, Shuffle::Full, &cfg, 1, None);
    take(&mut first, 3);
    let state = first.state();
    let order = OrderConfig {
        seed: 7,
        shuffle: Shuffle::Full,
        local_batch: 4,
        ..Default::default()
    };
    let e = builder(
        sources.clone(),
        order.clone(),
        collate(Padding::Fixed, false),
    )
    .with_transform(TransformConfig {
        bos: Some(1),
        eos: Some(2),
        ..Default::default()
    })
    .resume(state.clone())
    .build_host()
    .err()
    .unwrap();
    assert!(
        e.to_string()
            .starts_with("cannot resume: the collate configuration changed"),
        "{e}"
    );
    let e = builder(sources, OrderConfig { seed: 8, ..order }, cfg)
        .with_transform(TransformConfig {
            bos: Some(1),
            eos: Some(2),
            ..Default::default()
        })
        .resume(state)
        .build_host()
        .err()
        .unwrap();
    assert!(e.to_string().contains("the seed was 7"), "{e}");

    let path = dir.path().join("junk.json");
    std::fs::write(&path, b"{\"not\": \"a checkpoint\"}").unwrap();
    let e = LoaderState::load(&path).unwrap_err();
    assert!(matches!(e, Error::Checkpoint { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("junk.json: not a valid shardflow loader checkpoint: json:"),
        "{e}"
    );
}

#[test]
fn i64_and_u32_outputs_hold_the_same_batches() {
    let dir = tempfile::tempdir().unwrap();
    let sources = mixture(dir.path());
    let order = OrderConfig {
        seed: 2,
        local_batch: 4,
        ..Default::default()
    };
    let cfg = CollateConfig {
        seq_len: 32,
        padding: Padding::Multiple(8),
        labels: false,
        ..Default::default()
    };
    let narrow: Vec<Batch<i32>> = builder(sources.clone(), order.clone(), cfg.clone())
        .build_host()
        .unwrap()
        .take(10)
        .map(|b| b.unwrap())
        .collect();
    let wide: Vec<Batch<i64>> = LoaderBuilder::<i64>::new(sources.clone())
        .with_order(order.clone())
        .with_collate(cfg.clone())
        .build_host()
        .unwrap()
        .take(10)
        .map(|b| b.unwrap())
        .collect();
    let unsigned: Vec<Batch<u32>> = LoaderBuilder::<u32>::new(sources)
        .with_order(order)
        .with_collate(cfg)
        .build_host()
        .unwrap()
        .take(10)
        .map(|b| b.unwrap())
        .collect();
    for ((n, w), u) in narrow.iter().zip(&wide).zip(&unsigned) {
        assert_eq!((n.rows, n.width), (w.rows, w.width));
        assert_eq!(
            n.ids.iter().map(|&t| t as i64).collect::<Vec<_>>(),
            w.ids.to_vec()
        );
        assert_eq!(
            n.ids.iter().map(|&t| t as u32).collect::<Vec<_>>(),
            u.ids.to_vec()
        );
        assert_eq!(n.docs, w.docs);
    }
}

#[test]
fn an_ownership_partition_gives_every_sample_to_one_rank_per_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_dataset(dir.path(), "d", 0, &lengths(96, 16, 0));
    for partition in [
        shardflow::order::Partition::Contiguous,
        shardflow::order::Partition::Strided,
    ] {
        let mut seen = Vec::new();
        for rank in 0..3 {
            let order = OrderConfig {
                partition,
                world: 3,
                rank,
                local_batch: 4,
                limit: StreamLimit::Epochs(1.0),
                ..Default::default()
            };
            let loader = builder(
                vec![Source::new("d", data.clone(), 1.0)],
                order,
                collate(Padding::Longest, false),
            )
            .with_workers(1)
            .build_host()
            .unwrap();
            let mine: Vec<u64> = loader
                .flat_map(|b| b.unwrap().docs.iter().map(|d| d.sample).collect::<Vec<_>>())
                .collect();
            assert_eq!(mine.len(), 32, "{partition:?} rank {rank}");
            seen.extend(mine);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..96).collect::<Vec<u64>>(), "{partition:?}");
    }
}

/// A host sink whose upload of one batch fails once, as a device copy might.
struct Flaky {
    host: shardflow::device::HostSink,
    fail_at: u64,
    failed: std::sync::atomic::AtomicBool,
}

impl shardflow::device::DeviceSink<i32> for Flaky {
    type Prepared = Batch<i32>;
    type Output = Batch<i32>;

    fn device(&self) -> String {
        "flaky".into()
    }

    fn staging(&self) -> &shardflow::collate::Pool {
        shardflow::device::DeviceSink::<i32>::staging(&self.host)
    }

    fn bind(&mut self, config: &CollateConfig, rows: usize) -> shardflow::Result<()> {
        shardflow::device::DeviceSink::<i32>::bind(&mut self.host, config, rows)
    }

    fn prepare(
        &self,
        staged: shardflow::collate::StagedBatch<i32>,
    ) -> shardflow::Result<Batch<i32>> {
        self.host.prepare(staged)
    }

    fn upload(&self, prepared: Batch<i32>, batch: u64) -> shardflow::Result<Batch<i32>> {
        if batch == self.fail_at && !self.failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Device {
                device: "flaky".into(),
                op: format!("upload batch {batch}"),
                reason: "the copy failed".into(),
            });
        }
        Ok(prepared)
    }
}

#[test]
fn a_failed_upload_is_not_counted_and_resumes_with_that_batch() {
    let dir = tempfile::tempdir().unwrap();
    let sources = mixture(dir.path());
    let order = OrderConfig {
        seed: 8,
        local_batch: 3,
        ..Default::default()
    };
    for workers in [0, 2] {
        let make = || {
            builder(
                sources.clone(),
                order.clone(),
                collate(Padding::Longest, false),
            )
            .with_workers(workers)
        };
        let whole = take(&mut make().build_host().unwrap(), 6);
        let mut flaky = make()
            .build(Flaky {
                host: Default::default(),
                fail_at: 2,
                failed: Default::default(),
            })
            .unwrap();
        assert_eq!(take(&mut flaky, 2), whole[..2]);
        let e = flaky.next().unwrap().unwrap_err();
        assert!(
            e.to_string()
                .contains("device flaky: cannot upload batch 2: the copy failed"),
            "{e}"
        );
        assert!(flaky.next().is_none(), "the stream ends at the error");
        let state = flaky.state();
        assert_eq!(
            state.position.batches, 2,
            "the failed batch is not delivered"
        );
        assert_eq!(flaky.stats().batches, 2);
        let seen: f64 = ["web", "code", "books"]
            .iter()
            .filter_map(|d| flaky.metrics().report().number(d, "samples_seen"))
            .sum();
        assert_eq!(seen, 6.0, "two batches of three rows in the metrics");
        let mut resumed = make().resume(state).build_host().unwrap();
        assert_eq!(take(&mut resumed, 4), whole[2..], "{workers} workers");
    }
}

#[test]
fn the_caller_builds_only_when_allowed_and_the_stream_never_changes() {
    let dir = tempfile::tempdir().unwrap();
    let sources = mixture(dir.path());
    let order = OrderConfig {
        seed: 3,
        shuffle: Shuffle::Full,
        local_batch: 4,
        ..Default::default()
    };
    let run = |workers: usize, caller_builds: bool| {
        let mut loader = builder(
            sources.clone(),
            order.clone(),
            collate(Padding::Longest, false),
        )
        .with_workers(workers)
        .with_caller_builds(caller_builds)
        .build_host()
        .unwrap();
        let batches = take(&mut loader, 40);
        (batches, loader.stats())
    };
    let (inline, stats) = run(0, true);
    assert!(
        stats.caller_build > Duration::ZERO,
        "with no workers the caller builds"
    );
    for (workers, caller_builds) in [(1, false), (2, false), (1, true), (2, true)] {
        let (batches, stats) = run(workers, caller_builds);
        assert_eq!(
            batches, inline,
            "{workers} workers, caller builds {caller_builds}"
        );
        if !caller_builds {
            assert_eq!(stats.caller_build, Duration::ZERO, "{workers} workers");
            assert!(stats.worker_busy > Duration::ZERO);
        }
    }
}

#[test]
fn read_ahead_advice_never_changes_the_stream_in_any_shuffle_mode() {
    let dir = tempfile::tempdir().unwrap();
    let sources = mixture(dir.path());
    for shuffle in [Shuffle::None, Shuffle::Full, Shuffle::Block(7)] {
        for pack in [false, true] {
            let run = |read_ahead: usize, workers: usize| {
                let order = OrderConfig {
                    seed: 9,
                    shuffle,
                    local_batch: 4,
                    ..Default::default()
                };
                let mut loader = builder(sources.clone(), order, collate(Padding::Longest, pack))
                    .with_workers(workers)
                    .with_read_ahead(read_ahead)
                    .build_host()
                    .unwrap();
                take(&mut loader, 50)
            };
            let plain = run(0, 2);
            for (ahead, workers) in [(1, 0), (4, 2), (64, 1)] {
                assert_eq!(
                    run(ahead, workers),
                    plain,
                    "{shuffle:?}, pack {pack}, read-ahead {ahead}"
                );
            }
        }
    }
    // Evicting the shards from the page cache changes nothing either.
    for s in &sources {
        s.data.evict().unwrap();
    }
}

/// The host sink's batches are written in place at a width planned from the index; a user
/// transform (which may change lengths) makes the collator stage ragged and pad afterwards. Both
/// must give the same bytes, in every padding mode, with BOS/EOS, truncation, dropping, and a
/// sample that fails to decode (its row empty, the batch narrower than planned).
#[test]
fn padding_in_place_equals_staging_ragged_then_padding() {
    let dir = tempfile::tempdir().unwrap();
    // An i64 dataset whose sample 5, by far the longest, holds an id that does not fit i32.
    let prefix = dir.path().join("wide");
    let mut w = IndexedWriter::create(&prefix, Some(Dtype::I64)).unwrap();
    for s in 0..12usize {
        let len = if s == 5 { 28 } else { 3 + s };
        let mut ids: Vec<i64> = (0..len).map(|j| token(3, s, j)).collect();
        if s == 5 {
            ids[len / 2] = 1 << 40;
        }
        w.add_sequence(&ids).unwrap();
        w.end_document().unwrap();
    }
    w.finish().unwrap();
    let wide = Source::new("wide", Dataset::open(&[&prefix]).unwrap(), 2.0);
    let mut mixed = mixture(dir.path());
    mixed.push(wide.clone());
    let mut compared = 0;
    let mut narrowed = 0;
    for (sources, padding) in [
        (vec![wide], Padding::Longest),
        (mixed.clone(), Padding::Longest),
        (mixed.clone(), Padding::Multiple(8)),
        (mixed, Padding::Fixed),
    ] {
        for (truncate, bos, eos) in [
            (TruncatePolicy::Truncate, Some(1), Some(2)),
            (TruncatePolicy::Drop, None, Some(2)),
            (TruncatePolicy::Truncate, None, None),
        ] {
            for workers in [0, 2] {
                let make = |ragged: bool| {
                    let order = OrderConfig {
                        local_batch: 6,
                        ..Default::default()
                    };
                    let collate = CollateConfig {
                        pad_id: -1,
                        ..collate(padding, false)
                    };
                    let mut b = builder(sources.clone(), order, collate)
                        .with_transform(TransformConfig {
                            truncate,
                            bos,
                            eos,
                            bad_samples: BadSamplePolicy::Skip { max_per_epoch: 100 },
                            ..Default::default()
                        })
                        .with_workers(workers);
                    if ragged {
                        b = b.with_user_transform(|_, _| Ok(()));
                    }
                    b.build_host().unwrap()
                };
                let (mut in_place, mut ragged) = (make(false), make(true));
                let a = take(&mut in_place, 40);
                assert_eq!(
                    a,
                    take(&mut ragged, 40),
                    "{padding:?} {truncate:?} bos {bos:?} eos {eos:?} workers {workers}"
                );
                assert!(in_place.stats().skipped > 0, "the bad sample was met");
                compared += a.len();
                if sources.len() == 1 {
                    // The batches holding the failed sample: planned 28 wide or more, built
                    // narrower.
                    let mut again = make(false);
                    for b in again.by_ref().take(40).map(|b| b.unwrap()) {
                        if b.docs.iter().any(|d| d.flags & DocRef::SKIPPED != 0) {
                            assert!(b.width < 28, "width {}", b.width);
                            narrowed += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(compared, 4 * 3 * 2 * 40);
    assert!(narrowed > 0);
}

/// `sleep` for `per_sample` on the worker thread named `shardflow-worker-{slow}`, for `other`
/// elsewhere.
fn slow_on(slow: usize, per_sample: Duration, other: Duration) -> impl Fn() + Send + Sync {
    let name = format!("shardflow-worker-{slow}");
    move || {
        let here = std::thread::current().name() == Some(name.as_str());
        std::thread::sleep(if here { per_sample } else { other });
    }
}

#[test]
fn a_slow_worker_is_reported_slow_and_the_order_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    // Sleeps dominate the build times, so the rates compare what the test sets.
    let make = |on_worker_1: Duration| {
        let order = OrderConfig {
            local_batch: 4,
            ..Default::default()
        };
        let sleep = slow_on(1, on_worker_1, Duration::from_millis(1));
        builder(mixture(dir.path()), order, collate(Padding::Longest, false))
            .with_user_transform(move |_, _| {
                sleep();
                Ok(())
            })
            .with_workers(2)
            .with_caller_builds(false)
            .with_slow_factor(3.0)
            .build_host()
            .unwrap()
    };
    let (mut slowed, mut plain) = (
        make(Duration::from_millis(12)),
        make(Duration::from_millis(1)),
    );
    assert_eq!(
        take(&mut slowed, 60),
        take(&mut plain, 60),
        "the order never changes"
    );
    let workers = slowed.stats().workers;
    assert_eq!(workers.len(), 2);
    assert!(workers.iter().all(|w| w.batches >= 3), "{workers:?}");
    // The 60 taken and at most the prefetch depth (4) built ahead.
    let built: u64 = workers.iter().map(|w| w.batches).sum();
    assert!((60..=64).contains(&built), "{built}");
    assert_eq!(workers[1].status, WorkerStatus::Slow, "{workers:?}");
    assert_eq!(workers[0].status, WorkerStatus::Healthy, "{workers:?}");
    assert!(workers[0].tokens_per_s > 3.0 * workers[1].tokens_per_s);
    assert!(workers.iter().all(|w| w.since_last_batch.is_some()));
    // Worker 1's last batch took at least its 4 rows' sleeps.
    assert!(
        workers[1].last_build.unwrap() >= Duration::from_millis(16),
        "{workers:?}"
    );
    // Nobody is slow when both run alike.
    let even = plain.stats().workers;
    assert!(
        even.iter().all(|w| w.status == WorkerStatus::Healthy),
        "{even:?}"
    );
}

#[test]
fn a_worker_stuck_past_the_watchdog_is_reported_stalled_while_it_is_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let order = OrderConfig {
        local_batch: 4,
        ..Default::default()
    };
    let first = std::sync::atomic::AtomicBool::new(true);
    let mut loader = builder(mixture(dir.path()), order, collate(Padding::Longest, false))
        .with_user_transform(move |_, _| {
            let one = std::thread::current().name() == Some("shardflow-worker-1");
            if one && first.swap(false, std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(800));
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
            Ok(())
        })
        .with_workers(2)
        .with_watchdog(Duration::from_millis(50))
        .build_host()
        .unwrap();
    let health = loader.health();
    let consumer = std::thread::spawn(move || {
        let mut n = 0;
        for b in loader.by_ref().take(40) {
            b.unwrap();
            n += 1;
        }
        (n, loader.stats().workers)
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stalled = None;
    while stalled.is_none() && Instant::now() < deadline {
        stalled = health
            .workers()
            .into_iter()
            .find(|w| w.status == WorkerStatus::Stalled);
        std::thread::sleep(Duration::from_millis(5));
    }
    let stalled = stalled.expect("worker 1 was seen stalled");
    assert_eq!(stalled.index, 1);
    assert!(stalled.building_for.unwrap() > Duration::from_millis(50));
    let (n, after) = consumer.join().unwrap();
    assert_eq!(n, 40);
    assert!(
        after.iter().all(|w| w.status != WorkerStatus::Stalled),
        "recovered once the batch is built: {after:?}"
    );
}

#[test]
fn a_slow_factor_of_one_or_less_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for f in [1.0, 0.5, f64::NAN] {
        let e = builder(
            mixture(dir.path()),
            OrderConfig::default(),
            collate(Padding::Longest, false),
        )
        .with_slow_factor(f)
        .build_host()
        .err()
        .unwrap();
        assert!(e.to_string().contains("slow factor"), "{e}");
    }
}
