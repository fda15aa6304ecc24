//! `LoaderConfig`: what it builds, how it saves and compares, transforms by name, directories,
//! and the builder's `resume(Option)` and `starting_at`.

mod common;

use shardflow::Error;
use shardflow::collate::{Batch, CollateConfig, Padding};
use shardflow::collective::RunSpec;
use shardflow::loader::{
    DatasetConfig, LoaderBuilder, LoaderConfig, NamedTransforms, Ownership, RuntimeConfig, Source,
};
use shardflow::order::{OrderConfig, RankRanges, StreamLimit};

fn config(dir: &std::path::Path) -> LoaderConfig {
    common::mixture(dir);
    let mut c = LoaderConfig::new(vec![
        DatasetConfig::new(dir.join("web")).with_weight(3.0),
        DatasetConfig::new(dir.join("code.idx")).with_weight(1.0),
        DatasetConfig::new(dir.join("books"))
            .with_name("long")
            .with_weight(2.0),
    ])
    .with_batch_size(4)
    .with_seed(9)
    .with_epochs(1.0)
    .with_workers(1)
    .with_collate(CollateConfig {
        seq_len: 64,
        padding: Padding::Multiple(4),
        ..Default::default()
    });
    c.runtime.prefetch = 3;
    c
}

fn bytes(batches: impl Iterator<Item = shardflow::Result<Batch<i32>>>) -> Vec<Vec<u8>> {
    batches.map(|b| b.unwrap().to_bytes()).collect()
}

#[test]
fn a_config_builds_what_the_builder_builds() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let sources = common::mixture(dir.path());
    let by_hand = LoaderBuilder::<i32>::new(vec![
        sources[0].clone(),
        sources[1].clone(),
        Source::new("long", sources[2].data.clone(), 2.0),
    ])
    .with_order(OrderConfig {
        seed: 9,
        local_batch: 4,
        rank: 1,
        world: 2,
        limit: StreamLimit::Epochs(1.0),
        ..Default::default()
    })
    .with_collate(c.collate.clone())
    .with_workers(1)
    .build_host()
    .unwrap();
    let from_config = c.init::<i32>(1, 2).unwrap();
    assert_eq!(from_config.plan().names(), ["web", "code", "long"]);
    let want = bytes(by_hand);
    assert!(!want.is_empty());
    assert_eq!(bytes(from_config), want);
}

#[test]
fn a_config_round_trips_through_json_and_fingerprints_without_the_rank() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let json = serde_json::to_string_pretty(&c).unwrap();
    let back: LoaderConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, c);
    assert_eq!(back.fingerprint(), c.fingerprint());
    // Ranks agree on it whatever rank each set; anything that changes the stream changes it.
    assert_eq!(
        c.clone().with_rank(3, 4).fingerprint(),
        c.clone().with_rank(0, 4).fingerprint()
    );
    assert_ne!(
        c.clone().with_rank(0, 4).fingerprint(),
        c.clone().with_rank(0, 2).fingerprint()
    );
    assert_ne!(c.clone().with_seed(10).fingerprint(), c.fingerprint());
    assert_ne!(c.clone().with_batch_size(5).fingerprint(), c.fingerprint());
    // A hand-written config needs only the datasets; the rest takes the defaults.
    let minimal: LoaderConfig =
        serde_json::from_str(r#"{"datasets": [{"paths": ["data/web"]}]}"#).unwrap();
    assert_eq!(minimal.datasets[0].weight, 1.0);
    assert_eq!(minimal.runtime, LoaderConfig::default().runtime);
}

#[test]
fn named_transforms_are_resolved_at_init() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.transforms = vec!["first_two".into()];
    let err = c
        .init::<i32>(0, 1)
        .err()
        .expect("first_two is not registered");
    assert!(
        matches!(&err, Error::Config(m) if m.contains("\"first_two\" is not registered; known: none")),
        "{err}"
    );
    let named = NamedTransforms::new().with("first_two", |_, ids: &mut Vec<i32>| {
        ids.truncate(2);
        Ok(())
    });
    let loader = c
        .init_with(0, 1, shardflow::device::HostSink::new(), &named)
        .unwrap();
    for b in loader {
        assert!(b.unwrap().lengths.iter().all(|&l| l <= 2));
    }
}

#[test]
fn a_directory_is_one_dataset_named_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let shards = dir.path().join("corpus");
    std::fs::create_dir(&shards).unwrap();
    common::write_dataset(&shards, "a", 0, &[3, 4]);
    common::write_dataset(&shards, "b", 1, &[5]);
    let s = Source::open_dir(&shards, 2.0).unwrap();
    assert_eq!(
        (s.name.as_str(), s.data.len(), s.weight),
        ("corpus", 3, 2.0)
    );
    let d = DatasetConfig::new(format!("{}/", shards.display()))
        .open()
        .unwrap();
    assert_eq!((d.name.as_str(), d.data.len()), ("corpus", 3));
    let err = DatasetConfig::new(dir.path().join("missing"))
        .open()
        .err()
        .unwrap();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn resume_takes_an_option_and_a_padded_stream_can_start_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let full = bytes(
        c.builder::<i32>(0, 1)
            .unwrap()
            .resume(None)
            .build_host()
            .unwrap(),
    );
    let mut head = c.init::<i32>(0, 1).unwrap();
    for _ in 0..5 {
        head.next().unwrap().unwrap();
    }
    let state = head.state();
    let resumed = c
        .builder::<i32>(0, 1)
        .unwrap()
        .resume(Some(state))
        .build_host()
        .unwrap();
    assert_eq!(bytes(resumed), full[5..]);
    let started = c
        .builder::<i32>(0, 1)
        .unwrap()
        .starting_at(7)
        .build_host()
        .unwrap();
    assert_eq!(bytes(started), full[7..]);

    let mut packed = c.clone();
    packed.collate.pack = true;
    let err = packed
        .builder::<i32>(0, 1)
        .unwrap()
        .starting_at(1)
        .build_host()
        .err()
        .unwrap();
    assert!(err.to_string().contains("only when it is padded"), "{err}");
}

#[test]
fn ranks_that_differ_only_in_threads_agree_on_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let threads = c.clone().with_workers(4).with_runtime(RuntimeConfig {
        workers: 4,
        prefetch: 9,
        read_ahead: 2,
        caller_builds: false,
        watchdog: std::time::Duration::from_secs(5),
        slow_factor: 3.0,
    });
    assert_eq!(c.clone().with_workers(0).fingerprint(), c.fingerprint());
    assert_eq!(threads.fingerprint(), c.fingerprint());
    assert_eq!(
        RunSpec::new(&threads.stream_spec(), 7).unwrap().hash,
        RunSpec::new(&c.stream_spec(), 7).unwrap().hash
    );
    // And their streams are indeed the same.
    assert_eq!(
        bytes(threads.init::<i32>(1, 2).unwrap()),
        bytes(c.init::<i32>(1, 2).unwrap())
    );
    let mut longer = c.clone();
    longer.collate.seq_len += 1;
    assert_ne!(longer.fingerprint(), c.fingerprint());
}

#[test]
fn a_rank_set_in_the_config_is_never_silently_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(dir.path());
    let err = c
        .clone()
        .with_rank(1, 2)
        .init::<i32>(0, 1)
        .err()
        .expect("the config says rank 1 of 2");
    assert!(
        matches!(&err, Error::Config(m) if m.contains("the config says rank 1 of 2, and the loader is built for rank 0 of 1")),
        "{err}"
    );
    let err = c
        .clone()
        .with_rank(0, 4)
        .init::<i32>(0, 2)
        .err()
        .expect("the config says a world of 4");
    assert!(err.to_string().contains("rank 0 of 4"), "{err}");
    // The same rank in both places is one rank.
    assert_eq!(
        bytes(c.clone().with_rank(1, 2).init::<i32>(1, 2).unwrap()),
        bytes(c.init::<i32>(1, 2).unwrap())
    );
}

#[test]
fn a_config_saved_before_the_runtime_section_still_loads() {
    let saved = r#"{
        "datasets": [
            {"name": "web", "paths": ["data/web"], "weight": 3.0,
             "ranges": {"ranks": [[[0, 10]], [[10, 20]]]}},
            {"paths": ["data/code"], "classes": "data/code.classes"},
            {"paths": ["data/books"]}
        ],
        "workers": 3,
        "prefetch": 5
    }"#;
    let c: LoaderConfig = serde_json::from_str(saved).unwrap();
    assert_eq!((c.runtime.workers, c.runtime.prefetch), (3, 5));
    assert_eq!(
        c.datasets[0].owners,
        Ownership::Ranges(RankRanges::new(vec![vec![[0, 10]], vec![[10, 20]]]))
    );
    assert_eq!(
        c.datasets[1].owners,
        Ownership::Classes("data/code.classes".into())
    );
    assert_eq!(c.datasets[2].owners, Ownership::Plain);
    // It saves with the same keys, and the runtime in its own section.
    let json: serde_json::Value = serde_json::to_value(&c).unwrap();
    assert!(json["datasets"][0]["ranges"].is_object(), "{json}");
    assert_eq!(json["datasets"][1]["classes"], "data/code.classes");
    assert!(json["datasets"][2].get("ranges").is_none(), "{json}");
    assert_eq!(json["runtime"]["workers"], 3);
    assert!(json.get("workers").is_none(), "{json}");
    let back: LoaderConfig = serde_json::from_value(json).unwrap();
    assert_eq!(back, c);

    // No dataset holds both ranges and classes.
    let both = r#"{"datasets": [{"name": "web", "paths": ["data/web"],
        "ranges": {"ranks": [[[0, 10]]]}, "classes": "data/web.classes"}]}"#;
    let err = serde_json::from_str::<LoaderConfig>(both).unwrap_err();
    assert!(
        err.to_string()
            .contains("the dataset web gives both ranges and classes"),
        "{err}"
    );
}
