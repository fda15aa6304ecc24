//! `shardflow launch --nproc N [--store DIR] -- CMD ARGS...`: N local processes of one job, as
//! torchrun's local mode starts them.
//!
//! Each process gets `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, the store's root in
//! `SHARDFLOW_STORE` and a job id of its own in `SHARDFLOW_JOB`. Every line a process prints is
//! prefixed with `[rank R] `. When a process fails, the others are stopped and the command
//! exits non-zero naming that rank and its exit status.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{note, signals};
use crate::collective::STORE_ENV;
use crate::{Error, Result};

/// The most processes `launch` starts.
pub const MAX_NPROC: usize = 1024;

/// The environment variable that carries the job id to every rank.
pub const JOB_ENV: &str = "SHARDFLOW_JOB";

#[derive(Debug, clap::Args)]
pub struct LaunchArgs {
    /// Processes to start.
    #[arg(long)]
    nproc: usize,
    /// The file-store root every rank shares; by default a new directory in the current one,
    /// removed when the job ends.
    #[arg(long)]
    store: Option<PathBuf>,
    /// The command and its arguments, after `--`.
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

pub fn run(args: LaunchArgs) -> Result<ExitCode> {
    if args.nproc == 0 || args.nproc > MAX_NPROC {
        return Err(Error::Config(format!(
            "--nproc {}: start 1 to {MAX_NPROC} processes",
            args.nproc
        )));
    }
    // A store root of our own unless one is given: local processes all see it.
    let own = match &args.store {
        Some(_) => None,
        None => {
            let here = std::env::current_dir()
                .map_err(|e| Error::io(std::path::Path::new("."), "find", e))?;
            Some(
                tempfile::Builder::new()
                    .prefix(".shardflow-launch-")
                    .tempdir_in(&here)
                    .map_err(|e| Error::io(&here, "create a store in", e))?,
            )
        }
    };
    let root = match (&args.store, &own) {
        (Some(dir), _) => dir.clone(),
        (None, Some(dir)) => dir.path().to_path_buf(),
        (None, None) => unreachable!("one of the two is set"),
    };
    let job = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let mut children = Vec::with_capacity(args.nproc);
    let mut pumps = Vec::new();
    for rank in 0..args.nproc {
        let mut cmd = Command::new(&args.command[0]);
        cmd.args(&args.command[1..])
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", args.nproc.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", args.nproc.to_string())
            .env(STORE_ENV, &root)
            .env(JOB_ENV, &job)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        signals::child_gets_signals(&mut cmd);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                stop(&mut children);
                return Err(Error::Config(format!(
                    "cannot start {:?} for rank {rank}: {e}",
                    args.command[0]
                )));
            }
        };
        signals::forward_to(child.id() as libc::pid_t);
        let out = child.stdout.take().expect("stdout is piped");
        let err = child.stderr.take().expect("stderr is piped");
        pumps.push(pump(rank, out, false));
        pumps.push(pump(rank, err, true));
        children.push(child);
    }
    let failed = watch(&mut children);
    for p in pumps {
        let _ = p.join();
    }
    drop(own);
    match failed {
        None => Ok(ExitCode::SUCCESS),
        Some((rank, status)) => {
            note(format_args!(
                "error: rank {rank} failed ({}); the other {} ranks were stopped",
                describe(status),
                args.nproc - 1
            ));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Waits for every child; on the first failure stops the rest and returns (rank, status).
fn watch(children: &mut [Child]) -> Option<(usize, ExitStatus)> {
    let mut done = vec![false; children.len()];
    let mut pause = Duration::from_millis(5);
    loop {
        for (rank, child) in children.iter_mut().enumerate() {
            if done[rank] {
                continue;
            }
            match child.try_wait() {
                Ok(Some(status)) if status.success() => done[rank] = true,
                Ok(Some(status)) => {
                    stop(children);
                    return Some((rank, status));
                }
                Ok(None) => {}
                Err(_) => done[rank] = true,
            }
        }
        if done.iter().all(|d| *d) {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Stops every child's process group (the child and what it started): SIGTERM, then SIGKILL
/// after 5 s.
fn stop(children: &mut [Child]) {
    for c in children.iter() {
        signals::signal_group(c.id() as libc::pid_t, libc::SIGTERM);
    }
    let start = Instant::now();
    for c in children.iter_mut() {
        while matches!(c.try_wait(), Ok(None)) {
            if start.elapsed() > Duration::from_secs(5) {
                signals::signal_group(c.id() as libc::pid_t, libc::SIGKILL);
                let _ = c.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // What a rank started in its group may outlive it and hold our pipes open.
    for c in children.iter() {
        signals::signal_group(c.id() as libc::pid_t, libc::SIGKILL);
    }
}

/// "exit status 7" or "killed by signal 9".
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// Copies a child's stream line by line to ours, each line prefixed with its rank.
fn pump(
    rank: usize,
    stream: impl Read + Send + 'static,
    stderr: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        let prefix = format!("[rank {rank}] ");
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            let written = if stderr {
                let mut e = std::io::stderr().lock();
                e.write_all(prefix.as_bytes())
                    .and_then(|()| e.write_all(&line))
            } else {
                let mut o = std::io::stdout().lock();
                o.write_all(prefix.as_bytes())
                    .and_then(|()| o.write_all(&line))
                    .and_then(|()| o.flush())
            };
            if written.is_err() {
                return;
            }
        }
    })
}
