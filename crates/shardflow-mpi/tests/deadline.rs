//! The MPI engine's deadline: in a job of two ranks where rank 1 stops calling, rank 0's call
//! passes its deadline of one second and
//!
//! - with [`OnTimeout::AbortJob`] (the default), aborts the job with a message naming the
//!   operation, the rank and the time waited: every process ends, none hangs;
//! - with [`OnTimeout::ReturnError`], returns that error.
//!
//! `cargo test` runs this file as the parent: it starts `mpiexec -n 2` on itself (the child,
//! selected by an environment variable), waits at most 60 s, and checks how the job ended.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shardflow::collective::{Collective, ReduceOp};
use shardflow_mpi::{ABORT_CODE, MpiConfig, OnTimeout};

const CHILD_ENV: &str = "SHARDFLOW_MPI_DEADLINE_CHILD";

fn main() {
    match std::env::var(CHILD_ENV).as_deref() {
        Ok("abort") => child(OnTimeout::AbortJob),
        Ok("error") => child(OnTimeout::ReturnError),
        _ => {
            parent("abort");
            parent("error");
        }
    }
}

/// A rank of the job: one call that works, then rank 1 stalls and rank 0 calls again.
fn child(on_timeout: OnTimeout) {
    let mpi = MpiConfig {
        deadline: Duration::from_secs(1),
        on_timeout,
    }
    .init()
    .expect("MPI initializes");
    let (rank, world) = (mpi.rank(), mpi.world());
    assert_eq!(world, 2, "run under mpiexec -n 2");
    let mut x = [1.0];
    mpi.all_reduce_f64(&mut x, ReduceOp::Sum).unwrap();
    assert_eq!(x, [2.0]);
    if rank == 1 {
        // Stops answering (a hung or crashed step); the job ends before this sleep does.
        std::thread::sleep(Duration::from_secs(120));
        std::process::exit(0);
    }
    let t = Instant::now();
    let err = mpi.all_reduce_f64(&mut x, ReduceOp::Sum).unwrap_err();
    println!(
        "rank {rank}: the call returned after {:.1} s: {err}",
        t.elapsed().as_secs_f64()
    );
    // The engine's thread is stuck in MPI: end the process, which ends the job.
    drop(mpi);
    std::process::exit(3);
}

/// Starts the job in `mode` and checks how it ended.
fn parent(mode: &str) {
    let exe = std::env::current_exe().unwrap();
    let started = Command::new("mpiexec")
        .args(["-n", "2"])
        .arg(&exe)
        .env(CHILD_ENV, mode)
        // Open MPI: allowed as root (CI's containers), two ranks on any number of cores.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut job = match started {
        Ok(job) => job,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("skipped (mpiexec is not on PATH): install openmpi-bin");
            return;
        }
        Err(e) => panic!("cannot start mpiexec: {e}"),
    };
    let t = Instant::now();
    let status = loop {
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = job.kill();
            panic!("{mode}: the job hung past 60 s: the deadline did not end it");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = t.elapsed();
    let (mut out, mut err) = (String::new(), String::new());
    job.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    job.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let all = format!("{out}\n{err}");
    assert!(!status.success(), "{mode}: the job succeeded:\n{all}");
    assert!(
        took < Duration::from_secs(30),
        "{mode}: took {took:?}:\n{all}"
    );
    assert!(
        all.contains("collective engine mpi rank 0: all-reduce f64 failed after 1.1"),
        "{mode}:\n{all}"
    );
    match mode {
        "abort" => {
            let line = format!("shardflow-mpi: aborting the MPI job (exit code {ABORT_CODE})");
            assert!(err.contains(&line), "{mode}:\n{all}");
            assert!(!out.contains("the call returned"), "{mode}:\n{all}");
        }
        _ => {
            assert!(
                out.contains("rank 0: the call returned after 1.1 s"),
                "{mode}:\n{all}"
            );
            assert!(all.contains("cannot be interrupted"), "{mode}:\n{all}");
        }
    }
    println!(
        "{mode}: the job ended after {:.1} s ({status}), as it should",
        took.as_secs_f64()
    );
}
