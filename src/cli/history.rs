//! `shardflow history DIR`: a run's metrics history summarized by streaming over its row groups;
//! `shardflow history compact DIR`: its parts merged into one file per table.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{Out, outln};
use crate::history::{HistoryFiles, Summary, compact, summarize};
use crate::{Error, Result};

/// The arguments of `history`.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// `DIR` to summarize a history, or `compact DIR` to merge its parts into DIR/steps.parquet
    /// and DIR/samples.parquet.
    #[arg(required = true, num_args = 1..=2, value_name = "[compact] DIR")]
    args: Vec<String>,
    /// Also list the K samples with the highest values of `--by`.
    #[arg(long, value_name = "K")]
    top: Option<usize>,
    /// The per-sample value `--top` ranks by.
    #[arg(long, default_value = "loss", value_name = "NAME")]
    by: String,
    /// Read the merged files instead of the parts.
    #[arg(long)]
    merged: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: HistoryArgs) -> Result<ExitCode> {
    let mut out = Out::new();
    match a.args.as_slice() {
        [cmd, dir] if cmd == "compact" => {
            let dir = existing(dir)?;
            let c = compact(&dir)?;
            if a.json {
                let text = serde_json::to_string_pretty(&c).expect("reports serialize");
                outln!(out, "{text}")?;
            } else {
                outln!(
                    out,
                    "{}: {} steps rows from {} parts, {} samples rows from {} parts",
                    dir.display(),
                    c.steps_rows,
                    c.steps_parts,
                    c.samples_rows,
                    c.samples_parts
                )?;
            }
        }
        [dir] => {
            let dir = existing(dir)?;
            let source = if a.merged {
                HistoryFiles::Merged
            } else {
                HistoryFiles::Parts
            };
            let s = summarize(&dir, source, a.top.map(|k| (k, a.by.as_str())))?;
            if a.json {
                let text = serde_json::to_string_pretty(&s).expect("reports serialize");
                outln!(out, "{text}")?;
            } else {
                print(&mut out, &dir, &s, a.top.map(|_| a.by.as_str()))?;
            }
        }
        other => {
            return Err(Error::Config(format!(
                "history takes DIR or `compact DIR`, not {other:?}"
            )));
        }
    }
    out.finish()?;
    Ok(ExitCode::SUCCESS)
}

/// `dir`, which must be a directory.
fn existing(dir: &str) -> Result<PathBuf> {
    let dir = PathBuf::from(dir);
    if !dir.is_dir() {
        return Err(Error::MissingDirectory { path: dir });
    }
    Ok(dir)
}

/// The summary as a table.
pub fn print(out: &mut Out, dir: &Path, s: &Summary, by: Option<&str>) -> Result<()> {
    let statuses: Vec<String> = s.statuses.iter().map(|(k, n)| format!("{k} {n}")).collect();
    outln!(
        out,
        "history {}: {} steps ({} rows), {} samples{}",
        dir.display(),
        s.steps,
        s.step_rows,
        s.samples,
        if statuses.is_empty() {
            String::new()
        } else {
            format!(" ({})", statuses.join(", "))
        }
    )?;
    if !s.series.is_empty() {
        outln!(
            out,
            "  {:<5} {:<10} {:<20} {:<8} {:>14} {:>8} {:>14} {:>14} {:>14}",
            "rank",
            "dataset",
            "metric",
            "stat",
            "last",
            "at step",
            "min",
            "mean",
            "max"
        )?;
    }
    for x in &s.series {
        outln!(
            out,
            "  {:<5} {:<10} {:<20} {:<8} {:>14} {:>8} {:>14} {:>14} {:>14}",
            x.rank,
            x.dataset,
            x.metric,
            x.stat,
            num(x.last),
            x.last_step,
            num(x.min),
            num(x.mean),
            num(x.max)
        )?;
    }
    if let Some(by) = by {
        outln!(out, "top {} samples by {by}:", s.top.len())?;
        for r in &s.top {
            outln!(
                out,
                "  {:>14}  {} sample {} (epoch {}, step {}, rank {})",
                num(r.value.unwrap_or(f64::NAN)),
                r.dataset,
                r.sample,
                r.epoch,
                r.step,
                r.rank
            )?;
        }
    }
    Ok(())
}

/// A value as the table shows it: whole numbers without decimals, others with 4.
fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x:.4}")
    }
}
