//! The file-store rendezvous across real processes (this test binary started again as a child
//! with a role), torn and foreign records, stale jobs, deadlines; and `World::from_env`.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use shardflow::Error;
use shardflow::collective::{FileStore, JobId, Rendezvous, RunSpec, StoreWait, World, agree};
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
            let root = std::env::var("SHARDFLOW_STORE").unwrap();
            std::fs::write(Path::new(&root).join(format!("outcome.{rank}")), outcome).unwrap();
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
    // The job holds the rendezvous records and one run's directory.
    let job = dir.path().join("job-exchange");
    let mut records = names(&job);
    let run = records.remove(0);
    assert!(run.starts_with("gen-") && run.len() == 20, "{run}");
    assert_eq!(records, ["join.1", "join.2", "join.3", "roster", "run"]);
    // The last rank out removed the barrier's files; the values stay.
    assert_eq!(
        names(&job.join(run)),
        ["value.0", "value.1", "value.2", "value.3"]
    );
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
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
    // Ranks 1 and 2 join the run, then never reach the barrier.
    let others: Vec<_> = (1..3)
        .map(|r| {
            let root = dir.path().to_path_buf();
            std::thread::spawn(move || FileStore::new(root, "partial", r, 3).unwrap())
        })
        .collect();
    let store = FileStore::new(dir.path(), "partial", 0, 3)
        .unwrap()
        .with_deadline(deadline);
    for o in others {
        o.join().unwrap();
    }
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

/// Runs `agree` on `seeds.len()` processes under `root`, rank r with seed `seeds[r]`; every
/// rank's outcome line.
fn agree_on(root: &Path, job: &str, seeds: impl AsRef<[u64]>) -> Vec<String> {
    let seeds = seeds.as_ref();
    let world = seeds.len();
    let children = (0..world)
        .map(|r| child(root, &format!("agree {job} {r} {world} {}", seeds[r])))
        .collect();
    all_succeed(children);
    (0..world)
        .map(|r| std::fs::read_to_string(root.join(format!("outcome.{r}"))).unwrap())
        .collect()
}

#[test]
fn four_processes_with_one_config_agree_on_one_run_name() {
    let dir = tempfile::tempdir().unwrap();
    let outcomes = agree_on(dir.path(), "equal", [5; 4]);
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
    let dir = tempfile::tempdir().unwrap();
    let outcomes = agree_on(dir.path(), "differ", [5, 5, 6, 5]);
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

/// A finished run of `world` ranks (threads) of `job` under `root`: each rank sets `value.R`
/// and gathers every rank's config, as a run would. Returns rank 0's nonce.
fn finished_run(root: &Path, job: &str, world: usize) -> u64 {
    let ranks: Vec<_> = (0..world)
        .map(|r| {
            let (root, job) = (root.to_path_buf(), job.to_string());
            std::thread::spawn(move || {
                let store = FileStore::new(root, &job, r, world).unwrap();
                store.set(&format!("value.{r}"), b"old").unwrap();
                store.gather("config", b"old config").unwrap();
                store.nonce()
            })
        })
        .collect();
    let nonces: Vec<u64> = ranks.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(nonces.iter().all(|n| *n == nonces[0]), "{nonces:?}");
    nonces[0]
}

/// Joins as `rank` of `world` with `deadline`, collecting the progress reports.
fn join_hearing(
    root: &Path,
    job: &str,
    rank: usize,
    world: usize,
    deadline: Duration,
) -> (shardflow::Result<FileStore>, Vec<StoreWait>, Duration) {
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = heard.clone();
    let start = Instant::now();
    let joined = Rendezvous::new(root, job, rank, world)
        .with_deadline(deadline)
        .with_progress(Duration::from_millis(300), move |w| {
            sink.lock().unwrap().push(w.clone())
        })
        .join();
    let waited = start.elapsed();
    let heard = heard.lock().unwrap().clone();
    (joined, heard, waited)
}

#[test]
fn rank_0_alone_after_a_two_rank_run_waits_for_rank_1_reports_it_and_times_out_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    finished_run(dir.path(), "demo", 2);
    let deadline = Duration::from_millis(1500);
    let (joined, heard, waited) = join_hearing(dir.path(), "demo", 0, 2, deadline);
    assert!(waited >= deadline && waited < deadline * 2, "{waited:?}");
    match joined.unwrap_err() {
        Error::StoreTimeout {
            keys, rank, detail, ..
        } => {
            assert_eq!(keys, ["join.1"]);
            assert_eq!(rank, 0);
            assert!(
                detail.starts_with("rank 1 never joined run gen-"),
                "{detail}"
            );
            assert!(
                detail.contains(
                    "(the join records of rank 1 belong to an earlier run): are they running, \
                     with job id \"demo\" and a world of 2?"
                ),
                "{detail}"
            );
        }
        other => panic!("{other}"),
    }
    // A report about every 300 ms, each naming rank 1.
    assert!((3..=6).contains(&heard.len()), "{heard:?}");
    for w in &heard {
        assert_eq!(
            (w.rank, &w.missing[..], &w.keys[..]),
            (0, &[1][..], &["join.1".to_string()][..])
        );
    }
    assert_eq!(
        heard[0].to_string(),
        "rank 0: waiting for rank 1 (join.1), 0s of 2s"
    );
}

#[test]
fn rank_1_alone_after_a_two_rank_run_is_never_admitted_and_names_rank_0() {
    let dir = tempfile::tempdir().unwrap();
    finished_run(dir.path(), "demo", 2);
    let deadline = Duration::from_millis(1000);
    let (joined, heard, _) = join_hearing(dir.path(), "demo", 1, 2, deadline);
    match joined.unwrap_err() {
        Error::StoreTimeout {
            keys, rank, detail, ..
        } => {
            assert_eq!((keys, rank), (vec!["roster".to_string()], 1));
            assert!(
                detail.starts_with("rank 0 never admitted rank 1 to a run"),
                "{detail}"
            );
            assert!(
                detail.contains("lists another process as rank 1: it is an earlier run's"),
                "{detail}"
            );
        }
        other => panic!("{other}"),
    }
    assert!(
        !heard.is_empty() && heard.iter().all(|w| w.missing == [0]),
        "{heard:?}"
    );
}

#[test]
fn a_rank_that_starts_before_rank_0_joins_the_new_run_and_sees_none_of_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let old = finished_run(dir.path(), "demo", 2);
    let root = dir.path().to_path_buf();
    let early = std::thread::spawn(move || {
        FileStore::new(root, "demo", 1, 2)
            .unwrap()
            .with_deadline(Duration::from_secs(30))
    });
    // Rank 1 answers the old run first, then the new one.
    std::thread::sleep(Duration::from_millis(300));
    let rank0 = FileStore::new(dir.path(), "demo", 0, 2).unwrap();
    let rank1 = early.join().unwrap();
    assert_eq!(rank1.nonce(), rank0.nonce());
    assert_ne!(rank0.nonce(), old);
    assert_eq!(rank1.dir(), rank0.dir());
    assert_eq!(rank1.get("value.0").unwrap(), None);
    rank0.set("value.0", b"new").unwrap();
    assert_eq!(rank1.wait("value.0").unwrap(), b"new");
    let other = std::thread::spawn(move || rank1.gather("config", &[1]).unwrap());
    assert_eq!(rank0.gather("config", &[0]).unwrap(), [vec![0u8], vec![1]]);
    assert_eq!(other.join().unwrap(), [vec![0u8], vec![1]]);
}

#[test]
fn a_record_of_an_earlier_run_is_refused_never_returned() {
    let dir = tempfile::tempdir().unwrap();
    let first = FileStore::new(dir.path(), "rerun", 0, 1).unwrap();
    first.set("spec", b"old").unwrap();
    let bytes = std::fs::read(first.dir().join("spec")).unwrap();
    let second = FileStore::new(dir.path(), "rerun", 0, 1).unwrap();
    // Opening the second run removed the first's directory.
    assert!(!first.dir().exists());
    assert_eq!(second.get("spec").unwrap(), None);
    std::fs::write(second.dir().join("spec"), bytes).unwrap();
    let err = second.get("spec").unwrap_err();
    assert!(matches!(err, Error::Store { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!(
            "the record belongs to run {:016x}, not to this run ({:016x}): left by an earlier run",
            first.nonce(),
            second.nonce()
        )),
        "{err}"
    );
}

#[test]
fn a_rerun_with_three_ranks_after_two_agrees_on_its_own_config() {
    let dir = tempfile::tempdir().unwrap();
    let first = agree_on(dir.path(), "same", [5, 5]);
    assert!(first.iter().all(|o| o.starts_with("ok run-")), "{first:?}");
    let again = agree_on(dir.path(), "same", [6, 6, 6]);
    let config = LoaderConfig::new(vec![DatasetConfig::new("data/web")])
        .with_batch_size(8)
        .with_seed(6);
    let name = RunSpec::new(&config, 7).unwrap().run_name;
    assert_eq!(again, vec![format!("ok {name}"); 3]);
}

#[test]
fn a_rank_of_another_world_size_is_an_error_at_once_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let other = std::thread::spawn(move || {
        Rendezvous::new(root, "sizes", 1, 3)
            .with_deadline(Duration::from_secs(2))
            .join()
    });
    let start = Instant::now();
    let err = Rendezvous::new(dir.path(), "sizes", 0, 2)
        .with_deadline(Duration::from_secs(20))
        .join()
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(err, Error::Store { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("rank 1 joined this run as one of 3 ranks, rank 0 is one of 2"),
        "{err}"
    );
    assert!(other.join().unwrap().is_err());
}

fn job(vars: &[(&str, &str)]) -> Option<(String, &'static str)> {
    let map: HashMap<&str, &str> = vars.iter().copied().collect();
    JobId::from_vars(|n| map.get(n).map(|v| v.to_string())).map(|j| (j.id, j.from))
}

#[test]
fn the_job_id_comes_from_the_launcher_in_a_stated_order() {
    let id = |s: &str, from| Some((s.to_string(), from));
    assert_eq!(job(&[]), None);
    assert_eq!(job(&[("TORCHELASTIC_RUN_ID", "none")]), None);
    assert_eq!(
        job(&[("TORCHELASTIC_RUN_ID", "3f2a"), ("SLURM_JOB_ID", "77")]),
        id("torchrun-3f2a", "TORCHELASTIC_RUN_ID")
    );
    assert_eq!(
        job(&[
            ("TORCHELASTIC_RUN_ID", "none"),
            ("SLURM_JOB_ID", "77"),
            ("SLURM_STEP_ID", "2")
        ]),
        id("slurm-77.2", "SLURM_JOB_ID")
    );
    assert_eq!(
        job(&[("SLURM_JOB_ID", "77")]),
        id("slurm-77", "SLURM_JOB_ID")
    );
    assert_eq!(
        job(&[
            ("PMIX_NAMESPACE", "prterun-host-4242@1"),
            ("OMPI_MCA_orte_ess_jobid", "9")
        ]),
        id("pmix-prterun-host-4242_1", "PMIX_NAMESPACE")
    );
    assert_eq!(
        job(&[("OMPI_MCA_orte_ess_jobid", "3254517761")]),
        id("ompi-3254517761", "OMPI_MCA_orte_ess_jobid")
    );
    assert_eq!(
        job(&[("SHARDFLOW_JOB", "mine"), ("SLURM_JOB_ID", "77")]),
        id("mine", "SHARDFLOW_JOB")
    );
}

/// `shardflow demo --world-from-env` as rank `rank` of `world`, with no launcher's job id (so
/// the job is `demo`), waiting at most `timeout` seconds.
fn demo_rank(store: &Path, rank: usize, world: usize, timeout: &str) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardflow"));
    cmd.args(["demo", "--world-from-env"])
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("SHARDFLOW_STORE", store)
        .env("SHARDFLOW_STORE_TIMEOUT", timeout)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for var in [
        "SHARDFLOW_JOB",
        "TORCHELASTIC_RUN_ID",
        "SLURM_JOB_ID",
        "SLURM_STEP_ID",
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "SLURM_LOCALID",
        "PMIX_NAMESPACE",
        "OMPI_MCA_orte_ess_jobid",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "LOCAL_RANK",
    ] {
        cmd.env_remove(var);
    }
    cmd.spawn().unwrap()
}

/// Runs `world` demo ranks; each one's (success, stdout, stderr).
fn demo_run(
    store: &Path,
    ranks: &[usize],
    world: usize,
    timeout: &str,
) -> Vec<(bool, String, String)> {
    let children: Vec<Child> = ranks
        .iter()
        .map(|&r| demo_rank(store, r, world, timeout))
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            (
                out.status.success(),
                String::from_utf8(out.stdout).unwrap(),
                String::from_utf8(out.stderr).unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_demo_never_reads_an_earlier_runs_records_as_its_own() {
    let store = tempfile::tempdir().unwrap();
    let first = demo_run(store.path(), &[0, 1], 2, "120");
    assert!(first.iter().all(|(ok, ..)| *ok), "{first:?}");
    assert!(
        first[0]
            .1
            .contains("check rank 1: 480 rows planned, 480 received: identical")
    );

    // Rank 0 alone: it waits for rank 1, says so on stderr, and fails naming it.
    let alone = demo_run(store.path(), &[0], 2, "3");
    let (ok, stdout, stderr) = &alone[0];
    assert!(!ok, "{stdout}");
    assert!(!stdout.contains("identical"), "{stdout}");
    assert!(!stdout.contains("all 2 ranks"), "{stdout}");
    assert!(
        stderr.contains("rank 0: waiting for rank 1 (join.1), 1s of 3s"),
        "{stderr}"
    );
    assert!(
        stderr.contains("rank 0 waited")
            && stderr.contains("for [\"join.1\"]: rank 1 never joined"),
        "{stderr}"
    );

    // Rank 1 alone: rank 0 never admits it.
    let alone = demo_run(store.path(), &[1], 2, "3");
    let (ok, _, stderr) = &alone[0];
    assert!(!ok);
    assert!(
        stderr.contains("rank 1: waiting for rank 0 (roster)"),
        "{stderr}"
    );
    assert!(stderr.contains("rank 0 never admitted rank 1"), "{stderr}");

    // Three ranks after two: a run of its own, no stale config.
    let again = demo_run(store.path(), &[0, 1, 2], 3, "120");
    assert!(again.iter().all(|(ok, ..)| *ok), "{again:?}");
    assert!(
        again[0]
            .1
            .contains("all 3 ranks loaded exactly their slices of the same global batches"),
        "{again:?}"
    );
}

/// One `agree` for both transports: over an in-process world it gives the run name the store
/// gives for the same config, and a rank with another config fails every rank, named.
#[test]
fn agree_over_a_collective_matches_agree_over_the_store() {
    use shardflow::collective::in_process;
    let config = serde_json::json!({"order": {"seed": 7}, "datasets": ["web"]});
    let spec = RunSpec::new(&config, 7).unwrap();
    let names: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = in_process(3, Duration::from_secs(20))
            .into_iter()
            .map(|rank| {
                let spec = spec.clone();
                s.spawn(move || agree(&rank, &spec).unwrap().run_name)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(names, vec![spec.run_name.clone(); 3]);

    let other = RunSpec::new(
        &serde_json::json!({"order": {"seed": 8}, "datasets": ["web"]}),
        7,
    )
    .unwrap();
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = in_process(3, Duration::from_secs(20))
            .into_iter()
            .enumerate()
            .map(|(r, rank)| {
                let mine = if r == 2 { other.clone() } else { spec.clone() };
                s.spawn(move || agree(&rank, &mine).unwrap_err().to_string())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for e in &errors {
        assert!(e.contains("rank 0 has order.seed = 7, rank 2 has 8"), "{e}");
    }

    // Over the store, for one process: the same name.
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path(), "solo", 0, 1).unwrap();
    assert_eq!(agree(&store, &spec).unwrap().run_name, spec.run_name);
}
