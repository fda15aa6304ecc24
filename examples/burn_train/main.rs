//! Trains a small next-token model with Burn on shardflow batches from the built-in corpus
//! mixture (web, code, books), logging the loss and a per-dataset table (data metrics and the
//! training loss), and checkpointing the loader state beside the model. Run it again with the
//! same `--dir` and it resumes from the last checkpoint: the batches continue exactly.
//!
//! ```text
//! cargo run --release --example burn_train --features burn -- [--steps 120] [--every 20]
//!     [--dir target/burn_train] [--wgpu] [--data DIR [--vocab N]]
//! ```
//!
//! Flex (Burn's CPU device) by default; `--wgpu` trains on the wgpu adapter shardflow picks,
//! registered with Burn as one shared device, and bins the losses there. `--data DIR` trains on
//! the shards `shardflow write` put in `DIR` (text through a tokenizer) instead of the built-in
//! mixture, with a vocabulary of `--vocab N` (the tokenizer's size) or the largest id plus one.

mod data;
mod model;

use std::error::Error;
use std::path::{Path, PathBuf};

use burn::data::dataloader::DataLoader;
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::Device;
use shardflow::burn::{BurnBatch, BurnLoader, record_losses, record_losses_wgpu};
use shardflow::collate::{CollateConfig, Padding};
use shardflow::loader::{DatasetConfig, LoaderConfig, LoaderState};
use shardflow::metrics::{Aggregator, AggregatorState, MetricsConfig};
use shardflow::order::StreamLimit;

use model::NextToken;

const BATCH: usize = 16;
const SEQ_LEN: usize = 64;

struct Args {
    steps: usize,
    every: usize,
    dir: PathBuf,
    wgpu: bool,
    data: Option<PathBuf>,
    vocab: Option<usize>,
}

fn args() -> Result<Args, Box<dyn Error>> {
    let mut a = Args {
        steps: 120,
        every: 20,
        dir: PathBuf::from("target/burn_train"),
        wgpu: false,
        data: None,
        vocab: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--steps" => a.steps = value()?.parse()?,
            "--every" => a.every = value()?.parse::<usize>()?.max(1),
            "--dir" => a.dir = value()?.into(),
            "--wgpu" => a.wgpu = true,
            "--data" => a.data = Some(value()?.into()),
            "--vocab" => a.vocab = Some(value()?.parse()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if a.vocab.is_some() && a.data.is_none() {
        return Err("--vocab goes with --data (the built-in mixture's vocabulary is fixed)".into());
    }
    Ok(a)
}

fn config(datasets: Vec<DatasetConfig>, steps: usize) -> LoaderConfig {
    let mut config = LoaderConfig::new(datasets)
        .with_batch_size(BATCH)
        .with_seed(7)
        .with_collate(CollateConfig {
            seq_len: SEQ_LEN,
            padding: Padding::Multiple(8),
            ..Default::default()
        });
    config.order.limit = StreamLimit::Samples((steps * BATCH) as u64);
    config.metrics = Some(MetricsConfig::default());
    config
}

/// The newest checkpoint: `dir/ckpt/LATEST` names its folder.
fn latest(dir: &Path) -> Option<PathBuf> {
    let name = std::fs::read_to_string(dir.join("ckpt/LATEST")).ok()?;
    Some(dir.join("ckpt").join(name.trim()))
}

/// Writes the model, the loader state and the loss totals into a new folder, then points
/// `LATEST` at it (atomically): a crash leaves the previous checkpoint in force.
fn save(
    dir: &Path,
    step: usize,
    model: &NextToken,
    state: &LoaderState,
    losses: &Aggregator,
) -> Result<(), Box<dyn Error>> {
    let name = format!("step-{step:06}");
    let at = dir.join("ckpt").join(&name);
    std::fs::create_dir_all(&at)?;
    model.clone().save_file(at.join("model.bpk"))?;
    shardflow::atomic::write_atomic(at.join("loader.json"), &serde_json::to_vec(state)?)?;
    shardflow::atomic::write_atomic(
        at.join("losses.json"),
        &serde_json::to_vec(&losses.state())?,
    )?;
    shardflow::atomic::write_atomic(dir.join("ckpt/LATEST"), name.as_bytes())?;
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = args()?;
    // On wgpu, shardflow and Burn share one device, so the losses are binned where they are.
    let (device, ctx) = if args.wgpu {
        let (device, ctx) = shardflow::burn::shared_wgpu()?;
        (device, Some(ctx))
    } else {
        (Device::flex(), None)
    };
    let device = device.autodiff();
    device.seed(7);
    let data = match &args.data {
        Some(dir) => data::from_dir(dir, args.vocab)?,
        None => data::builtin(&args.dir)?,
    };
    let config = config(data.datasets, args.steps);

    let mut model = NextToken::new(data.vocab, 64, &device);
    let mut losses = Aggregator::new(MetricsConfig::default());
    let mut resume = None;
    if let Some(at) = latest(&args.dir) {
        model = model.load_file(at.join("model.bpk"));
        let state: LoaderState = serde_json::from_slice(&std::fs::read(at.join("loader.json"))?)?;
        let saved: AggregatorState =
            serde_json::from_slice(&std::fs::read(at.join("losses.json"))?)?;
        losses = Aggregator::from_state(saved);
        println!(
            "resuming from {} (batch {})",
            at.display(),
            state.position.batches
        );
        resume = Some(state);
    }

    let loader = BurnLoader::new(config, 0, 1, &device, |b: BurnBatch| b)?.resume(resume.clone());
    let names = loader.names().to_vec();
    let mut optim = AdamConfig::new().init();
    let mut step = resume.map_or(0, |s| s.position.batches as usize);
    let mut window = (0.0, 0usize);
    for batch in loader.iter() {
        let batch = batch?;
        let labels = batch
            .labels
            .clone()
            .ok_or("the collate config emits labels")?;
        let per_sample = model.per_sample_loss(batch.ids.clone(), labels);
        let loss = per_sample.clone().mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
        match &ctx {
            Some(ctx) => record_losses_wgpu(&mut losses, ctx, &names, &batch.docs, per_sample)?,
            None => record_losses(&mut losses, &names, &batch.docs, per_sample.detach())?,
        }
        window.0 += loss.into_scalar::<f32>() as f64;
        window.1 += 1;
        step += 1;
        if step % args.every == 0 {
            println!("step {step:5}  loss {:.4}", window.0 / window.1 as f64);
            window = (0.0, 0);
            let state = loader.state().ok_or("a batch was yielded")?;
            let mut table = state
                .metrics
                .clone()
                .map_or_else(Aggregator::default, Aggregator::from_state);
            table.merge(&losses)?;
            print_table(&table);
            save(&args.dir, step, &model, &state, &losses)?;
        }
    }
    println!(
        "trained to step {step}; checkpoints in {}",
        args.dir.join("ckpt").display()
    );
    Ok(())
}

/// One line per dataset: samples and tokens seen, mean sequence length, the loss's mean and
/// percentiles.
fn print_table(metrics: &Aggregator) {
    let report = metrics.report();
    let flat = report.flat();
    let get = |d: &str, m: &str| flat.get(&format!("{d}/{m}")).copied().unwrap_or(f64::NAN);
    println!(
        "  {:<8} {:>9} {:>10} {:>8} {:>9} {:>8} {:>8}",
        "dataset", "samples", "tokens", "seq_len", "loss", "p50", "p95"
    );
    for d in report.datasets.keys() {
        println!(
            "  {:<8} {:>9} {:>10} {:>8.1} {:>9.4} {:>8.4} {:>8.4}",
            d,
            get(d, "samples_seen"),
            get(d, "tokens_seen"),
            get(d, "seq_len/mean"),
            get(d, "loss_mean"),
            get(d, "loss/p50"),
            get(d, "loss/p95"),
        );
    }
}
