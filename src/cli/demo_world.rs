//! `shardflow demo --world-from-env`: the demo as one rank of a job of processes (started by
//! `shardflow launch`, torchrun or SLURM). The ranks meet in the file store: rank 0 writes the
//! corpus, every rank agrees on the run spec (config and run name), loads its slice of the same
//! global batches, and publishes a digest of the rows it received. Rank 0 plans every rank's
//! rows on its own and checks each digest: a rank that loaded anything else fails the job.
//!
//! The job id is the launcher's ([`JobId::from_env`]), `demo` when none gives one; the ranks
//! join a fresh run of it ([`Rendezvous`]), so an earlier run's records are never read as this
//! run's. While a rank waits for others, a line on stderr names the ranks not yet arrived.
//!
//! Metrics are not reduced here: across processes they go through MPI or NCCL, never the file
//! store.

use std::process::ExitCode;
use std::time::Duration;

use crate::collate::{CollateConfig, Padding};
use crate::collective::{JobId, Rendezvous, RunSpec, World, agree};
use crate::hash::xxh64;
use crate::loader::{DatasetConfig, LoaderConfig, fill_owners};
use crate::order::{Planner, Row, StreamLimit};
use crate::shard::synthetic::SyntheticCorpus;
use crate::transform::TransformConfig;
use crate::{Error, Result};

use super::{Out, note, outln};

/// Steps each rank loads.
const STEPS: u64 = 60;

/// What a rank reports to rank 0: its rows' digest and counts.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Received {
    rows: u64,
    tokens: u64,
    digest: u64,
}

/// XXH64 over every row's (dataset, sample, epoch), in order.
fn digest(rows: &[(u32, u64, u64)]) -> u64 {
    let bytes: Vec<u8> = rows
        .iter()
        .flat_map(|&(d, s, e)| {
            let mut b = d.to_le_bytes().to_vec();
            b.extend_from_slice(&s.to_le_bytes());
            b.extend_from_slice(&e.to_le_bytes());
            b
        })
        .collect();
    xxh64(&bytes)
}

fn config(dir: &std::path::Path, world: usize) -> LoaderConfig {
    let mut config = LoaderConfig::new(
        [("web", 0.5), ("code", 0.3), ("books", 0.2)]
            .iter()
            .map(|(name, w)| DatasetConfig::new(dir.join(name)).with_weight(*w))
            .collect(),
    )
    .with_batch_size(8)
    .with_seed(2026)
    .with_collate(CollateConfig {
        seq_len: 1024,
        padding: Padding::Multiple(8),
        ..Default::default()
    });
    config.transform = TransformConfig {
        eos: Some(50_256),
        ..Default::default()
    };
    config.order.limit = StreamLimit::Samples(STEPS * 8 * world as u64);
    config
}

pub fn run() -> Result<ExitCode> {
    let world = World::from_env()?;
    let job = JobId::from_env().map_or_else(|| "demo".to_string(), |j| j.id);
    let rendezvous = Rendezvous::from_env(&job, world.rank, world.size)?;
    // A line every 10 s of the default 300 s, more often under a short deadline.
    let every = (rendezvous.deadline() / 30).clamp(Duration::from_secs(1), Duration::from_secs(10));
    let store = rendezvous
        .with_progress(every, |wait| note(format_args!("{wait}")))
        .join()?;
    let mut out = Out::new();
    let dir = store.dir().join("corpus");
    if world.rank == 0 {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, "create", e))?;
        SyntheticCorpus::demo().write(&dir, |_| {})?;
        store.set("corpus_ready", b"written")?;
    } else {
        store.wait("corpus_ready")?;
    }
    let config = config(&dir, world.size);
    let spec = agree(
        &store,
        &RunSpec::new(&config.stream_spec(), config.order.seed)?,
    )?;
    outln!(
        out,
        "rank {} of {}: config agreed, run {} (config hash {:016x})",
        world.rank,
        world.size,
        spec.run_name,
        spec.hash
    )?;
    out.show()?;

    let mut rows = Vec::new();
    let mut tokens = 0u64;
    for batch in config.init::<i32>(world.rank, world.size)? {
        let batch = batch?;
        tokens += batch.real_tokens() as u64;
        rows.extend(batch.docs.iter().map(|d| (d.dataset, d.sample, d.epoch)));
    }
    let mine = Received {
        rows: rows.len() as u64,
        tokens,
        digest: digest(&rows),
    };
    outln!(
        out,
        "rank {}: {} rows, {} real tokens, digest {:016x}",
        world.rank,
        mine.rows,
        mine.tokens,
        mine.digest
    )?;
    out.show()?;
    let all = store.gather(
        "received",
        &serde_json::to_vec(&mine).expect("a summary serializes"),
    )?;
    if world.rank != 0 {
        return Ok(ExitCode::SUCCESS);
    }

    // Rank 0 plans every rank's rows itself and checks what each received.
    // The loader's own specs path: every rank's plan from the same opened datasets.
    let specs = crate::loader::specs(&fill_owners(config.open()?, config.order.partition)?);
    let mut wrong = Vec::new();
    for (rank, bytes) in all.iter().enumerate() {
        let theirs: Received = serde_json::from_slice(bytes).map_err(|e| Error::Store {
            path: store.dir().join(format!("received.{rank}")),
            reason: format!("rank {rank}'s summary does not parse: {e}"),
        })?;
        let mut order = config.order.clone();
        order.rank = rank;
        order.world = world.size;
        let mut planner = Planner::new(std::sync::Arc::new(order.init(specs.clone())?));
        let (mut step, mut planned) = (Vec::<Row>::new(), Vec::new());
        while planner.next_rows(&mut step) {
            planned.extend(step.iter().map(|r| (r.dataset, r.sample, r.epoch)));
        }
        let ok = theirs.rows == planned.len() as u64 && theirs.digest == digest(&planned);
        outln!(
            out,
            "check rank {rank}: {} rows planned, {} received: {}",
            planned.len(),
            theirs.rows,
            if ok { "identical" } else { "DIFFERENT" }
        )?;
        if !ok {
            wrong.push(rank);
        }
    }
    out.show()?;
    if wrong.is_empty() {
        outln!(
            out,
            "all {} ranks loaded exactly their slices of the same global batches",
            world.size
        )?;
        out.show()?;
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Error::CheckFailed(format!(
            "ranks {wrong:?} received rows other than their slices of the plan"
        )))
    }
}
