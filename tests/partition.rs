//! The range and stratified partitions: exact shares, every sample once per epoch, the
//! validation errors, resume, and the per-class counts.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{lengths, write_dataset};
use proptest::prelude::*;
use shardflow::Error;
use shardflow::collate::{Batch, CollateConfig};
use shardflow::loader::{LoaderBuilder, Source};
use shardflow::metrics::State;
use shardflow::order::{
    Classes, DatasetSpec, OrderConfig, Owners, Partition, Plan, Planner, RankRanges, ResumeOptions,
    Row, Shuffle,
};

fn config(partition: Partition, world: usize, rank: usize, local: usize) -> OrderConfig {
    OrderConfig {
        partition,
        world,
        rank,
        local_batch: local,
        seed: 7,
        ..Default::default()
    }
}

fn ranged(n: u64, ranks: Vec<Vec<[u64; 2]>>, gaps: bool) -> DatasetSpec {
    DatasetSpec::new("d", n, 1.0).with_owners(Some(Owners::Ranges(
        RankRanges::new(ranks).allow_gaps(gaps),
    )))
}

fn classed(name: &str, classes: &[u32], weight: f64) -> DatasetSpec {
    DatasetSpec::new(name, classes.len() as u64, weight)
        .with_owners(Some(Owners::Classes(Classes::new(classes.to_vec()))))
}

/// Rank `rank`'s first `rows` rows.
fn rank_rows(cfg: OrderConfig, data: Vec<DatasetSpec>, rows: usize) -> Vec<Row> {
    let mut planner = Planner::new(Arc::new(cfg.init(data).unwrap()));
    let mut out = Vec::new();
    let mut step = Vec::new();
    while out.len() < rows && planner.next_rows(&mut step) {
        out.extend_from_slice(&step);
    }
    out.truncate(rows);
    out
}

/// The splitmix64 finalizer, to scramble test inputs reproducibly.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn init_err(cfg: OrderConfig, data: Vec<DatasetSpec>) -> Error {
    cfg.init(data).unwrap_err()
}

#[test]
fn range_shares_are_the_given_ranges_each_sample_once_per_epoch() {
    // 100 samples over 3 ranks, uneven, one rank with two ranges, listed out of order.
    let ranks = vec![vec![[60, 100]], vec![[20, 30], [0, 20]], vec![[30, 60]]];
    let mut union = Vec::new();
    for (rank, mine) in ranks.iter().enumerate() {
        let cfg = config(Partition::Range, 3, rank, 4);
        let plan = cfg
            .clone()
            .init(vec![ranged(100, ranks.clone(), false)])
            .unwrap();
        let len: u64 = mine.iter().map(|[s, e]| e - s).sum();
        assert_eq!(plan.share_len(0, rank), len);
        let owned: Vec<u64> = mine.iter().flat_map(|&[s, e]| s..e).collect();
        assert_eq!(plan.owned(0, rank).collect::<Vec<_>>(), owned);
        // Three epochs of this rank's view: each its own samples once, shuffled.
        let rows = rank_rows(
            cfg,
            vec![ranged(100, ranks.clone(), false)],
            3 * len as usize,
        );
        for epoch in 0..3 {
            let part = &rows[(epoch * len) as usize..((epoch + 1) * len) as usize];
            assert!(
                part.iter()
                    .all(|r| r.epoch == epoch && r.rank == rank as u32)
            );
            let mut samples: Vec<u64> = part.iter().map(|r| r.sample).collect();
            samples.sort_unstable();
            let mut want = owned.clone();
            want.sort_unstable();
            assert_eq!(samples, want, "rank {rank} epoch {epoch}");
            if epoch == 0 {
                union.extend(samples);
            }
        }
    }
    union.sort_unstable();
    assert_eq!(
        union,
        (0..100).collect::<Vec<_>>(),
        "every sample once across ranks"
    );
}

#[test]
fn range_partition_errors_name_the_rank_dataset_and_range() {
    let cfg = config(Partition::Range, 2, 0, 2);
    let err = |ranks: Vec<Vec<[u64; 2]>>, gaps: bool| {
        init_err(cfg.clone(), vec![ranged(50, ranks, gaps)]).to_string()
    };
    // An empty rank.
    let e = init_err(
        cfg.clone(),
        vec![ranged(50, vec![vec![[0, 50]], vec![]], false)],
    );
    assert!(
        matches!(&e, Error::EmptyPartition { dataset, rank: 1, partition, .. }
            if dataset == "d" && partition == "range"),
        "{e}"
    );
    // An overlap between ranks.
    assert_eq!(
        err(vec![vec![[0, 30]], vec![[25, 50]]], false),
        "dataset d rank 1: range 25..50 overlaps samples 25..30 owned by rank 0 (0..30) too"
    );
    // An overlap within a rank.
    assert_eq!(
        err(vec![vec![[0, 30], [10, 20]], vec![[30, 50]]], false),
        "dataset d rank 0: range 10..20 overlaps samples 10..20 owned twice in its own ranges"
    );
    // A range past the end.
    assert_eq!(
        err(vec![vec![[0, 30]], vec![[30, 51]]], false),
        "dataset d rank 1: range 30..51 runs past the end of the dataset (50 samples)"
    );
    // An empty or reversed range.
    assert_eq!(
        err(vec![vec![[0, 30]], vec![[40, 40], [30, 50]]], false),
        "dataset d rank 1: range 40..40 is empty or reversed"
    );
    // Gaps, at the start, between and at the end, unless allowed.
    assert_eq!(
        err(vec![vec![[5, 30]], vec![[30, 50]]], false),
        "dataset d: samples 0..5 belong to no rank (set allow_gaps to leave them unread)"
    );
    assert_eq!(
        err(vec![vec![[0, 20]], vec![[30, 50]]], false),
        "dataset d: samples 20..30 belong to no rank (set allow_gaps to leave them unread)"
    );
    assert_eq!(
        err(vec![vec![[0, 20]], vec![[20, 45]]], false),
        "dataset d: samples 45..50 belong to no rank (set allow_gaps to leave them unread)"
    );
    let gappy = vec![vec![[5, 20]], vec![[30, 45]]];
    let plan = cfg.clone().init(vec![ranged(50, gappy, true)]).unwrap();
    assert_eq!((plan.share_len(0, 0), plan.share_len(0, 1)), (15, 15));
    // Ranges for another number of ranks.
    assert_eq!(
        err(vec![vec![[0, 50]]], false),
        "dataset d: ranges are given for 1 ranks but the world has 2"
    );
    // The mode without its input, and ranges with another mode.
    let e = init_err(cfg.clone(), vec![DatasetSpec::new("d", 50, 1.0)]).to_string();
    assert!(
        e.contains("the range partition needs its ranks' sample ranges"),
        "{e}"
    );
    let e = init_err(
        config(Partition::Contiguous, 2, 0, 2),
        vec![ranged(50, vec![vec![[0, 25]], vec![[25, 50]]], false)],
    )
    .to_string();
    assert!(e.contains("use the range partition"), "{e}");
}

#[test]
fn stratified_errors_and_small_classes() {
    // A class with fewer samples than ranks: some ranks get none of it, not an error.
    let classes = [0, 0, 0, 0, 0, 0, 1, 2, 2, 2, 2, 2];
    let plans: Vec<Plan> = (0..4)
        .map(|r| {
            config(Partition::Stratified, 4, r, 2)
                .init(vec![classed("d", &classes, 1.0)])
                .unwrap()
        })
        .collect();
    let with_class_1: Vec<usize> = (0..4)
        .filter(|&r| plans[r].owned(0, r).any(|s| classes[s as usize] == 1))
        .collect();
    assert_eq!(with_class_1.len(), 1);
    // Fewer samples than ranks leaves a rank empty: an error naming it.
    let e = init_err(
        config(Partition::Stratified, 4, 0, 1),
        vec![classed("d", &[3, 3, 4], 1.0)],
    );
    assert!(
        matches!(&e, Error::EmptyPartition { rank: 3, size: 3, partition, .. } if partition == "stratified"),
        "{e}"
    );
    // One class per sample.
    let e = init_err(
        config(Partition::Stratified, 2, 0, 1),
        vec![
            DatasetSpec::new("d", 5, 1.0)
                .with_owners(Some(Owners::Classes(Classes::new(vec![1; 4])))),
        ],
    );
    assert_eq!(
        e.to_string(),
        "dataset d: 4 classes given for 5 samples: one class per sample"
    );
    let e = init_err(
        config(Partition::Stratified, 2, 0, 1),
        vec![DatasetSpec::new("d", 5, 1.0)],
    );
    assert!(e.to_string().contains("needs a class per sample"), "{e}");
}

#[test]
fn range_and_stratified_resume_exactly_and_refuse_a_world_or_input_change() {
    let ranges = vec![vec![[0, 30]], vec![[30, 45]], vec![[45, 80]]];
    let classes: Vec<u32> = (0..80).map(|i| (i * 7 % 5) as u32).collect();
    type Datasets = Box<dyn Fn() -> Vec<DatasetSpec>>;
    let cases: Vec<(Partition, Datasets)> = vec![
        (
            Partition::Range,
            Box::new(move || {
                vec![
                    ranged(80, ranges.clone(), false),
                    DatasetSpec::new("e", 80, 2.0).with_owners(Some(Owners::Ranges(
                        RankRanges::new(vec![vec![[0, 20]], vec![[20, 40]], vec![[40, 80]]]),
                    ))),
                ]
            }),
        ),
        (
            Partition::Stratified,
            Box::new(move || {
                vec![
                    classed("d", &classes, 1.0),
                    classed("e", &classes[..60], 2.0),
                ]
            }),
        ),
    ];
    for (partition, data) in cases {
        for rank in 0..3 {
            let cfg = config(partition, 3, rank, 5);
            let full = rank_rows(cfg.clone(), data(), 200);
            let mut planner = Planner::new(Arc::new(cfg.clone().init(data()).unwrap()));
            let mut rows = Vec::new();
            let mut step = Vec::new();
            for _ in 0..17 {
                planner.next_rows(&mut step);
                rows.extend_from_slice(&step);
            }
            let cursor = planner.cursor();
            assert!(cursor.partition_digest.is_some());
            let json = serde_json::to_string(&cursor).unwrap();
            let back = serde_json::from_str(&json).unwrap();
            let plan = Arc::new(cfg.clone().init(data()).unwrap());
            let mut resumed = Planner::resume(plan, &back, ResumeOptions::default()).unwrap();
            while rows.len() < 200 && resumed.next_rows(&mut step) {
                rows.extend_from_slice(&step);
            }
            assert_eq!(rows, full, "{partition} rank {rank}");
            // Another world size is refused like the other ownership modes.
            let mut bigger = config(partition, 4, 0, 5);
            bigger.local_batch = 5;
            let other = match partition {
                Partition::Range => vec![
                    ranged(
                        80,
                        vec![
                            vec![[0, 20]],
                            vec![[20, 40]],
                            vec![[40, 60]],
                            vec![[60, 80]],
                        ],
                        false,
                    ),
                    DatasetSpec::new("e", 80, 2.0).with_owners(Some(Owners::Ranges(
                        RankRanges::new(vec![
                            vec![[0, 20]],
                            vec![[20, 40]],
                            vec![[40, 60]],
                            vec![[60, 80]],
                        ]),
                    ))),
                ],
                _ => data(),
            };
            let e = Planner::resume(
                Arc::new(bigger.init(other).unwrap()),
                &back,
                ResumeOptions::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("global batch size") || e.contains("world size cannot change"),
                "{e}"
            );
        }
        // Other ranges or classes are refused by their digest.
        let changed = match partition {
            Partition::Range => vec![
                ranged(
                    80,
                    vec![vec![[0, 31]], vec![[31, 45]], vec![[45, 80]]],
                    false,
                ),
                DatasetSpec::new("e", 80, 2.0).with_owners(Some(Owners::Ranges(RankRanges::new(
                    vec![vec![[0, 20]], vec![[20, 40]], vec![[40, 80]]],
                )))),
            ],
            _ => {
                let mut c: Vec<u32> = (0..80).map(|i| (i * 7 % 5) as u32).collect();
                c[3] += 1;
                vec![classed("d", &c, 1.0), classed("e", &c[..60], 2.0)]
            }
        };
        let cfg = config(partition, 3, 0, 5);
        let mut planner = Planner::new(Arc::new(cfg.clone().init(data()).unwrap()));
        planner.skip_to(4);
        let e = Planner::resume(
            Arc::new(cfg.init(changed).unwrap()),
            &planner.cursor(),
            ResumeOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("differ from those the cursor was taken with"),
            "{e}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every rank holds each class within one sample of its global proportion, the ranks'
    /// shares partition the dataset, each rank sees its share once per epoch (shuffled within
    /// it), and the counts `plan --summary` prints are the shares' own.
    #[test]
    fn stratified_shares_keep_class_proportions(
        sizes in proptest::collection::vec(0usize..40, 1..6),
        world in 1usize..6,
        shuffle in prop_oneof![Just(Shuffle::None), Just(Shuffle::Full), (1u64..8).prop_map(Shuffle::Block)],
        salt in any::<u64>(),
        large_ids in any::<bool>(),
    ) {
        // Classes interleaved by a salted order, class ids spread out (beyond the dense tables'
        // range with `large_ids`).
        let id = |c: usize| c as u32 * 1000 + 3 + if large_ids { 1 << 30 } else { 0 };
        let mut classes: Vec<u32> = sizes.iter().enumerate()
            .flat_map(|(c, &n)| std::iter::repeat_n(id(c), n)).collect();
        let n = classes.len();
        prop_assume!(n >= world);
        for i in (1..n).rev() {
            let j = (splitmix(salt ^ i as u64) % (i as u64 + 1)) as usize;
            classes.swap(i, j);
        }
        let mut seen = vec![0u32; n];
        for rank in 0..world {
            let cfg = OrderConfig { shuffle, ..config(Partition::Stratified, world, rank, 3) };
            let plan = cfg.clone().init(vec![classed("d", &classes, 1.0)]).unwrap();
            let owned: Vec<u64> = plan.owned(0, rank).collect();
            prop_assert_eq!(plan.share_len(0, rank), owned.len() as u64);
            let mut counts = BTreeMap::<u32, u64>::new();
            for &s in &owned {
                *counts.entry(classes[s as usize]).or_default() += 1;
                seen[s as usize] += 1;
            }
            for (c, &size) in sizes.iter().enumerate() {
                let class = id(c);
                let got = counts.get(&class).copied().unwrap_or(0) as f64;
                let want = size as f64 / world as f64;
                prop_assert!((got - want).abs() < 1.0, "class {class}: {got} vs {want}");
            }
            let summary: BTreeMap<u32, u64> = plan.class_counts(0, rank).unwrap()
                .into_iter().filter(|c| c.1 > 0).collect();
            prop_assert_eq!(&summary, &counts);
            // Two epochs of this rank's stream: its share once each.
            let len = owned.len();
            let rows = rank_rows(cfg.clone(), vec![classed("d", &classes, 1.0)], 2 * len);
            // Resumed at any step, the stream continues exactly.
            let at = salt % (2 * len as u64 / 3 + 1);
            let mut planner = Planner::new(Arc::new(cfg.clone().init(vec![classed("d", &classes, 1.0)]).unwrap()));
            planner.skip_to(at);
            let plan = Arc::new(cfg.init(vec![classed("d", &classes, 1.0)]).unwrap());
            let mut resumed = Planner::resume(plan, &planner.cursor(), ResumeOptions::default()).unwrap();
            let mut tail = Vec::new();
            let mut step = Vec::new();
            while tail.len() + 3 * (at as usize) < 2 * len && resumed.next_rows(&mut step) {
                tail.extend_from_slice(&step);
            }
            tail.truncate(2 * len - 3 * at as usize);
            prop_assert_eq!(&rows[3 * at as usize..], &tail[..]);
            for epoch in 0..2 {
                let mut part: Vec<u64> = rows[epoch * len..(epoch + 1) * len]
                    .iter().map(|r| r.sample).collect();
                part.sort_unstable();
                let mut want = owned.clone();
                want.sort_unstable();
                prop_assert_eq!(part, want);
            }
        }
        prop_assert!(seen.iter().all(|&k| k == 1), "every sample owned by exactly one rank");
    }
}

/// Writes `classes` as the class file beside the shard at `dir/name`.
fn write_classes(dir: &std::path::Path, name: &str, classes: &[u32]) {
    let bytes: Vec<u8> = classes.iter().flat_map(|c| c.to_le_bytes()).collect();
    std::fs::write(dir.join(format!("{name}.classes")), bytes).unwrap();
}

#[test]
fn a_stratified_loader_reads_class_files_counts_classes_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let classes: Vec<u32> = (0..90).map(|i| [0, 0, 0, 1, 2, 2][i % 6] + 10).collect();
    let web = write_dataset(dir.path(), "web", 0, &lengths(90, 20, 0));
    write_classes(dir.path(), "web", &classes);
    let code = write_dataset(dir.path(), "code", 1, &lengths(30, 20, 1));
    let code_classes: Vec<u32> = (0..30).map(|i| (i % 2) as u32).collect();
    let sources = || {
        vec![
            Source::new("web", web.clone(), 2.0),
            // Given in code rather than read beside the shard.
            Source::new("code", code.clone(), 1.0).with_classes(Classes::new(code_classes.clone())),
        ]
    };
    let make = |rank: usize| {
        LoaderBuilder::<i32>::new(sources())
            .with_order(OrderConfig {
                partition: Partition::Stratified,
                world: 3,
                rank,
                local_batch: 4,
                ..Default::default()
            })
            .with_collate(CollateConfig {
                seq_len: 32,
                ..Default::default()
            })
            .with_workers(2)
    };
    let mut seen = BTreeMap::<u64, usize>::new();
    for rank in 0..3 {
        let mut loader = make(rank).build_host().unwrap();
        let batches: Vec<Batch<i32>> = loader.by_ref().take(30).map(|b| b.unwrap()).collect();
        // The class metric counts what this rank delivered, per dataset.
        for (name, cls) in [("web", &classes), ("code", &code_classes)] {
            let d = if name == "web" { 0 } else { 1 };
            let mut want = BTreeMap::<String, u64>::new();
            for b in &batches {
                for doc in b.docs.iter().filter(|doc| doc.dataset == d) {
                    *want
                        .entry(cls[doc.sample as usize].to_string())
                        .or_default() += 1;
                    if d == 0 {
                        *seen.entry(doc.sample).or_default() += 1;
                    }
                }
            }
            match loader.metrics().get(name, "class") {
                Some(State::Categorical { counts }) => {
                    assert_eq!(counts, &want, "rank {rank} {name}")
                }
                other => panic!("rank {rank} {name}: {other:?}"),
            }
        }
        // Resume from batch 11 equals the uninterrupted stream.
        let mut first = make(rank).build_host().unwrap();
        let head: Vec<_> = first
            .by_ref()
            .take(11)
            .map(|b| b.unwrap().to_bytes())
            .collect();
        let state = first.state();
        let json = serde_json::to_string(&state).unwrap();
        let mut resumed = make(rank)
            .resume(serde_json::from_str::<shardflow::loader::LoaderState>(&json).unwrap())
            .build_host()
            .unwrap();
        let tail: Vec<_> = resumed
            .by_ref()
            .take(19)
            .map(|b| b.unwrap().to_bytes())
            .collect();
        let whole: Vec<_> = batches.iter().map(Batch::to_bytes).collect();
        assert_eq!([head, tail].concat(), whole, "rank {rank}");
        // A world change is refused.
        let e = LoaderBuilder::<i32>::new(sources())
            .with_order(OrderConfig {
                partition: Partition::Stratified,
                world: 2,
                rank: 0,
                local_batch: 6,
                ..Default::default()
            })
            .with_collate(CollateConfig {
                seq_len: 32,
                ..Default::default()
            })
            .resume(state)
            .build_host()
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("world size cannot change"), "{e}");
    }
    // Ranks own disjoint shares of web: 90 samples over 3 ranks, 30 each.
    assert!(seen.keys().all(|&s| s < 90));
    // A class file of the wrong size is named.
    write_classes(dir.path(), "web", &classes[..89]);
    let e = make(0).build_host().err().unwrap();
    assert!(
        matches!(&e, Error::BadClassFile { path, .. } if path.ends_with("web.classes")),
        "{e}"
    );
    assert!(
        e.to_string().contains("89 classes for the 90 sequences"),
        "{e}"
    );
    std::fs::remove_file(dir.path().join("web.classes")).unwrap();
    let e = make(0).build_host().err().unwrap().to_string();
    assert!(e.contains("web.classes"), "{e}");
}
