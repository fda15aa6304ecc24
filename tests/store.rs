//! The file-store rendezvous across real processes (this test binary started again as a child
//! with a role), torn and foreign records, stale jobs, deadlines; and `World::from_env`.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use shardflow::Error;
use shardflow::collective::{FileStore, RunSpec, World, agree};
use shardflow::loader::{DatasetConfig, LoaderConfig};

const ROLE: &str = "SHARDFLOW_STORE_TEST_ROLE";

/// This test binary, started again to play `role` (see `store_child`).
fn child(dir: &Path, role: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "store_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .env("SHARDFLOW_STORE", dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn all_succeed(children: Vec<Child>) {
    for (i, mut c) in children.into_iter().enumerate() {
        let status = c.wait().unwrap();
        assert!(status.success(), "child {i} failed: {status}");
    }
}

/// A child's part, from `SHARDFLOW_STORE_TEST_ROLE`:
/// - `exchange RANK WORLD`: sets `value.RANK`, reads every rank's, passes a barrier;
/// - `read KEY VALUE`: waits for KEY and checks it holds VALUE.
#[test]
#[ignore = "a helper that the other tests start as a child process"]
fn store_child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let words: Vec<&str> = role.split(' ').collect();
    match words[..] {
        ["exchange", rank, world] => {
            let (rank, world): (usize, usize) = (rank.parse().unwrap(), world.parse().unwrap());
            let store = FileStore::from_env("exchange", rank, world)
                .unwrap()
                .with_deadline(Duration::from_secs(60));
            store
                .set(
                    &format!("value.{rank}"),
                    format!("from rank {rank}").as_bytes(),
                )
                .unwrap();
            for r in 0..world {
                let v = store.wait(&format!("value.{r}")).unwrap();
                assert_eq!(v, format!("from rank {r}").as_bytes());
            }
            store.barrier("done").unwrap();
        }
        ["read", key, value] => {
            let store = FileStore::from_env("late", 1, 2)
                .unwrap()
                .with_deadline(Duration::from_secs(60));
            assert_eq!(store.wait(key).unwrap(), value.as_bytes());
        }
        ["agree", job, rank, world, seed] => {
            let (rank, world): (usize, usize) = (rank.parse().unwrap(), world.parse().unwrap());
            let store = FileStore::from_env(job, rank, world)
                .unwrap()
                .with_deadline(Duration::from_secs(60));
            let config = LoaderConfig::new(vec![DatasetConfig::new("data/web")])
                .with_batch_size(8)
                .with_seed(seed.parse().unwrap());
            let outcome = match agree(&store, &RunSpec::new(&config, 7).unwrap()) {
                Ok(spec) => format!("ok {}", spec.run_name),
                Err(e) => format!("err {e}"),
            };
            let out = store.dir().join(format!("outcome.{rank}"));
            std::fs::write(out, outcome).unwrap();
        }
        _ => panic!("unknown role {role}"),
    }
}

#[test]
fn four_processes_exchange_values_and_pass_a_barrier() {
    let dir = tempfile::tempdir().unwrap();
    let children = (0..4)
        .map(|r| child(dir.path(), &format!("exchange {r} 4")))
        .collect();
    all_succeed(children);
    // The last rank out removed the barrier's files; the values stay.
    let mut left: Vec<String> = std::fs::read_dir(dir.path().join("job-exchange"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["value.0", "value.1", "value.2", "value.3"]);
}

#[test]
fn a_reader_started_before_the_writer_gets_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let reader = child(dir.path(), "read spec written-late");
    std::thread::sleep(Duration::from_millis(300));
    let writer = FileStore::new(dir.path(), "late", 0, 2).unwrap();
    writer.set("spec", b"written-late").unwrap();
    all_succeed(vec![reader]);
}

#[test]
fn a_torn_or_foreign_record_is_never_returned() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path(), "torn", 0, 1)
        .unwrap()
        .with_deadline(Duration::from_millis(200));
    store.set("spec", b"0123456789").unwrap();
    let path = store.dir().join("spec");
    let whole = std::fs::read(&path).unwrap();

    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("truncated", whole[..whole.len() - 3].to_vec(), "torn"),
        ("no header", b"{\"seed\": 1}".to_vec(), "not a store record"),
        (
            "flipped byte",
            {
                let mut b = whole.clone();
                *b.last_mut().unwrap() ^= 1;
                b
            },
            "checksum",
        ),
        ("empty", Vec::new(), "not a store record"),
    ];
    for (what, bytes, says) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let err = store
            .get("spec")
            .err()
            .unwrap_or_else(|| panic!("{what}: returned"));
        assert!(matches!(err, Error::Store { .. }), "{what}: {err}");
        assert!(err.to_string().contains(says), "{what}: {err}");
        // Waiting for it ends at the deadline, naming what it saw.
        match store.wait("spec") {
            Err(Error::StoreTimeout { keys, detail, .. }) => {
                assert_eq!(keys, ["spec"]);
                assert!(detail.contains(says), "{what}: {detail}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn a_new_job_never_reads_an_earlier_jobs_records() {
    let dir = tempfile::tempdir().unwrap();
    let old = FileStore::new(dir.path(), "run-1", 0, 1).unwrap();
    old.set("spec", b"old").unwrap();
    let new = FileStore::new(dir.path(), "run-2", 0, 1).unwrap();
    assert_eq!(new.get("spec").unwrap(), None);
    assert_eq!(old.get("spec").unwrap().unwrap(), b"old");
}

#[test]
fn a_missing_rank_times_out_within_the_deadline_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let deadline = Duration::from_millis(400);
    let store = FileStore::new(dir.path(), "partial", 0, 3)
        .unwrap()
        .with_deadline(deadline);
    let start = Instant::now();
    let err = store.barrier("start").unwrap_err();
    let waited = start.elapsed();
    assert!(waited >= deadline, "{waited:?}");
    assert!(
        waited < deadline + Duration::from_millis(1500),
        "{waited:?}"
    );
    match &err {
        Error::StoreTimeout { rank, detail, .. } => {
            assert_eq!(*rank, 0);
            assert_eq!(detail, "ranks 1, 2 never arrived");
        }
        other => panic!("{other:?}"),
    }
    let err = store.wait("never").unwrap_err();
    assert!(err.to_string().contains("\"never\""), "{err}");
}

#[test]
fn an_unusable_directory_is_an_error_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let start = Instant::now();
    let err = FileStore::new(file.join("store"), "job", 0, 2).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(matches!(err, Error::Store { .. }), "{err}");
    assert!(err.to_string().contains("a-file/store"), "{err}");
    for (job, rank, world) in [("../escape", 0, 1), ("", 0, 1), ("ok", 2, 2)] {
        let err = FileStore::new(dir.path(), job, rank, world).unwrap_err();
        assert!(
            matches!(err, Error::Store { .. }),
            "{job} {rank} {world}: {err}"
        );
    }
    let store = FileStore::new(dir.path(), "ok", 0, 1).unwrap();
    assert!(store.set("../spec", b"x").is_err());
}

fn world(vars: &[(&str, &str)]) -> shardflow::Result<World> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    World::from_vars(|n| map.get(n).cloned())
}

#[test]
fn the_world_comes_from_each_launchers_variables() {
    let w = |rank, size, local_rank| World {
        rank,
        size,
        local_rank,
    };
    assert_eq!(world(&[]).unwrap(), World::SOLO);
    assert_eq!(
        world(&[("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1")]).unwrap(),
        w(3, 8, 1)
    );
    assert_eq!(
        world(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "6"),
            ("SLURM_LOCALID", "2")
        ])
        .unwrap(),
        w(5, 6, 2)
    );
    assert_eq!(
        world(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ])
        .unwrap(),
        w(1, 2, 1)
    );
    // torchrun inside a SLURM allocation: both say the same.
    assert_eq!(
        world(&[
            ("RANK", "2"),
            ("WORLD_SIZE", "4"),
            ("SLURM_PROCID", "2"),
            ("SLURM_NTASKS", "4"),
        ])
        .unwrap(),
        w(2, 4, 2)
    );
}

#[test]
fn a_half_set_or_contradictory_environment_is_an_error_naming_the_variables() {
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[("RANK", "1")], "WORLD_SIZE is not set, though RANK=1 is"),
        (
            &[("WORLD_SIZE", "4")],
            "RANK is not set, though WORLD_SIZE=4 is",
        ),
        (
            &[("RANK", "x"), ("WORLD_SIZE", "2")],
            "RANK=x is not a whole number",
        ),
        (
            &[("RANK", "4"), ("WORLD_SIZE", "4")],
            "rank 4 lies outside a world of 4",
        ),
        (
            &[
                ("SLURM_PROCID", "1"),
                ("SLURM_NTASKS", "2"),
                ("SLURM_LOCALID", "2"),
            ],
            "local rank 2 exceeds the global rank 1",
        ),
        (
            &[
                ("RANK", "0"),
                ("WORLD_SIZE", "2"),
                ("OMPI_COMM_WORLD_RANK", "1"),
                ("OMPI_COMM_WORLD_SIZE", "2"),
            ],
            "torchrun says rank 0 of 2 (local 0), Open MPI says rank 1 of 2 (local 1)",
        ),
    ];
    for (vars, says) in cases {
        let err = world(vars).unwrap_err();
        assert!(matches!(err, Error::Environment(_)), "{vars:?}: {err}");
        assert!(err.to_string().contains(says), "{vars:?}: {err}");
    }
}

/// Runs `agree` on 4 processes, rank r with seed `seeds[r]`; every rank's outcome line.
fn agree_on(job: &str, seeds: [u64; 4]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let children = (0..4)
        .map(|r| child(dir.path(), &format!("agree {job} {r} 4 {}", seeds[r])))
        .collect();
    all_succeed(children);
    (0..4)
        .map(|r| {
            std::fs::read_to_string(dir.path().join(format!("job-{job}/outcome.{r}"))).unwrap()
        })
        .collect()
}

#[test]
fn four_processes_with_one_config_agree_on_one_run_name() {
    let outcomes = agree_on("equal", [5; 4]);
    assert!(outcomes[0].starts_with("ok run-"), "{outcomes:?}");
    assert!(outcomes.iter().all(|o| *o == outcomes[0]), "{outcomes:?}");
    // The name is the config's and the seed's, computed by anyone.
    let config = LoaderConfig::new(vec![DatasetConfig::new("data/web")])
        .with_batch_size(8)
        .with_seed(5);
    let spec = RunSpec::new(&config, 7).unwrap();
    assert_eq!(outcomes[0], format!("ok {}", spec.run_name));
    assert_ne!(RunSpec::new(&config, 8).unwrap().run_name, spec.run_name);
}

#[test]
fn one_rank_with_another_config_fails_every_rank_naming_it_and_the_key() {
    let outcomes = agree_on("differ", [5, 5, 6, 5]);
    for (r, o) in outcomes.iter().enumerate() {
        assert!(
            o.starts_with(
                "err ranks [2] hold a config that differs from rank 0's at order.seed: \
                           rank 0 has order.seed = 5, rank 2 has 6"
            ),
            "rank {r}: {o}"
        );
    }
}
