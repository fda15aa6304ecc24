//! `shardflow plan`: prints which sample every row of every step holds, without reading tokens.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use shardflow::order::{
    DatasetSpec, MixtureMode, OrderConfig, Partition, Planner, Row, Shuffle, StreamLimit,
};
use shardflow::shard::prefix_name;
use shardflow::{Error, IndexedShard, Result, Shard};

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// A dataset: `PREFIX[:WEIGHT]` (a Megatron shard; only its index is read). The dataset is
    /// named after the prefix's file name. `NAME=SIZE[:WEIGHT]` plans a dataset of SIZE samples
    /// with no file at all.
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
    #[arg(long, default_value = "full")]
    shuffle: String,
    /// global, contiguous, strided or hashed.
    #[arg(long, default_value = "global")]
    partition: String,
    /// Draw the mixture at random (seeded) instead of by largest deficit.
    #[arg(long)]
    stochastic: bool,
    /// End the stream after this many epochs of the mixture (fractional allowed).
    #[arg(long, conflicts_with = "samples")]
    epochs: Option<f64>,
    /// End the stream after this many samples.
    #[arg(long)]
    samples: Option<u64>,
    /// Print JSON: one object per step and rank.
    #[arg(long)]
    json: bool,
}

pub fn run(a: PlanArgs) -> Result<ExitCode> {
    let datasets = a
        .data
        .iter()
        .map(|d| parse_dataset(d))
        .collect::<Result<Vec<_>>>()?;
    let config = OrderConfig {
        seed: a.seed,
        shuffle: parse_shuffle(&a.shuffle)?,
        mixture: if a.stochastic {
            MixtureMode::Stochastic
        } else {
            MixtureMode::Deterministic
        },
        partition: parse_partition(&a.partition)?,
        world: a.world,
        rank: a.rank.unwrap_or(0),
        local_batch: a.local_batch,
        limit: match (a.epochs, a.samples) {
            (Some(e), _) => StreamLimit::Epochs(e),
            (_, Some(n)) => StreamLimit::Samples(n),
            _ => StreamLimit::Endless,
        },
    };
    let plan = Arc::new(config.init(datasets)?);
    let mut planner = Planner::new(Arc::clone(&plan));
    planner.skip_to(a.start);
    let names = plan.names();
    let mut rows = Vec::new();
    let mut out = String::new();
    if !a.json {
        out.push_str("step  rank  rows (dataset:sample (epoch))\n");
    }
    let mut records = Vec::new();
    for _ in 0..a.steps {
        let step = planner.step();
        if !planner.next_global(&mut rows) {
            break;
        }
        for rank in 0..a.world {
            if a.rank.is_some_and(|r| r != rank) {
                continue;
            }
            let mine: Vec<&Row> = rows.iter().filter(|r| r.rank as usize == rank).collect();
            if a.json {
                let mine: Vec<_> = mine
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "dataset": names[r.dataset as usize],
                            "sample": r.sample,
                            "epoch": r.epoch,
                        })
                    })
                    .collect();
                records.push(serde_json::json!({ "step": step, "rank": rank, "rows": mine }));
            } else {
                let cells: Vec<String> = mine
                    .iter()
                    .map(|r| format!("{}:{} ({})", names[r.dataset as usize], r.sample, r.epoch))
                    .collect();
                out.push_str(&format!("{step:>4}  {rank:>4}  {}\n", cells.join(", ")));
            }
        }
    }
    if a.json {
        out = serde_json::to_string_pretty(&records).expect("plan records serialize") + "\n";
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn parse_dataset(spec: &str) -> Result<DatasetSpec> {
    let bad = |why: String| Error::Config(format!("--data {spec}: {why}"));
    let (body, weight) = match spec.rsplit_once(':') {
        Some((body, w)) if w.parse::<f64>().is_ok() => (body, w.parse::<f64>().unwrap_or(1.0)),
        _ => (spec, 1.0),
    };
    if let Some((name, size)) = body.split_once('=') {
        let len = size
            .parse()
            .map_err(|_| bad(format!("size {size} is not a whole number")))?;
        return Ok(DatasetSpec::new(name, len, weight));
    }
    let prefix = PathBuf::from(body);
    let shard = IndexedShard::open(&prefix)?;
    Ok(DatasetSpec::new(
        prefix_name(&prefix),
        shard.len() as u64,
        weight,
    ))
}

pub fn parse_shuffle(s: &str) -> Result<Shuffle> {
    match s {
        "none" => Ok(Shuffle::None),
        "full" => Ok(Shuffle::Full),
        _ => s
            .strip_prefix("block:")
            .and_then(|n| n.parse().ok())
            .map(Shuffle::Block)
            .ok_or_else(|| Error::Config(format!("--shuffle {s}: expected none, full or block:N"))),
    }
}

pub fn parse_partition(s: &str) -> Result<Partition> {
    Ok(match s {
        "global" => Partition::Global,
        "contiguous" => Partition::Contiguous,
        "strided" => Partition::Strided,
        "hashed" => Partition::Hashed,
        _ => {
            return Err(Error::Config(format!(
                "--partition {s}: expected global, contiguous, strided or hashed"
            )));
        }
    })
}
