//! The `shardflow` command: argument parsing and dispatch; each command lives in its own file.
//!
//! Everything the command prints to stdout goes through [`Out`]: a closed pipe (`shardflow plan
//! | head`) ends the command quietly with status 141, as a process killed by SIGPIPE ends, and
//! any other write error (a full disk) is an error message and status 1; `--help` and
//! `--version` too. A usage error (an unknown option, a value malformed on its own, such as
//! `--range 2..1`, `--shuffle random` or `--nproc 0`) is clap's message and status 2: such values
//! are checked by clap value parsers (`data::shuffle_arg`, `cat::parse_range`), not after
//! parsing. Ctrl-C, SIGTERM and SIGHUP remove the temporary files of a write in progress before
//! the command exits (status 128 + the signal); `launch` passes them on to its ranks and waits
//! for them first.

pub mod bench;
mod cat;
mod data;
mod demo;
mod demo_world;
mod devices;
pub mod fuzz;
mod history;
mod inspect;
mod launch;
pub mod measure;
pub mod plan;
mod signals;
mod write;

use std::fmt::Display;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::{Error, Result};

/// The status of a command whose reader went away, as if SIGPIPE had killed it (128 + 13).
pub const BROKEN_PIPE_STATUS: u8 = 141;

/// Feeds training loops from memory-mapped token shards.
#[derive(Debug, Parser)]
#[command(
    name = "shardflow",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write the built-in synthetic corpus, inspect it and print a summary.
    Demo {
        /// Keep the corpus in this directory instead of a temporary one.
        #[arg(long, conflicts_with = "world_from_env")]
        dir: Option<PathBuf>,
        /// Run as one rank of a job of processes (RANK and WORLD_SIZE, or SLURM's or Open
        /// MPI's variables; the store in SHARDFLOW_STORE), as `shardflow launch` starts them.
        #[arg(long)]
        world_from_env: bool,
    },
    /// Tokenize JSON lines, plain text or Parquet (byte-level, or with a Hugging Face
    /// tokenizer.json) into Megatron shards.
    Write(write::WriteArgs),
    /// Print sequence, document, length and token id statistics of shards.
    Inspect(inspect::InspectArgs),
    /// Measure loader throughput against a memcpy of the same bytes.
    #[command(allow_negative_numbers = true)]
    Bench(bench::BenchArgs),
    /// Print the sample order (dataset, sample, epoch of every row) without reading tokens.
    #[command(allow_negative_numbers = true)]
    Plan(plan::PlanArgs),
    /// Lists the wgpu adapter, CUDA devices, NVRTC and NCCL, or why each is missing.
    Devices,
    /// Starts N local processes of one job (RANK, WORLD_SIZE, LOCAL_RANK, a shared store).
    Launch(launch::LaunchArgs),
    /// Summarize a metrics history (`history DIR`), or merge its parts (`history compact DIR`).
    History(history::HistoryArgs),
    /// Print sequences as JSON arrays of token ids (or, with --tokenizer, as decoded text),
    /// one per line.
    #[command(allow_negative_numbers = true)]
    Cat(cat::CatArgs),
}

/// The command's entry point: parses the arguments, runs the command and reports its error.
pub fn main() -> ExitCode {
    signals::install();
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if e.use_stderr() => {
            // A usage error (status 2), in clap's words; a closed stderr loses it.
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
        Err(e) => {
            // --help and --version: their text is the command's output, so a failed write is
            // the command's failure, as for any other output.
            let mut out = Out::new();
            return match out
                .print(format_args!("{}", e.render()))
                .and_then(|()| out.finish())
            {
                Ok(()) => ExitCode::from(e.exit_code().clamp(0, 255) as u8),
                Err(e) => failure(e),
            };
        }
    };
    match run(args) {
        Ok(code) => code,
        Err(e) => failure(e),
    }
}

/// The status of a command that failed with `e`, after its message: 141 and no message for a
/// closed pipe, else the message and 1.
fn failure(e: Error) -> ExitCode {
    if e.is_broken_pipe() {
        return ExitCode::from(BROKEN_PIPE_STATUS);
    }
    note(format_args!("error: {e}"));
    ExitCode::FAILURE
}

/// Runs the parsed command.
pub fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        Command::Demo {
            world_from_env: true,
            ..
        } => demo_world::run(),
        Command::Demo { dir, .. } => demo::run(dir),
        Command::Write(w) => write::run(w),
        Command::Inspect(i) => inspect::run(i),
        Command::Plan(p) => plan::run(p),
        Command::Bench(b) => bench::run(b),
        Command::Cat(c) => cat::run(c),
        Command::Launch(l) => launch::run(l),
        Command::Devices => devices::run(),
        Command::History(h) => history::run(h),
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal) with the given template; a
/// spinner when the length is unknown.
fn progress_bar(len: Option<u64>, template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr_with_hz(5));
    let style = ProgressStyle::with_template(template)
        .expect("the progress templates are constant and valid")
        .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// `writeln!` for [`Out`]: formats a line and returns the write's error.
macro_rules! outln {
    ($out:expr) => {
        $out.text("\n")
    };
    ($out:expr, $($arg:tt)*) => {
        $out.print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

/// A line on stderr, for notes and errors. Never panics: a closed stderr loses the line.
pub fn note(line: impl Display) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The command's stdout, buffered; every write error is returned, naming `<stdout>`.
pub struct Out {
    w: BufWriter<std::io::StdoutLock<'static>>,
}

impl Out {
    /// Stdout, locked for this command.
    pub fn new() -> Self {
        Out {
            w: BufWriter::with_capacity(1 << 16, std::io::stdout().lock()),
        }
    }

    /// Writes formatted text (`out.print(format_args!(..))`).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming `<stdout>`; [`Error::is_broken_pipe`] tells a closed pipe.
    pub fn print(&mut self, args: std::fmt::Arguments<'_>) -> Result<()> {
        self.w.write_fmt(args).map_err(stdout_error)
    }

    /// Writes `text`.
    ///
    /// # Errors
    ///
    /// As [`Out::print`].
    pub fn text(&mut self, text: &str) -> Result<()> {
        self.w.write_all(text.as_bytes()).map_err(stdout_error)
    }

    /// Shows what is buffered now (before a long step), keeping the writer.
    ///
    /// # Errors
    ///
    /// As [`Out::print`].
    pub fn show(&mut self) -> Result<()> {
        self.w.flush().map_err(stdout_error)
    }

    /// Flushes what is buffered; call it last, so that a failing final write is an error, not
    /// a silent loss.
    ///
    /// # Errors
    ///
    /// As [`Out::print`].
    pub fn finish(mut self) -> Result<()> {
        self.w.flush().map_err(stdout_error)
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.w.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

impl Default for Out {
    fn default() -> Self {
        Self::new()
    }
}

fn stdout_error(error: std::io::Error) -> Error {
    Error::Io {
        path: Path::new("<stdout>").to_path_buf(),
        action: "write to",
        error,
    }
}
