//! The sample order: shuffles, epochs, budgets, the mixture, rank partitions, cursors.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use proptest::prelude::*;
use shardflow::Error;
use shardflow::order::{
    Cursor, DatasetSpec, MixtureMode, OrderConfig, Partition, Plan, Planner, ResumeOptions, Row,
    Shuffle, StreamLimit,
};

fn plan(config: OrderConfig, datasets: Vec<DatasetSpec>) -> Arc<Plan> {
    Arc::new(config.init(datasets).unwrap())
}

/// `steps` global batches (every rank's rows) from `planner`.
fn global_stream(planner: &mut Planner, steps: u64) -> Vec<Vec<Row>> {
    let mut out = Vec::new();
    for _ in 0..steps {
        let mut rows = Vec::new();
        if !planner.next_global(&mut rows) {
            break;
        }
        out.push(rows);
    }
    out
}

fn shuffle_strategy() -> impl Strategy<Value = Shuffle> {
    prop_oneof![
        Just(Shuffle::None),
        Just(Shuffle::Full),
        (1u64..20).prop_map(Shuffle::Block)
    ]
}

fn ownership_strategy() -> impl Strategy<Value = Partition> {
    prop_oneof![
        Just(Partition::Contiguous),
        Just(Partition::Strided),
        Just(Partition::Hashed)
    ]
}

#[test]
fn tiny_plan_table() {
    // The table in the `order` module docs.
    let p = plan(
        OrderConfig {
            shuffle: Shuffle::None,
            world: 2,
            local_batch: 2,
            ..Default::default()
        },
        vec![DatasetSpec::new("a", 4, 3.0), DatasetSpec::new("b", 2, 1.0)],
    );
    let table: Vec<Vec<String>> = global_stream(&mut Planner::new(p.clone()), 3)
        .iter()
        .map(|rows| {
            (0..2)
                .map(|rank| {
                    let cells: Vec<String> = rows
                        .iter()
                        .filter(|r| r.rank == rank)
                        .map(|r| {
                            format!(
                                "{}:{} ({})",
                                p.names()[r.dataset as usize],
                                r.sample,
                                r.epoch
                            )
                        })
                        .collect();
                    cells.join(", ")
                })
                .collect()
        })
        .collect();
    assert_eq!(
        table,
        [
            ["a:0 (0), a:1 (0)", "b:0 (0), a:2 (0)"],
            ["a:3 (0), a:0 (1)", "b:1 (0), a:1 (1)"],
            ["a:2 (1), a:3 (1)", "b:0 (1), a:0 (2)"],
        ]
    );
}

#[test]
fn shuffled_order_is_a_pure_function_of_seed() {
    let cfg = |seed| OrderConfig {
        seed,
        world: 2,
        local_batch: 3,
        ..Default::default()
    };
    let data = || {
        vec![
            DatasetSpec::new("x", 100, 1.0),
            DatasetSpec::new("y", 7, 2.0),
        ]
    };
    let a = global_stream(&mut Planner::new(plan(cfg(5), data())), 50);
    let b = global_stream(&mut Planner::new(plan(cfg(5), data())), 50);
    let c = global_stream(&mut Planner::new(plan(cfg(6), data())), 50);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Within one epoch every sample appears once; without shuffle the order is 0..N; with a
    /// full shuffle consecutive epochs differ.
    #[test]
    fn one_epoch_holds_every_sample_once(n in 1u64..400, shuffle in shuffle_strategy(),
                                         seed in any::<u64>(), world in 1usize..4,
                                         local in 1usize..9) {
        let p = plan(OrderConfig { seed, shuffle, world, local_batch: local, ..Default::default() },
                     vec![DatasetSpec::new("d", n, 1.0)]);
        let g = (world * local) as u64;
        let rows: Vec<Row> = global_stream(&mut Planner::new(p), (3 * n).div_ceil(g))
            .concat();
        for epoch in 0..3u64 {
            let part = &rows[(epoch * n) as usize..((epoch + 1) * n) as usize];
            prop_assert!(part.iter().all(|r| r.epoch == epoch));
            let mut samples: Vec<u64> = part.iter().map(|r| r.sample).collect();
            if shuffle == Shuffle::None {
                prop_assert_eq!(&samples, &(0..n).collect::<Vec<_>>());
            }
            samples.sort_unstable();
            prop_assert_eq!(samples, (0..n).collect::<Vec<_>>());
        }
        if shuffle == Shuffle::Full && n >= 16 {
            let e0: Vec<u64> = rows[..n as usize].iter().map(|r| r.sample).collect();
            let e1: Vec<u64> = rows[n as usize..2 * n as usize].iter().map(|r| r.sample).collect();
            prop_assert_ne!(e0, e1);
        }
    }

    /// With a budget of e epochs the stream ends after floor(e*N) rows and each sample is seen
    /// floor(e) or ceil(e) times.
    #[test]
    fn fractional_budget_gives_floor_or_ceil(n in 1u64..300, e in 0.0f64..4.0,
                                             shuffle in shuffle_strategy(), local in 1usize..7) {
        let p = plan(
            OrderConfig { shuffle, local_batch: local, limit: StreamLimit::Epochs(e), ..Default::default() },
            vec![DatasetSpec::new("d", n, 1.0)],
        );
        let total = (e * n as f64).floor() as u64;
        prop_assert_eq!(p.steps(), Some(total.div_ceil(local as u64)));
        let rows = global_stream(&mut Planner::new(p), u64::MAX).concat();
        prop_assert_eq!(rows.len() as u64, total);
        let mut counts = vec![0u64; n as usize];
        rows.iter().for_each(|r| counts[r.sample as usize] += 1);
        let (lo, hi) = (e.floor() as u64, e.ceil() as u64);
        prop_assert!(counts.iter().all(|&c| c == lo || c == hi), "{counts:?}");
    }

    /// In a mixture, an epoch budget of e gives floor(e * S) rows (S the datasets' total
    /// size); dataset d gets c_d of them, within one of its share; and each of its samples is
    /// seen floor(c_d / N_d) or ceil(c_d / N_d) times (the README's definition).
    #[test]
    fn a_mixture_budget_follows_its_documented_definition(
        sizes in proptest::collection::vec(1u64..40, 2..4),
        weights in proptest::collection::vec(0.05f64..5.0, 4),
        e in 0.0f64..3.0, shuffle in shuffle_strategy(), stochastic in any::<bool>(),
    ) {
        let data: Vec<DatasetSpec> = sizes.iter().enumerate()
            .map(|(d, &n)| DatasetSpec::new(format!("d{d}"), n, weights[d])).collect();
        let mixture = if stochastic { MixtureMode::Stochastic } else { MixtureMode::Deterministic };
        let p = plan(
            OrderConfig { shuffle, mixture, local_batch: 3, limit: StreamLimit::Epochs(e), ..Default::default() },
            data,
        );
        let w = p.weights().to_vec();
        let total = (e * sizes.iter().sum::<u64>() as f64).floor() as u64;
        let rows = global_stream(&mut Planner::new(p), u64::MAX).concat();
        prop_assert_eq!(rows.len() as u64, total);
        for (d, &n) in sizes.iter().enumerate() {
            let mine: Vec<&Row> = rows.iter().filter(|r| r.dataset as usize == d).collect();
            let c = mine.len() as u64;
            if !stochastic {
                prop_assert!((c as f64 - w[d] * total as f64).abs() <= 1.0 + 1e-9, "d{d}: {c}");
            }
            let mut seen = vec![0u64; n as usize];
            mine.iter().for_each(|r| seen[r.sample as usize] += 1);
            let (lo, hi) = (c / n, c.div_ceil(n));
            prop_assert!(seen.iter().all(|&k| k == lo || k == hi), "d{d}: {seen:?}");
        }
    }

    /// The ranks' rows are disjoint and together make the global batch.
    #[test]
    fn ranks_split_the_global_batch(world in 1usize..6, local in 1usize..6, seed in any::<u64>(),
                                    sizes in proptest::collection::vec(1u64..50, 1..4)) {
        let data: Vec<DatasetSpec> = sizes.iter().enumerate()
            .map(|(i, &n)| DatasetSpec::new(format!("d{i}"), n, 1.0 + i as f64)).collect();
        let cfg = |rank| OrderConfig { seed, world, rank, local_batch: local, ..Default::default() };
        let global = global_stream(&mut Planner::new(plan(cfg(0), data.clone())), 6);
        let mut per_rank: Vec<Vec<Vec<Row>>> = Vec::new();
        for rank in 0..world {
            let mut planner = Planner::new(plan(cfg(rank), data.clone()));
            let mut batches = Vec::new();
            let mut rows = Vec::new();
            while batches.len() < 6 && planner.next_rows(&mut rows) {
                prop_assert!(rows.iter().all(|r| r.rank as usize == rank));
                batches.push(rows.clone());
            }
            per_rank.push(batches);
        }
        for (step, batch) in global.iter().enumerate() {
            let joined: Vec<Row> = per_rank.iter().flat_map(|b| b[step].clone()).collect();
            prop_assert_eq!(&joined, batch);
            let ids: HashSet<(u32, u64, u64)> =
                batch.iter().map(|r| (r.dataset, r.sample, r.epoch)).collect();
            prop_assert_eq!(ids.len(), batch.len(), "no row repeats within a global batch");
        }
    }

    /// In the ownership modes every sample belongs to exactly one rank, and each rank's first
    /// pass covers what it owns once.
    #[test]
    fn ownership_partitions_every_sample_once(partition in ownership_strategy(), world in 1usize..6,
                                              n in 40u64..300, shuffle in shuffle_strategy(),
                                              local in 1usize..5) {
        let mut owner = vec![None; n as usize];
        for rank in 0..world {
            let p = plan(
                OrderConfig { partition, shuffle, world, rank, local_batch: local, ..Default::default() },
                vec![DatasetSpec::new("d", n, 1.0)],
            );
            let owned: Vec<u64> = p.owned(0, rank).collect();
            for &s in &owned {
                prop_assert!(owner[s as usize].is_none(), "sample {s} owned twice");
                owner[s as usize] = Some(rank);
            }
            let mut planner = Planner::new(p);
            let mut seen = Vec::new();
            let mut rows = Vec::new();
            while (seen.len() as u64) < owned.len() as u64 && planner.next_rows(&mut rows) {
                seen.extend(rows.iter().filter(|r| r.epoch == 0).map(|r| r.sample));
            }
            seen.sort_unstable();
            let mut want = owned.clone();
            want.sort_unstable();
            prop_assert_eq!(seen, want);
        }
        prop_assert!(owner.iter().all(Option::is_some), "every sample has an owner");
    }

    /// The stream planned from a cursor taken at any step (through JSON) equals the
    /// uninterrupted stream.
    #[test]
    fn resume_from_any_step_continues_exactly(k in 0u64..40, seed in any::<u64>(),
                                              shuffle in shuffle_strategy(),
                                              stochastic in any::<bool>(),
                                              sizes in proptest::collection::vec(1u64..60, 1..4)) {
        let data: Vec<DatasetSpec> = sizes.iter().enumerate()
            .map(|(i, &n)| DatasetSpec::new(format!("d{i}"), n, (i + 1) as f64)).collect();
        let mixture = if stochastic { MixtureMode::Stochastic } else { MixtureMode::Deterministic };
        let cfg = OrderConfig { seed, shuffle, mixture, world: 2, local_batch: 3, ..Default::default() };
        let whole = global_stream(&mut Planner::new(plan(cfg.clone(), data.clone())), k + 20);
        let mut first = Planner::new(plan(cfg.clone(), data.clone()));
        global_stream(&mut first, k);
        let json = serde_json::to_string(&first.cursor()).unwrap();
        let cursor: Cursor = serde_json::from_str(&json).unwrap();
        let mut resumed =
            Planner::resume(plan(cfg, data), &cursor, ResumeOptions::default()).unwrap();
        prop_assert_eq!(resumed.step(), k);
        prop_assert_eq!(&global_stream(&mut resumed, 20)[..], &whole[k as usize..]);
    }

    /// Elastic resume: world 4 up to step k, then world 2 with the same global batch size.
    #[test]
    fn elastic_resume_keeps_the_global_stream(k in 0u64..30, seed in any::<u64>(),
                                              shuffle in shuffle_strategy(), b in 1usize..4) {
        let data = vec![DatasetSpec::new("web", 37, 2.0), DatasetSpec::new("code", 11, 1.0)];
        let cfg = |world, local_batch| OrderConfig { seed, shuffle, world, local_batch, ..Default::default() };
        let whole = global_stream(&mut Planner::new(plan(cfg(4, b), data.clone())), k + 15);
        let mut four = Planner::new(plan(cfg(4, b), data.clone()));
        global_stream(&mut four, k);
        let mut two =
            Planner::resume(plan(cfg(2, 2 * b), data), &four.cursor(), ResumeOptions::default())
                .unwrap();
        let key = |rows: &[Row]| rows.iter().map(|r| (r.dataset, r.sample, r.epoch)).collect::<Vec<_>>();
        for (after, before) in global_stream(&mut two, 15).iter().zip(&whole[k as usize..]) {
            prop_assert_eq!(key(after), key(before));
        }
    }

    /// The deterministic mixture keeps every dataset within one sample of w_d * i.
    #[test]
    fn deterministic_mixture_is_exact_at_every_prefix(
        weights in proptest::collection::vec(0.01f64..10.0, 1..10)) {
        let data: Vec<DatasetSpec> = weights.iter().enumerate()
            .map(|(i, &w)| DatasetSpec::new(format!("d{i}"), 5, w)).collect();
        let p = plan(OrderConfig { shuffle: Shuffle::None, local_batch: 1, ..Default::default() }, data);
        let w = p.weights().to_vec();
        let mut planner = Planner::new(p);
        let mut counts = vec![0f64; w.len()];
        let mut rows = Vec::new();
        for i in 1..=3000 {
            planner.next_rows(&mut rows);
            counts[rows[0].dataset as usize] += 1.0;
            for d in 0..w.len() {
                prop_assert!((counts[d] - w[d] * i as f64).abs() <= 1.0 + 1e-9,
                             "dataset {d} at {i}: {} vs {}", counts[d], w[d] * i as f64);
            }
        }
    }
}

#[test]
fn stochastic_mixture_stays_within_five_sigma() {
    let weights = [0.5, 0.3, 0.15, 0.05];
    let data: Vec<DatasetSpec> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| DatasetSpec::new(format!("d{i}"), 1000, w))
        .collect();
    let n = 100_000u64;
    let p = plan(
        OrderConfig {
            seed: 11,
            mixture: MixtureMode::Stochastic,
            local_batch: 1000,
            ..Default::default()
        },
        data,
    );
    let rows = global_stream(&mut Planner::new(p), n / 1000).concat();
    let mut counts = [0f64; 4];
    rows.iter().for_each(|r| counts[r.dataset as usize] += 1.0);
    for (d, &w) in weights.iter().enumerate() {
        let sigma = (n as f64 * w * (1.0 - w)).sqrt();
        assert!(
            (counts[d] - n as f64 * w).abs() <= 5.0 * sigma,
            "dataset {d}: {}",
            counts[d]
        );
    }
    // Not the deterministic interleave: some prefix strays more than one sample.
    let mut c0 = 0.0;
    let strays = rows.iter().enumerate().any(|(i, r)| {
        c0 += (r.dataset == 0) as u8 as f64;
        (c0 - 0.5 * (i + 1) as f64).abs() > 1.0
    });
    assert!(strays);
}

#[test]
fn skip_to_equals_planning_through() {
    let data = vec![
        DatasetSpec::new("a", 13, 1.0),
        DatasetSpec::new("b", 29, 3.0),
    ];
    let cfg = OrderConfig {
        seed: 3,
        world: 3,
        local_batch: 2,
        ..Default::default()
    };
    let whole = global_stream(&mut Planner::new(plan(cfg.clone(), data.clone())), 30);
    let mut skipped = Planner::new(plan(cfg, data));
    skipped.skip_to(17);
    assert_eq!(global_stream(&mut skipped, 13), whole[17..]);
}

#[test]
fn a_far_skip_equals_planning_through_in_both_mixture_modes() {
    // 2100 steps of 512 rows: past one period of the mixture (2^20 rows), so the jump uses a
    // whole period and a replayed part.
    for mixture in [MixtureMode::Deterministic, MixtureMode::Stochastic] {
        let cfg = OrderConfig {
            seed: 4,
            mixture,
            world: 8,
            local_batch: 64,
            ..Default::default()
        };
        let data = vec![
            DatasetSpec::new("web", 1000, 0.5),
            DatasetSpec::new("code", 300, 0.3),
            DatasetSpec::new("books", 77, 0.2),
        ];
        let mut walked = Planner::new(plan(cfg.clone(), data.clone()));
        let mut rows = Vec::new();
        for _ in 0..2100 {
            walked.next_rows(&mut rows);
        }
        let mut jumped = Planner::new(plan(cfg, data));
        jumped.skip_to(2100);
        assert_eq!(jumped.cursor(), walked.cursor(), "{mixture:?}");
        assert_eq!(
            global_stream(&mut jumped, 3),
            global_stream(&mut walked, 3),
            "{mixture:?}"
        );
    }
}

#[test]
fn construction_errors_name_what_is_wrong() {
    let init = |data: Vec<DatasetSpec>| OrderConfig::default().init(data).unwrap_err();
    let e = init(vec![]);
    assert!(matches!(e, Error::NoDatasets), "{e}");
    let e = init(vec![
        DatasetSpec::new("web", 5, 1.0),
        DatasetSpec::new("code", 5, 1.0),
        DatasetSpec::new("web", 5, 1.0),
        DatasetSpec::new("code", 5, 1.0),
        DatasetSpec::new("books", 5, 1.0),
    ]);
    assert!(
        matches!(&e, Error::DuplicateDatasets { names } if names == &["code", "web"]),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "duplicate dataset names: code, web; every dataset needs a unique name"
    );
    for w in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = init(vec![
            DatasetSpec::new("ok", 5, 1.0),
            DatasetSpec::new("bad", 5, w),
        ]);
        assert!(
            matches!(&e, Error::BadWeight { dataset, .. } if dataset == "bad"),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("dataset bad: weight {w}")),
            "{e}"
        );
    }
    let e = init(vec![
        DatasetSpec::new("ok", 5, 1.0),
        DatasetSpec::new("void", 0, 1.0),
    ]);
    assert!(
        matches!(&e, Error::EmptyDataset { dataset } if dataset == "void"),
        "{e}"
    );

    for partition in [Partition::Contiguous, Partition::Strided, Partition::Hashed] {
        let e = OrderConfig {
            partition,
            world: 8,
            ..Default::default()
        }
        .init(vec![
            DatasetSpec::new("big", 1000, 1.0),
            DatasetSpec::new("tiny", 3, 1.0),
        ])
        .unwrap_err();
        assert!(
            matches!(&e, Error::EmptyPartition { dataset, size: 3, world: 8, .. } if dataset == "tiny"),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("dataset tiny: with 3 samples over world size 8"),
            "{msg}"
        );
    }
    let e = OrderConfig {
        rank: 2,
        world: 2,
        ..Default::default()
    }
    .init(vec![DatasetSpec::new("a", 1, 1.0)])
    .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
}

fn taken_at(cfg: &OrderConfig, data: &[DatasetSpec], steps: u64) -> Cursor {
    let mut p = Planner::new(plan(cfg.clone(), data.to_vec()));
    global_stream(&mut p, steps);
    p.cursor()
}

fn resume_err(cfg: OrderConfig, data: Vec<DatasetSpec>, cursor: &Cursor) -> String {
    let e = Planner::resume(plan(cfg, data), cursor, ResumeOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Resume(_)), "{e}");
    e.to_string()
}

#[test]
fn resume_refuses_changes_that_would_change_the_stream() {
    let data = vec![
        DatasetSpec::new("a", 10, 1.0),
        DatasetSpec::new("b", 20, 1.0),
    ];
    let cfg = OrderConfig {
        seed: 1,
        world: 2,
        local_batch: 4,
        ..Default::default()
    };
    let cursor = taken_at(&cfg, &data, 5);

    let msg = resume_err(
        OrderConfig {
            seed: 2,
            ..cfg.clone()
        },
        data.clone(),
        &cursor,
    );
    assert!(
        msg.contains("the seed was 1 when the cursor was taken and is 2 now"),
        "{msg}"
    );
    let msg = resume_err(
        OrderConfig {
            local_batch: 2,
            ..cfg.clone()
        },
        data.clone(),
        &cursor,
    );
    assert!(
        msg.contains("global batch size (world x local batch) was 8 and is 4"),
        "{msg}"
    );
    let msg = resume_err(
        OrderConfig {
            shuffle: Shuffle::None,
            ..cfg.clone()
        },
        data.clone(),
        &cursor,
    );
    assert!(msg.contains("the shuffle was full"), "{msg}");
    let grown = vec![
        DatasetSpec::new("a", 11, 1.0),
        DatasetSpec::new("b", 20, 1.0),
    ];
    let msg = resume_err(cfg.clone(), grown, &cursor);
    assert!(
        msg.contains("dataset a held 10 samples when the cursor was taken and holds 11"),
        "{msg}"
    );
    let added = vec![
        data[0].clone(),
        data[1].clone(),
        DatasetSpec::new("c", 5, 1.0),
    ];
    let msg = resume_err(cfg.clone(), added.clone(), &cursor);
    assert!(msg.contains("added: [c], removed: []"), "{msg}");
    let msg = resume_err(cfg.clone(), vec![data[0].clone()], &cursor);
    assert!(msg.contains("added: [], removed: [b]"), "{msg}");

    // Allowed explicitly, a new dataset starts at consumed 0 and old ones keep their counts.
    let allow = ResumeOptions {
        allow_dataset_changes: true,
    };
    let resumed = Planner::resume(plan(cfg.clone(), added), &cursor, allow).unwrap();
    let c = resumed.cursor();
    assert_eq!(c.datasets["c"].consumed, 0);
    assert_eq!(c.datasets["a"].consumed, cursor.datasets["a"].consumed);

    // Ownership partitions cannot change the world size.
    let own = OrderConfig {
        partition: Partition::Strided,
        world: 2,
        local_batch: 4,
        ..Default::default()
    };
    let cursor = taken_at(&own, &data, 3);
    let msg = resume_err(
        OrderConfig {
            world: 4,
            local_batch: 2,
            ..own
        },
        data.clone(),
        &cursor,
    );
    assert!(
        msg.contains("the strided partition gives each rank fixed samples"),
        "{msg}"
    );

    // A tampered cursor whose counts do not add up.
    let mut bad = taken_at(&cfg, &data, 2);
    bad.datasets.get_mut("a").unwrap().consumed += 3;
    let e = Planner::resume(
        plan(cfg.clone(), data.clone()),
        &bad,
        ResumeOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Checkpoint { .. }), "{e}");
    assert!(
        e.to_string().contains(
            "cursor.datasets: the counts since the mixture origin add up to 19, but 16 rows"
        ),
        "{e}"
    );
    // Counts that add up but are not what the schedule gives at that position.
    let mut moved = taken_at(&cfg, &data, 2);
    moved.datasets.get_mut("a").unwrap().consumed += 1;
    moved.datasets.get_mut("b").unwrap().consumed -= 1;
    let e = Planner::resume(plan(cfg, data), &moved, ResumeOptions::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains("cursor.datasets.a.consumed: 9 but the mixture schedule gives 8"),
        "{e}"
    );
}

#[test]
fn resume_with_new_weights_follows_them_from_the_cursor_on() {
    let cfg = OrderConfig {
        local_batch: 10,
        ..Default::default()
    };
    let before = vec![
        DatasetSpec::new("a", 100, 1.0),
        DatasetSpec::new("b", 100, 1.0),
    ];
    let cursor = taken_at(&cfg, &before, 30); // 300 rows, 150 each
    assert_eq!(cursor.datasets["a"].consumed, 150);
    let after = vec![
        DatasetSpec::new("a", 100, 3.0),
        DatasetSpec::new("b", 100, 1.0),
    ];
    let mut resumed = Planner::resume(plan(cfg, after), &cursor, ResumeOptions::default()).unwrap();
    let rows = global_stream(&mut resumed, 40).concat();
    let mut counts = BTreeMap::<u32, f64>::new();
    for (i, r) in rows.iter().enumerate() {
        *counts.entry(r.dataset).or_default() += 1.0;
        let a = counts.get(&0).copied().unwrap_or(0.0);
        assert!((a - 0.75 * (i + 1) as f64).abs() <= 1.0, "row {i}: {a}");
    }
    // Dataset a carries on from sample 150 of its stream: epoch 1, offset 50.
    assert_eq!(rows.iter().find(|r| r.dataset == 0).unwrap().epoch, 1);
    assert_eq!(resumed.cursor().datasets["a"].consumed, 150 + 300);
}

#[test]
fn a_sample_limit_ends_with_a_partial_global_batch_for_the_first_ranks() {
    let data = vec![DatasetSpec::new("a", 10, 1.0)];
    let cfg = |rank| OrderConfig {
        shuffle: Shuffle::None,
        world: 3,
        rank,
        local_batch: 2,
        limit: StreamLimit::Samples(14),
        ..Default::default()
    };
    let p = plan(cfg(0), data.clone());
    assert_eq!(
        p.steps(),
        Some(3),
        "14 rows in global batches of 6: 6, 6, 2"
    );
    let last = global_stream(&mut Planner::new(p), 10).pop().unwrap();
    let got: Vec<(u32, u64, u64)> = last.iter().map(|r| (r.rank, r.sample, r.epoch)).collect();
    assert_eq!(got, [(0, 2, 1), (0, 3, 1)]);
    // Ranks 1 and 2 plan the same three steps; their share of the last one is empty.
    let mut rank2 = Planner::new(plan(cfg(2), data));
    let mut rows = Vec::new();
    let sizes: Vec<usize> =
        std::iter::from_fn(|| rank2.next_rows(&mut rows).then_some(rows.len())).collect();
    assert_eq!(sizes, [2, 2, 0]);
}

#[test]
fn drop_last_gives_every_rank_the_same_full_steps_and_is_checkpointed() {
    // The case: 5 samples, one epoch, 2 ranks of 2 rows. Without drop_last rank 1's
    // second step is empty; with it the stream ends after the one full global batch.
    let data = vec![DatasetSpec::new("a", 5, 1.0)];
    let cfg = |rank, drop_last| OrderConfig {
        shuffle: Shuffle::None,
        world: 2,
        rank,
        local_batch: 2,
        limit: StreamLimit::Epochs(1.0),
        drop_last,
        ..Default::default()
    };
    let sizes = |rank, drop_last| -> Vec<usize> {
        let mut planner = Planner::new(plan(cfg(rank, drop_last), data.clone()));
        let mut rows = Vec::new();
        std::iter::from_fn(|| planner.next_rows(&mut rows).then_some(rows.len())).collect()
    };
    assert_eq!(sizes(0, false), [2, 1]);
    assert_eq!(sizes(1, false), [2, 0]);
    assert_eq!(sizes(0, true), [2]);
    assert_eq!(sizes(1, true), [2]);
    assert_eq!(plan(cfg(0, true), data.clone()).steps(), Some(1));
    assert_eq!(plan(cfg(0, false), data.clone()).steps(), Some(2));
    // A sample budget too: 14 rows in global batches of 4 keep 3 full steps (12 rows).
    let samples = OrderConfig {
        limit: StreamLimit::Samples(14),
        ..cfg(0, true)
    };
    assert_eq!(plan(samples, data.clone()).steps(), Some(3));
    // An endless stream has no last batch to drop.
    let endless = OrderConfig {
        limit: StreamLimit::Endless,
        ..cfg(0, true)
    };
    assert_eq!(plan(endless, data.clone()).steps(), None);

    // The cursor records it; a resume that changes it is refused, one that keeps it continues.
    let cursor = taken_at(&cfg(0, true), &data, 1);
    assert!(cursor.drop_last);
    let json = serde_json::to_string(&cursor).unwrap();
    let back: Cursor = serde_json::from_str(&json).unwrap();
    assert_eq!(back, cursor);
    let msg = resume_err(cfg(0, false), data.clone(), &cursor);
    assert!(msg.contains("drop_last setting was true"), "{msg}");
    let mut resumed = Planner::resume(
        plan(cfg(0, true), data.clone()),
        &cursor,
        ResumeOptions::default(),
    )
    .unwrap();
    let mut rows = Vec::new();
    assert!(
        !resumed.next_rows(&mut rows),
        "the dropped last batch stays dropped"
    );
    // A checkpoint written before drop_last existed reads as false.
    let mut old: serde_json::Value =
        serde_json::to_value(taken_at(&cfg(0, false), &data, 1)).unwrap();
    old.as_object_mut().unwrap().remove("drop_last");
    let old: Cursor = serde_json::from_value(old).unwrap();
    assert!(!old.drop_last);
}

#[test]
fn plan_drop_last_flag() {
    let plan = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardflow"))
            .args([
                "plan",
                "--data",
                "a=5",
                "--epochs",
                "1",
                "--local-batch",
                "2",
            ])
            .args([
                "--world",
                "2",
                "--shuffle",
                "none",
                "--steps",
                "10",
                "--json",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        rows.iter()
            .map(|r| {
                (
                    r["step"].as_u64().unwrap(),
                    r["rank"].as_u64().unwrap(),
                    r["rows"].as_array().unwrap().len(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(plan(&[]), [(0, 0, 2), (0, 1, 2), (1, 0, 1), (1, 1, 0)]);
    assert_eq!(plan(&["--drop-last"]), [(0, 0, 2), (0, 1, 2)]);
}
