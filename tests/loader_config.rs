//! `LoaderConfig`: what it builds, how it saves and compares, transforms by name, directories,
//! and the builder's `resume(Option)` and `starting_at`.

mod common;

use shardflow::Error;
use shardflow::collate::{Batch, CollateConfig, Padding};
use shardflow::loader::{DatasetConfig, LoaderBuilder, LoaderConfig, NamedTransforms, Source};
use shardflow::order::{OrderConfig, StreamLimit};

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
    c.prefetch = 3;
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
    assert_eq!(minimal.workers, LoaderConfig::default().workers);
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
        .init_with(0, 1, shardflow::device::HostSink, &named)
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
