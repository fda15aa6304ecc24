//! Command-line parsing and dispatch; each command lives in its own file.

mod bench;
mod cat;
mod demo;
mod inspect;
mod plan;
mod write;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shardflow::Result;

/// Feeds training loops from memory-mapped token shards.
#[derive(Debug, Parser)]
#[command(name = "shardflow", version, about)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write the built-in synthetic corpus, inspect it and print a summary.
    Demo {
        /// Keep the corpus in this directory instead of a temporary one.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Tokenize JSON lines or plain text byte-level into a Megatron shard.
    Write(write::WriteArgs),
    /// Print sequence, document and length statistics of shards.
    Inspect {
        /// Shard prefixes (PREFIX.idx + PREFIX.bin).
        #[arg(required = true)]
        prefixes: Vec<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Measure loader throughput against a memcpy of the same bytes.
    Bench(bench::BenchArgs),
    /// Print the sample order (dataset, sample, epoch of every row) without reading tokens.
    Plan(plan::PlanArgs),
    /// Print sequences as JSON arrays of token ids, one per line.
    Cat {
        /// The shard prefix.
        prefix: PathBuf,
        /// Sequences A..B (B exclusive; `A..` runs to the end).
        #[arg(long, default_value = "0..")]
        range: String,
    },
}

/// Runs the parsed command.
pub fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        Command::Demo { dir } => demo::run(dir),
        Command::Write(w) => write::run(w),
        Command::Inspect { prefixes, json } => inspect::run(&prefixes, json),
        Command::Plan(p) => plan::run(p),
        Command::Bench(b) => bench::run(b),
        Command::Cat { prefix, range } => cat::run(&prefix, &range),
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal) with the given template.
fn progress_bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(5));
    let style = ProgressStyle::with_template(template)
        .expect("the progress templates are constant and valid")
        .progress_chars("=> ");
    bar.set_style(style);
    bar
}
