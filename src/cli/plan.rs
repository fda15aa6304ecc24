//! `shardflow plan`: prints which sample every row of every step holds, without reading tokens.
//! It streams: each step is printed as it is planned, in constant memory, and `--start` jumps
//! to its step without replaying the rows before it (see [`crate::order`]'s mixture).

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use super::{Out, data, note};
use crate::order::{
    Classes, DatasetSpec, MixtureMode, OrderConfig, Owners, Partition, Plan, Planner, RangeFile,
    Row, Shuffle, StreamLimit,
};
use crate::{Error, Result};

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// A dataset: `[NAME=]PATH[:WEIGHT]`, where PATH is a Megatron shard prefix (only its
    /// index is read) or a directory of shards; the dataset is named NAME, else after the
    /// path's file name. `NAME=SIZE[:WEIGHT]` plans a dataset of SIZE samples with no file.
    #[arg(long = "data", required = true)]
    data: Vec<String>,
    /// The seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Number of ranks.
    #[arg(long, default_value_t = 1)]
    world: usize,
    /// Rows per rank per step.
    #[arg(long, default_value_t = 1)]
    local_batch: usize,
    /// Steps to print.
    #[arg(long, default_value_t = 1)]
    steps: u64,
    /// The first step to print.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Only this rank's rows (all ranks by default).
    #[arg(long)]
    rank: Option<usize>,
    /// none, full, or block:N.
    #[arg(long, default_value = "full", value_parser = data::shuffle_arg)]
    shuffle: Shuffle,
    /// global, contiguous, strided, hashed, range:FILE (a JSON range file: per dataset, every
    /// rank's [start, end) ranges), stratified (the class files beside the shards: `web.idx`
    /// has `web.classes`, one little-endian u32 per sequence) or stratified:[NAME=]FILE[,...]
    /// (class files given).
    #[arg(long, default_value = "global")]
    partition: String,
    /// Print each rank's share instead of rows: samples owned per dataset and, with the
    /// stratified partition, per class (the classes it holds samples of).
    #[arg(long)]
    summary: bool,
    /// Draw each row's dataset at random (seeded) instead of by the deterministic
    /// earliest-deadline interleave.
    #[arg(long)]
    stochastic: bool,
    /// End the stream after floor(E x the datasets' total size) rows; in a mixture each
    /// dataset gets its weight's share of them (see the README).
    #[arg(long, conflicts_with = "samples")]
    epochs: Option<f64>,
    /// End the stream after this many samples.
    #[arg(long)]
    samples: Option<u64>,
    /// Drop the last global batch of a limited stream when it is incomplete, so every rank
    /// takes the same full steps (without it a rank may get a short or empty last batch).
    #[arg(long)]
    drop_last: bool,
    /// Print JSON: an array with one object per step and rank, one per line.
    #[arg(long)]
    json: bool,
}

impl PlanArgs {
    /// The order configuration and the datasets these arguments describe.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a bad `--data`, `--shuffle` or `--partition`; a shard's open error.
    pub fn config(&self) -> Result<(OrderConfig, Vec<DatasetSpec>)> {
        let args = data::parse_all(&self.data, true)?;
        let (partition, input) = parse_partition(&self.partition)?;
        let mut datasets: Vec<DatasetSpec> = args.iter().map(data::DataArg::spec).collect();
        if let Some(input) = input {
            for (spec, owners) in datasets.iter_mut().zip(input.owners(&args)?) {
                spec.owners = Some(owners);
            }
        }
        let config = OrderConfig {
            seed: self.seed,
            shuffle: self.shuffle,
            mixture: if self.stochastic {
                MixtureMode::Stochastic
            } else {
                MixtureMode::Deterministic
            },
            partition,
            world: self.world,
            rank: self.rank.unwrap_or(0),
            local_batch: self.local_batch,
            limit: match (self.epochs, self.samples) {
                (Some(e), _) => StreamLimit::Epochs(e),
                (_, Some(n)) => StreamLimit::Samples(n),
                _ => StreamLimit::Endless,
            },
            drop_last: self.drop_last,
        };
        Ok((config, datasets))
    }

    /// Plans and prints the requested steps into `w`.
    ///
    /// # Errors
    ///
    /// As [`PlanArgs::config`] and [`OrderConfig::init`]; [`Error::Config`] for a `--start`
    /// whose position does not fit 64 bits; `w`'s write errors.
    pub fn print(&self, w: &mut dyn Write) -> Result<()> {
        let (config, datasets) = self.config()?;
        let plan = Arc::new(config.init(datasets)?);
        plan.position_of(self.start).ok_or_else(|| {
            Error::Config(format!(
                "--start {}: that step begins past row 2^64 ({} rows per step)",
                self.start,
                plan.rows_per_step()
            ))
        })?;
        if self.summary {
            return print_summary(w, &plan, self.json);
        }
        // Say where the stream ends when it ends before the steps asked for: an endless stream
        // ends too, after 2^64 - 1 rows, where stream positions stop fitting 64 bits.
        let (end, why) = match plan.steps() {
            Some(steps) => (steps, ""),
            None => (
                u64::MAX.div_ceil(plan.rows_per_step()),
                " (an endless stream ends after 2^64 - 1 rows, where stream positions stop \
                 fitting 64 bits)",
            ),
        };
        if self.start >= end {
            note(format_args!(
                "the stream ends after {end} steps{why}; nothing from step {} on",
                self.start
            ));
        } else if self.steps > end - self.start {
            note(format_args!(
                "the stream ends after {end} steps{why}; printed steps {}..{end}, {} of the {} \
                 asked for",
                self.start,
                end - self.start,
                self.steps
            ));
        }
        let mut planner = Planner::new(Arc::clone(&plan));
        planner.skip_to(self.start);
        let ranks = match self.rank {
            Some(r) => r..r + 1,
            None => 0..plan.config().world,
        };
        let mut records = Records::new(w, &plan, self.json)?;
        for _ in 0..self.steps {
            let step = planner.step();
            let mut failed = None;
            let planned = planner.next_step(ranks.clone(), |rank, rows| {
                if failed.is_none() {
                    failed = records.write(step, rank, rows).err();
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
            if !planned {
                break;
            }
        }
        records.finish()
    }
}

impl PlanArgs {
    /// Caps what only costs time (the steps printed), for the fuzz target.
    pub(super) fn cap_for_fuzzing(&mut self) {
        self.steps = self.steps.min(20);
        // Printing every rank of a huge world only costs time: print one.
        if self.world.saturating_mul(self.local_batch) > 1 << 12 && self.rank.is_none() {
            self.rank = Some(0);
        }
    }
}

pub fn run(a: PlanArgs) -> Result<ExitCode> {
    let mut out = Out::new();
    a.print(&mut out)?;
    out.finish()?;
    Ok(ExitCode::SUCCESS)
}

/// The printed form: a text table, or a JSON array with one object per line.
struct Records<'a> {
    w: &'a mut dyn Write,
    names: Vec<String>,
    json: bool,
    first: bool,
    line: String,
}

impl<'a> Records<'a> {
    fn new(w: &'a mut dyn Write, plan: &Plan, json: bool) -> Result<Self> {
        let names = plan
            .names()
            .iter()
            .map(|n| {
                if json {
                    serde_json::to_string(n).expect("a string serializes")
                } else {
                    n.clone()
                }
            })
            .collect();
        let mut r = Records {
            w,
            names,
            json,
            first: true,
            line: String::new(),
        };
        let head = if json {
            "["
        } else {
            "step  rank  rows (dataset:sample (epoch))"
        };
        r.emit(head)?;
        Ok(r)
    }

    fn write(&mut self, step: u64, rank: usize, rows: &[Row]) -> Result<()> {
        use std::fmt::Write as _;
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        if self.json {
            let sep = if self.first { "" } else { "," };
            let _ = write!(line, "{sep}{{\"step\":{step},\"rank\":{rank},\"rows\":[");
            for (i, r) in rows.iter().enumerate() {
                let comma = if i > 0 { "," } else { "" };
                let _ = write!(
                    line,
                    "{comma}{{\"dataset\":{},\"sample\":{},\"epoch\":{}}}",
                    self.names[r.dataset as usize], r.sample, r.epoch
                );
            }
            line.push_str("]}");
        } else {
            let _ = write!(line, "{step:>4}  {rank:>4}  ");
            for (i, r) in rows.iter().enumerate() {
                let comma = if i > 0 { ", " } else { "" };
                let _ = write!(
                    line,
                    "{comma}{}:{} ({})",
                    self.names[r.dataset as usize], r.sample, r.epoch
                );
            }
        }
        self.first = false;
        let result = self.emit(&line);
        self.line = line;
        result
    }

    fn emit(&mut self, line: &str) -> Result<()> {
        writeln!(self.w, "{line}").map_err(super::stdout_error)
    }

    fn finish(mut self) -> Result<()> {
        if self.json {
            self.emit("]")?;
        }
        self.w.flush().map_err(super::stdout_error)
    }
}

/// What the range and stratified partitions read, as `--partition` names it.
#[derive(Debug)]
pub enum PartitionInput {
    /// A range file.
    Ranges(std::path::PathBuf),
    /// Class files: beside the shards (empty), one for the only dataset (`None` name), or by
    /// dataset name.
    Classes(Vec<(Option<String>, std::path::PathBuf)>),
}

impl PartitionInput {
    /// Each dataset's owners, in the order of `args`.
    ///
    /// # Errors
    ///
    /// The files' read errors; [`Error::Config`] for a range file that lists a dataset not
    /// given or omits one given, a class file for a dataset not given, a dataset given by size
    /// with no class file, or one unnamed class file for several datasets.
    pub fn owners(&self, args: &[data::DataArg]) -> Result<Vec<Owners>> {
        match self {
            PartitionInput::Ranges(path) => {
                let file = RangeFile::read(path)?;
                if let Some(extra) = file
                    .datasets
                    .keys()
                    .find(|n| !args.iter().any(|a| a.name() == n.as_str()))
                {
                    return Err(Error::Config(format!(
                        "range file {}: it lists dataset {extra}, which no --data gives",
                        path.display()
                    )));
                }
                args.iter()
                    .map(|a| {
                        file.ranges(a.name()).map(Owners::Ranges).ok_or_else(|| {
                            Error::Config(format!(
                                "range file {}: it lists no ranges for dataset {}",
                                path.display(),
                                a.name()
                            ))
                        })
                    })
                    .collect()
            }
            PartitionInput::Classes(files) => {
                if let [(None, _)] = files.as_slice()
                    && args.len() > 1
                {
                    return Err(Error::Config(format!(
                        "--partition stratified:FILE names one class file for {} datasets; \
                         name each: stratified:NAME=FILE,NAME=FILE",
                        args.len()
                    )));
                }
                if let Some((Some(extra), _)) = files.iter().find(|(n, _)| {
                    n.as_ref()
                        .is_some_and(|n| !args.iter().any(|a| a.name() == n))
                }) {
                    return Err(Error::Config(format!(
                        "--partition: a class file for dataset {extra}, which no --data gives"
                    )));
                }
                args.iter()
                    .map(|a| {
                        let given = files
                            .iter()
                            .find(|(n, _)| n.as_deref().is_none_or(|n| n == a.name()));
                        let classes = match (given, a.dataset()) {
                            (Some((_, path)), _) => {
                                Classes::new(crate::shard::read_class_file(path)?)
                            }
                            (None, Some(data)) => crate::loader::classes_beside(data)?,
                            (None, None) => {
                                return Err(Error::Config(format!(
                                    "dataset {} is given by size, so no class file lies beside \
                                     it; give one: --partition stratified:{}=FILE",
                                    a.name(),
                                    a.name()
                                )));
                            }
                        };
                        Ok(Owners::Classes(classes))
                    })
                    .collect()
            }
        }
    }
}

/// Parses `--partition`: the mode, and for range and stratified what they read.
///
/// # Errors
///
/// [`Error::Config`] naming the value.
pub fn parse_partition(s: &str) -> Result<(Partition, Option<PartitionInput>)> {
    let bad = || {
        Error::Config(format!(
            "--partition {s}: expected global, contiguous, strided, hashed, range:FILE, \
             stratified or stratified:[NAME=]FILE[,NAME=FILE...]"
        ))
    };
    if let Some(file) = s.strip_prefix("range:") {
        if file.is_empty() {
            return Err(bad());
        }
        return Ok((Partition::Range, Some(PartitionInput::Ranges(file.into()))));
    }
    if let Some(files) = s.strip_prefix("stratified:") {
        let files = files
            .split(',')
            .map(|f| match f.split_once('=') {
                Some((name, path)) if !name.is_empty() && !path.is_empty() => {
                    Ok((Some(name.to_string()), path.into()))
                }
                None if !f.is_empty() => Ok((None, f.into())),
                _ => Err(bad()),
            })
            .collect::<Result<Vec<_>>>()?;
        if files.len() > 1 && files.iter().any(|(n, _)| n.is_none()) {
            return Err(bad());
        }
        return Ok((Partition::Stratified, Some(PartitionInput::Classes(files))));
    }
    Ok(match s {
        "global" => (Partition::Global, None),
        "contiguous" => (Partition::Contiguous, None),
        "strided" => (Partition::Strided, None),
        "hashed" => (Partition::Hashed, None),
        "range" => return Err(bad()),
        "stratified" => (
            Partition::Stratified,
            Some(PartitionInput::Classes(Vec::new())),
        ),
        _ => return Err(bad()),
    })
}

/// `plan --summary`: every rank's share of every dataset, and its counts of the classes it holds
/// (a class of which a rank holds no sample is left out: the output grows with the samples, not
/// with ranks x classes).
fn print_summary(w: &mut dyn Write, plan: &Plan, json: bool) -> Result<()> {
    let mut emit = |line: &str| writeln!(w, "{line}").map_err(super::stdout_error);
    emit(if json {
        "["
    } else {
        "rank  dataset  samples  classes (class:samples)"
    })?;
    let mut first = true;
    for rank in 0..plan.config().world {
        for (d, name) in plan.names().iter().enumerate() {
            let samples = plan.share_len(d, rank);
            let classes = plan
                .class_counts(d, rank)
                .map(|c| c.into_iter().filter(|&(_, n)| n > 0).collect::<Vec<_>>());
            let line = if json {
                let mut obj = serde_json::json!({
                    "rank": rank, "dataset": name, "samples": samples,
                });
                if let Some(c) = &classes {
                    obj["classes"] = c
                        .iter()
                        .map(|(k, n)| (k.to_string(), serde_json::json!(n)))
                        .collect::<serde_json::Map<_, _>>()
                        .into();
                }
                format!("{}{obj}", if first { "" } else { "," })
            } else {
                let counts = classes.map_or_else(
                    || "-".to_string(),
                    |c| {
                        c.iter()
                            .map(|(k, n)| format!("{k}:{n}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    },
                );
                format!("{rank:>4}  {name}  {samples}  {counts}")
            };
            emit(&line)?;
            first = false;
        }
    }
    if json {
        emit("]")?;
    }
    w.flush().map_err(super::stdout_error)
}
