//! `shardflow launch --nproc N [--store DIR] [--grace SECS] -- CMD ARGS...`: N local processes
//! of one job, as torchrun's local mode starts them.
//!
//! Each process gets `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR` and
//! `MASTER_PORT` (a free port, unless the environment names them), the store's root in
//! `SHARDFLOW_STORE` and a job id of its own in `SHARDFLOW_JOB`. Every line a process prints is
//! prefixed with `[rank R] `; other bytes pass unchanged. When a process fails, the others are
//! stopped and the command exits non-zero naming that rank and its exit status.
//!
//! Stopping is never abrupt: the ranks get SIGTERM (or the signal the launcher received) and the
//! grace period to exit (to save a checkpoint), then SIGKILL; a second signal kills at once.
//! Whatever the end, the launcher removes what it made: its store directory, or in a given
//! store the job's directory.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{BROKEN_PIPE_STATUS, note, signals};
use crate::collective::JOB_ENV;
use crate::collective::STORE_ENV;
use crate::{Error, Result};

/// The most processes `launch` starts.
pub const MAX_NPROC: usize = 1024;

/// The seconds ranks get to exit after SIGTERM before SIGKILL, unless `--grace` says otherwise
/// (torchrun's as well).
pub const DEFAULT_GRACE_SECS: u64 = 30;

/// The arguments of `shardflow launch`.
#[derive(Debug, clap::Args)]
pub struct LaunchArgs {
    /// Processes to start (1 to 1024).
    #[arg(long, value_parser = parse_nproc)]
    nproc: usize,
    /// The file-store root every rank shares, an existing directory (the job's directory in it
    /// is removed when the job ends); by default a new directory in the current one, removed
    /// when the job ends.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Seconds the ranks get to exit after SIGTERM (a failed rank, Ctrl-C) before SIGKILL.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_GRACE_SECS)]
    grace: u64,
    /// The command and its arguments, after `--`.
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

/// Parses `--nproc` (a clap value parser: 0 is a usage error, status 2).
fn parse_nproc(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_NPROC).contains(&n) => Ok(n),
        _ => Err(format!("start 1 to {MAX_NPROC} processes")),
    }
}

/// Runs the job: starts the ranks, relays their output, waits for them, cleans up.
///
/// # Errors
///
/// [`Error::Store`] for a `--store` that is not an existing directory; [`Error::Config`] when a
/// rank cannot start; a write error on stdout other than a closed pipe.
pub fn run(args: LaunchArgs) -> Result<ExitCode> {
    // The launcher, not the signal thread, ends the command after a signal: it waits for its
    // ranks and removes what it made first.
    signals::supervise();
    let job = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let store = JobStore::new(args.store.as_deref(), &job)?;
    let (master_addr, master_port) = master()?;
    let output = Output::default();
    let mut children = Vec::with_capacity(args.nproc);
    let mut pumps = Vec::new();
    for rank in 0..args.nproc {
        if signals::received().is_some() {
            break;
        }
        let mut cmd = Command::new(&args.command[0]);
        cmd.args(&args.command[1..])
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", args.nproc.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", args.nproc.to_string())
            .env("MASTER_ADDR", &master_addr)
            .env("MASTER_PORT", &master_port)
            .env(STORE_ENV, store.root())
            .env(JOB_ENV, &job)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        signals::child_gets_signals(&mut cmd);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                Ranks::new(&mut children, args.grace).stop_all();
                return Err(Error::Spawn {
                    what: format!("{:?} for rank {rank}", args.command[0]),
                    error: e,
                });
            }
        };
        signals::forward_to(child.id() as libc::pid_t);
        let out = child.stdout.take().expect("stdout is piped");
        let err = child.stderr.take().expect("stderr is piped");
        pumps.push(pump(rank, out, Some(output.clone())));
        pumps.push(pump(rank, err, None));
        children.push(child);
    }
    let end = Ranks::new(&mut children, args.grace).watch(&output);
    for p in pumps {
        let _ = p.join();
    }
    drop(store);
    let end = match (end, output.take()) {
        // A closed or full stdout that no rank outlived still ends the job as a failed write.
        (End::Done, Some(error)) => End::Output(error),
        (end, _) => end,
    };
    match end {
        End::Done => Ok(ExitCode::SUCCESS),
        End::Failed { rank, status } => {
            note(format_args!(
                "error: rank {rank} failed ({}); the other {} ranks were stopped",
                describe(status),
                args.nproc - 1
            ));
            Ok(ExitCode::FAILURE)
        }
        End::Signal { sig, killed } => {
            let killed = match killed {
                0 => String::new(),
                k => format!(" ({k} killed with SIGKILL)"),
            };
            note(format_args!(
                "\ninterrupted by signal {sig}; passed it on to the ranks and waited for them to \
                 exit{killed}; removed the job's store"
            ));
            Ok(ExitCode::from(128 + sig.clamp(0, 127) as u8))
        }
        End::Output(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
            Ok(ExitCode::from(BROKEN_PIPE_STATUS))
        }
        End::Output(error) => Err(super::stdout_error(error)),
    }
}

/// `MASTER_ADDR` and `MASTER_PORT` for the ranks (PyTorch's `env://` initialization): the
/// environment's, else the loopback address and a port that is free now.
fn master() -> Result<(String, String)> {
    let addr = std::env::var("MASTER_ADDR").unwrap_or_else(|_| "127.0.0.1".into());
    let port = match std::env::var("MASTER_PORT") {
        Ok(port) => port,
        Err(_) => std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port().to_string())
            .map_err(|e| {
                Error::Environment(format!("cannot find a free MASTER_PORT on 127.0.0.1: {e}"))
            })?,
    };
    Ok((addr, port))
}

/// The store root the ranks share, and what the launcher removes when the job ends (on every
/// path out of [`run`], by `Drop`): its own root, or the job's directory in a given one.
struct JobStore {
    /// A root of the launcher's own.
    own: Option<tempfile::TempDir>,
    /// A root given with `--store`.
    given: Option<PathBuf>,
    job: String,
}

impl JobStore {
    /// Checks a given root (an existing directory: never created, so a typo is not a new
    /// store), or creates a root of our own in the current directory.
    fn new(given: Option<&Path>, job: &str) -> Result<Self> {
        let store_error = |path: &Path, reason: &str| Error::Store {
            path: path.to_path_buf(),
            reason: format!("--store {reason}"),
        };
        let own = match given {
            Some(dir) => {
                match std::fs::metadata(dir) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        return Err(store_error(
                            dir,
                            "is not a directory; give a directory every rank can reach",
                        ));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(store_error(
                            dir,
                            "does not exist; create the directory first (launch does not, so \
                             that a mistyped path is not a new store)",
                        ));
                    }
                    Err(e) => return Err(Error::io(dir, "read", e)),
                }
                None
            }
            None => {
                let here =
                    std::env::current_dir().map_err(|e| Error::io(Path::new("."), "find", e))?;
                Some(
                    tempfile::Builder::new()
                        .prefix(".shardflow-launch-")
                        .tempdir_in(&here)
                        .map_err(|e| Error::io(&here, "create a store in", e))?,
                )
            }
        };
        Ok(JobStore {
            own,
            given: given.map(Path::to_path_buf),
            job: job.to_string(),
        })
    }

    /// The root the ranks get in `SHARDFLOW_STORE`.
    fn root(&self) -> &Path {
        match (&self.own, &self.given) {
            (Some(own), _) => own.path(),
            (None, Some(given)) => given,
            (None, None) => unreachable!("a store is either our own or given"),
        }
    }
}

impl Drop for JobStore {
    fn drop(&mut self) {
        // Our own root goes with `own`; in a given root, the job's directory that the ranks'
        // file stores made (`ROOT/job-JOB`, see `FileStore::new`).
        if let Some(root) = &self.given {
            let dir = root.join(format!("job-{}", self.job));
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    note(format_args!(
                        "warning: cannot remove {}: {e}",
                        dir.display()
                    ));
                }
                _ => {}
            }
        }
    }
}

/// How a job ended.
enum End {
    /// Every rank exited with status 0.
    Done,
    /// A rank failed first; the others were stopped.
    Failed { rank: usize, status: ExitStatus },
    /// The launcher received a signal; the ranks got it too and were waited for (`killed` of
    /// them with SIGKILL after the grace period or a second signal).
    Signal { sig: libc::c_int, killed: usize },
    /// Writing the ranks' output to our stdout failed; the ranks were stopped.
    Output(std::io::Error),
}

/// The first error writing the ranks' output to our stdout, shared by the pumps.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Option<std::io::Error>>>);

impl Output {
    fn set(&self, error: std::io::Error) {
        let mut first = self.0.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(error);
    }

    fn take(&self) -> Option<std::io::Error> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The running ranks, and how to stop them.
struct Ranks<'a> {
    children: &'a mut [Child],
    /// Each rank's status once it exited.
    exited: Vec<Option<ExitStatus>>,
    grace: Duration,
}

impl<'a> Ranks<'a> {
    fn new(children: &'a mut [Child], grace_secs: u64) -> Self {
        let exited = vec![None; children.len()];
        Ranks {
            children,
            exited,
            grace: Duration::from_secs(grace_secs),
        }
    }

    /// Reaps the ranks that exited; returns the first rank that failed among them.
    fn reap(&mut self) -> Option<(usize, ExitStatus)> {
        let mut failed = None;
        for (rank, child) in self.children.iter_mut().enumerate() {
            if self.exited[rank].is_some() {
                continue;
            }
            let status = match child.try_wait() {
                Ok(Some(status)) => status,
                Ok(None) => continue,
                // Not ours to wait for any more: count it as gone.
                Err(_) => std::os::unix::process::ExitStatusExt::from_raw(0),
            };
            self.exited[rank] = Some(status);
            if !status.success() && failed.is_none() {
                failed = Some((rank, status));
            }
        }
        failed
    }

    fn all_exited(&self) -> bool {
        self.exited.iter().all(Option::is_some)
    }

    /// Signals the groups of the ranks still running; returns how many.
    fn signal_running(&self, sig: libc::c_int) -> usize {
        let mut n = 0;
        for (child, exited) in self.children.iter().zip(&self.exited) {
            if exited.is_none() {
                signals::signal_group(child.id() as libc::pid_t, sig);
                n += 1;
            }
        }
        n
    }

    /// Waits for every rank. The first failure, signal or output error stops the rest: SIGTERM
    /// (the signal itself was passed on already), SIGKILL after the grace period or at a
    /// further signal.
    fn watch(&mut self, output: &Output) -> End {
        let mut end = End::Done;
        // When the stop began, and the signals counted then.
        let mut stopping: Option<(Instant, usize)> = None;
        let mut killed = 0;
        let mut pause = Duration::from_millis(5);
        loop {
            let failed = self.reap();
            if stopping.is_none() {
                if let Some(sig) = signals::received() {
                    end = End::Signal { sig, killed: 0 };
                    stopping = Some((Instant::now(), signals::count()));
                } else if let Some((rank, status)) = failed {
                    end = End::Failed { rank, status };
                    self.signal_running(libc::SIGTERM);
                    stopping = Some((Instant::now(), signals::count()));
                } else if let Some(error) = output.take() {
                    end = End::Output(error);
                    self.signal_running(libc::SIGTERM);
                    stopping = Some((Instant::now(), signals::count()));
                }
            }
            if self.all_exited() {
                break;
            }
            if let Some((since, seen)) = stopping
                && killed == 0
                && (since.elapsed() >= self.grace || signals::count() > seen)
            {
                killed = self.signal_running(libc::SIGKILL);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        if stopping.is_some() {
            // What a rank started in its group may outlive it and hold our pipes open.
            self.kill_groups();
        }
        match end {
            End::Signal { sig, .. } => End::Signal { sig, killed },
            end => end,
        }
    }

    /// Stops every rank now (a rank failed to start): SIGTERM, the grace period, SIGKILL.
    fn stop_all(mut self) {
        self.signal_running(libc::SIGTERM);
        let start = Instant::now();
        while !self.all_exited() && start.elapsed() < self.grace {
            self.reap();
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill_groups();
        for c in self.children.iter_mut() {
            let _ = c.wait();
        }
    }

    /// SIGKILL to every rank's process group.
    fn kill_groups(&self) {
        for c in self.children.iter() {
            signals::signal_group(c.id() as libc::pid_t, libc::SIGKILL);
        }
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

/// Copies a child's stream line by line to our stdout (`Some`, which records a failed write) or
/// stderr, each line prefixed with its rank; the bytes pass unchanged. After a failed write it
/// keeps reading and drops what it reads, so the rank is never killed by a closed pipe while it
/// is being stopped (and saving its state).
fn pump(
    rank: usize,
    stream: impl Read + Send + 'static,
    stdout: Option<Output>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        let prefix = format!("[rank {rank}] ");
        let mut failed = false;
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if failed {
                continue;
            }
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            let written = match &stdout {
                None => {
                    let mut e = std::io::stderr().lock();
                    e.write_all(prefix.as_bytes())
                        .and_then(|()| e.write_all(&line))
                }
                Some(_) => {
                    let mut o = std::io::stdout().lock();
                    o.write_all(prefix.as_bytes())
                        .and_then(|()| o.write_all(&line))
                        .and_then(|()| o.flush())
                }
            };
            if let Err(error) = written {
                failed = true;
                if let Some(output) = &stdout {
                    output.set(error);
                }
            }
        }
    })
}
