//! The Burn integration: Burn tensors equal the host batches (values and the device's int
//! dtype) on Flex, NdArray and wgpu; Burn's `DataLoader` counts, slices, devices and errors; a
//! short training run whose loss falls; and an exact resume of batches and loss counts.
#![cfg(feature = "burn")]

mod common;

#[path = "../examples/burn_train/model.rs"]
mod model;

// The example's data module; its built-in mixture is not used here.
#[cfg(feature = "ingest")]
#[allow(dead_code)]
#[path = "../examples/burn_train/data.rs"]
mod data;

use std::path::Path;

use burn::data::dataloader::DataLoader;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{DType, Device, DeviceKind, Int, Tensor};
#[cfg(feature = "wgpu")]
use shardflow::burn::BurnShaderSink;
use shardflow::burn::{BurnBatch, BurnLoader, BurnSink, record_losses};
use shardflow::collate::{Batch, CollateConfig, DocRef, Padding};
use shardflow::collective::Solo;
use shardflow::device::{DeviceBatch, DeviceSink};
use shardflow::loader::{DatasetConfig, LoaderBuilder, LoaderConfig, NamedTransforms, Ownership};
use shardflow::metrics::{Aggregator, MetricsConfig, record_loss_values};
use shardflow::order::{OrderConfig, Partition, RankRanges, StreamLimit};
use shardflow::shard::synthetic::SyntheticCorpus;

/// The test mixture (web 60, code 25, books 40 samples; weights 3:1:2) as a config.
fn mixture_config(dir: &Path) -> LoaderConfig {
    common::mixture(dir);
    LoaderConfig::new(vec![
        DatasetConfig::new(dir.join("web")).with_weight(3.0),
        DatasetConfig::new(dir.join("code")).with_weight(1.0),
        DatasetConfig::new(dir.join("books")).with_weight(2.0),
    ])
    .with_batch_size(4)
    .with_seed(11)
    .with_epochs(1.0)
}

fn values(t: Option<Tensor<2, Int>>, dtype: DType) -> Option<Vec<i64>> {
    t.map(|t| {
        let data = t.into_data();
        assert_eq!(data.dtype(), dtype, "the device's int dtype");
        data.convert::<i64>().try_to_vec::<i64>().unwrap()
    })
}

fn line(t: Option<Tensor<1, Int>>, dtype: DType) -> Option<Vec<i64>> {
    values(t.map(|t| t.unsqueeze_dim::<2>(0)), dtype)
}

/// The host batch's field as i64.
fn host<E: Copy + Into<i64>>(v: Option<&[E]>) -> Option<Vec<i64>> {
    v.map(|v| v.iter().map(|&x| x.into()).collect())
}

fn assert_same(b: BurnBatch, h: &Batch<i32>, dtype: DType) {
    assert_eq!((b.step, b.rows, b.width), (h.step, h.rows, h.width));
    assert_eq!(b.ids.dims(), [h.rows, h.width]);
    assert_eq!(values(Some(b.ids), dtype), host(Some(&h.ids[..])));
    assert_eq!(line(Some(b.lengths), dtype), host(Some(&h.lengths[..])));
    assert_eq!(
        values(b.attention_mask, dtype),
        host(h.attention_mask.as_deref())
    );
    assert_eq!(values(b.labels, dtype), host(h.labels.as_deref()));
    assert_eq!(
        values(b.position_ids, dtype),
        host(h.position_ids.as_deref())
    );
    assert_eq!(line(b.cu_seqlens, dtype), host(h.cu_seqlens.as_deref()));
    assert_eq!(&b.docs[..], &h.docs[..]);
}

/// Every collate configuration of the conformance suite (padded and packed, every field), on
/// `device`: the Burn batches equal the host's, in `dtype`.
fn conformance(device: &Device, dtype: DType) {
    let sink = || {
        let sink = BurnSink::new(device).unwrap();
        assert_eq!(DType::from(sink.dtype()), dtype);
        sink
    };
    conformance_with(sink, dtype);
}

/// The conformance run through `sink`'s sinks; each batch's host copy ([`DeviceBatch`]) equals
/// the host batch byte for byte too.
fn conformance_with<S: DeviceSink<i32, Output = BurnBatch>>(sink: impl Fn() -> S, dtype: DType) {
    let dir = tempfile::tempdir().unwrap();
    for collate in common::conformance::configs() {
        let build = || {
            LoaderBuilder::<i32>::new(common::mixture(dir.path()))
                .with_order(OrderConfig {
                    seed: 3,
                    local_batch: 5,
                    limit: StreamLimit::Samples(60),
                    ..Default::default()
                })
                .with_collate(collate.clone())
                .with_workers(1)
        };
        let hosts: Vec<_> = build().build_host().unwrap().map(Result::unwrap).collect();
        let sink = sink();
        let burns: Vec<_> = build().build(sink).unwrap().map(Result::unwrap).collect();
        assert_eq!(burns.len(), hosts.len(), "{collate:?}");
        assert!(!hosts.is_empty());
        for (b, h) in burns.into_iter().zip(&hosts) {
            let copy = DeviceBatch::<i32>::to_host(&b).unwrap();
            assert_eq!(copy.to_bytes(), h.to_bytes(), "{collate:?}");
            assert_same(b, h, dtype);
        }
    }
}

#[test]
fn burn_batches_equal_host_batches_on_flex() {
    conformance(&Device::flex(), DType::I32);
}

#[test]
fn burn_batches_equal_host_batches_on_ndarray() {
    conformance(&ndarray(), DType::I64);
}

#[cfg(feature = "wgpu")]
#[test]
fn burn_batches_equal_host_batches_on_wgpu() {
    if common::gpu::wgpu().is_none() {
        return;
    }
    conformance(&Device::wgpu(DeviceKind::DefaultDevice), DType::I32);
}

#[cfg(feature = "wgpu")]
#[test]
fn shader_padded_batches_land_in_burn_tensors_on_one_wgpu_device() {
    if common::gpu::wgpu().is_none() {
        return;
    }
    let (device, ctx) = shardflow::burn::shared_wgpu().unwrap();
    let sink = || {
        let sink = BurnShaderSink::new(&device, ctx.clone()).unwrap();
        assert_eq!(DType::from(sink.dtype()), DType::I32);
        sink
    };
    conformance_with(sink, DType::I32);
    // The tensors are Burn's own: Burn ops run on them.
    let dir = tempfile::tempdir().unwrap();
    let mut loader = LoaderBuilder::<i32>::new(common::mixture(dir.path()))
        .with_order(OrderConfig {
            local_batch: 3,
            ..Default::default()
        })
        .build(BurnShaderSink::new(&device, ctx.clone()).unwrap())
        .unwrap();
    let mut host = LoaderBuilder::<i32>::new(common::mixture(dir.path()))
        .with_order(OrderConfig {
            local_batch: 3,
            ..Default::default()
        })
        .build_host()
        .unwrap();
    let (b, h) = (
        loader.next().unwrap().unwrap(),
        host.next().unwrap().unwrap(),
    );
    let sum: i64 = b.ids.sum().into_scalar::<i64>();
    assert_eq!(sum, h.ids.iter().map(|&v| v as i64).sum::<i64>());
}

/// Handmade rows: dataset d, `len` tokens (0: a dropped sample without loss).
fn rows_of(spec: &[(u32, u32)]) -> Vec<DocRef> {
    spec.iter()
        .enumerate()
        .map(|(r, &(dataset, len))| DocRef {
            dataset,
            len,
            doc_len: len,
            row: r as u32,
            sample: r as u64,
            ..Default::default()
        })
        .collect()
}

#[cfg(feature = "wgpu")]
#[test]
fn losses_on_the_shared_wgpu_device_are_binned_there_as_the_host_bins_them() {
    if common::gpu::wgpu().is_none() {
        return;
    }
    let (device, ctx) = shardflow::burn::shared_wgpu().unwrap();
    let names: Vec<String> = ["web", "code", "books"].map(String::from).to_vec();
    let spec: Vec<(u32, u32)> = (0..300u32).map(|i| (i % 3, (i * 7) % 40)).collect();
    let docs = rows_of(&spec);
    let values: Vec<f32> = (0..300).map(|i| 0.01 + (i as f32 * 0.37) % 9.0).collect();
    let mut host = Aggregator::new(MetricsConfig::default());
    let as_f64: Vec<f64> = values.iter().map(|&v| v as f64).collect();
    shardflow::metrics::record_loss_values(&mut host, &names, &docs, &as_f64).unwrap();
    // The losses as a training step leaves them: computed on the device, autodiff attached.
    let losses = Tensor::<1>::from_floats(values.as_slice(), &device.clone().autodiff()) * 1.0;
    let mut dev = Aggregator::new(MetricsConfig::default());
    shardflow::burn::record_losses_wgpu(&mut dev, &ctx, &names, &docs, losses).unwrap();
    let (h, d) = (host.report(), dev.report());
    for n in &names {
        for m in ["loss_samples", "loss_tokens"] {
            assert_eq!(h.number(n, m), d.number(n, m), "{n} {m}");
        }
        let stats = |r: &shardflow::metrics::Report| match r.get(n, "loss") {
            Some(shardflow::metrics::ReportValue::Stats(s)) => s.clone(),
            other => panic!("{n}: {other:?}"),
        };
        let (hs, ds) = (stats(&h), stats(&d));
        for (k, hv) in &hs {
            let dv = ds[k];
            if k == "sum" || k == "mean" {
                assert!((hv - dv).abs() <= 1e-9 * hv.abs(), "{n} {k}: {hv} vs {dv}");
            } else {
                assert_eq!(*hv, dv, "{n} {k}");
            }
        }
        let (hm, dm) = (
            h.number(n, "loss_mean").unwrap(),
            d.number(n, "loss_mean").unwrap(),
        );
        assert!(
            (hm - dm).abs() <= 1e-9 * hm.abs(),
            "{n} loss_mean {hm} vs {dm}"
        );
    }
    assert!(
        h.number("web", "loss_samples").unwrap() < 100.0,
        "dropped rows are not counted"
    );
}

#[test]
fn losses_reduce_across_ranks_with_the_data_metrics_in_one_reduce() {
    let dir = tempfile::tempdir().unwrap();
    let config = mixture_config(dir.path());
    let ranks = shardflow::collective::in_process(2, std::time::Duration::from_secs(20));
    let reports: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = ranks
            .into_iter()
            .enumerate()
            .map(|(rank, c)| {
                let config = config.clone();
                s.spawn(move || {
                    let counted = shardflow::collective::Counting::new(c);
                    let loader = docs_loader(config, rank, 2);
                    let mut losses = Aggregator::new(MetricsConfig::default());
                    // Per dataset: rows seen and the sum of their stand-in losses.
                    let mut rows = [(0.0, 0.0); 3];
                    for docs in loader.iter() {
                        let docs = docs.unwrap();
                        // A stand-in loss per row: its sample index.
                        let l: Vec<f64> = docs.iter().map(|d| d.sample as f64).collect();
                        record_loss_values(&mut losses, loader.names(), &docs, &l).unwrap();
                        for d in &docs {
                            rows[d.dataset as usize].0 += 1.0;
                            rows[d.dataset as usize].1 += d.sample as f64;
                        }
                    }
                    let state = loader.state().unwrap();
                    let mut all = Aggregator::from_state(state.metrics.unwrap());
                    all.merge(&losses).unwrap();
                    let reduced = all.reduce(&counted).unwrap();
                    (reduced.report(), counted.counts().total(), rows)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Both ranks hold the world's totals: every row of both ranks, its loss beside it.
    assert_eq!(reports[0].0, reports[1].0);
    let r = &reports[0].0;
    let mut total = 0.0;
    for (i, d) in ["web", "code", "books"].iter().enumerate() {
        let (n, sum) = (
            reports[0].2[i].0 + reports[1].2[i].0,
            reports[0].2[i].1 + reports[1].2[i].1,
        );
        assert_eq!(r.number(d, "loss_samples"), Some(n), "{d}");
        assert_eq!(r.number(d, "samples_seen"), Some(n), "{d}");
        assert_eq!(r.number(d, "loss_mean"), Some(sum / n), "{d}");
        total += n;
    }
    assert_eq!(total, 125.0, "one epoch of the mixture");
    // A first reduce agrees on the names (the header and a gather), then sums and maxes (two
    // more): the losses ride in the same buffers as the data metrics.
    assert_eq!(
        reports[0].1, 4,
        "one reduce for data metrics and losses together"
    );
}

#[test]
fn wide_ids_on_an_i32_device_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = LoaderBuilder::<i64>::new(common::mixture(dir.path()))
        .build(BurnSink::new(&Device::flex()).unwrap())
        .err()
        .expect("i64 ids cannot land in i32 tensors");
    assert!(err.to_string().contains("i64 ids do not fit"), "{err}");
}

/// (dataset, sample, epoch) of every row, in order.
fn rows(loader: &dyn DataLoader<Vec<DocRef>>) -> Vec<(u32, u64, u64)> {
    let mut it = loader.iter();
    let mut out = Vec::new();
    for docs in it.by_ref() {
        out.extend(docs.unwrap().iter().map(|d| (d.dataset, d.sample, d.epoch)));
    }
    let p = it.progress();
    assert_eq!(p.items_processed, out.len());
    assert_eq!(p.items_total, loader.num_items());
    assert_eq!(p.unit.as_deref(), Some("samples"));
    out
}

fn docs_loader(config: LoaderConfig, rank: usize, world: usize) -> BurnLoader<Vec<DocRef>> {
    BurnLoader::new(config, rank, world, &Device::flex(), |b: BurnBatch| {
        b.docs.to_vec()
    })
    .unwrap()
}

#[test]
fn the_data_loader_counts_and_slices_its_items() {
    let dir = tempfile::tempdir().unwrap();
    let config = mixture_config(dir.path());
    let loader = docs_loader(config.clone(), 0, 1);
    // One epoch of the 125-sample mixture: 31 batches of 4 and one of 1.
    assert_eq!(loader.num_items(), 125);
    let all = rows(&loader);
    assert_eq!(all.len(), 125);
    let mut distinct = all.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 125, "one epoch sees every sample once");

    // Burn's multi-device split: consecutive slices that tile the items.
    for parts in [2usize, 3, 5] {
        let step = 125 / parts;
        let mut joined = Vec::new();
        let mut start = 0;
        for p in 0..parts {
            let end = if p + 1 == parts { 125 } else { start + step };
            let slice = loader.slice(start, end);
            let got = rows(&*slice);
            assert_eq!(got.len(), slice.num_items());
            joined.extend(got);
            start = end;
        }
        assert_eq!(
            joined, all,
            "{parts} slices cover every item once, in order"
        );
    }

    // Two ranks: each counts what it yields, and together they see the epoch once.
    let r0 = docs_loader(config.clone(), 0, 2);
    let r1 = docs_loader(config, 1, 2);
    let (a, b) = (rows(&r0), rows(&r1));
    assert_eq!((a.len(), b.len()), (r0.num_items(), r1.num_items()));
    let mut both: Vec<_> = a.into_iter().chain(b).collect();
    both.sort();
    assert_eq!(both, distinct);
}

/// The rows `LoaderConfig::init` yields on rank `rank` of `world`.
fn init_rows(config: &LoaderConfig, rank: usize, world: usize) -> Vec<(u32, u64, u64)> {
    let mut out = Vec::new();
    for b in config.init::<i32>(rank, world).unwrap() {
        out.extend(
            b.unwrap()
                .docs
                .iter()
                .map(|d| (d.dataset, d.sample, d.epoch)),
        );
    }
    out
}

#[test]
fn a_burn_loader_takes_every_partition_as_init_does() {
    let dir = tempfile::tempdir().unwrap();
    let plain = mixture_config(dir.path());
    // Class files beside the shards (web 60, code 25, books 40 samples), for the stratified
    // partition; given ranges, for the range one.
    for (name, n) in [("web", 60u32), ("code", 25), ("books", 40)] {
        let bytes: Vec<u8> = (0..n).flat_map(|s| (s * 7 % 3).to_le_bytes()).collect();
        std::fs::write(dir.path().join(format!("{name}.classes")), bytes).unwrap();
    }
    let mut stratified = plain.clone();
    stratified.order.partition = Partition::Stratified;
    let mut ranged = plain.clone();
    ranged.order.partition = Partition::Range;
    for (d, n) in ranged.datasets.iter_mut().zip([60u64, 25, 40]) {
        d.owners = Ownership::Ranges(RankRanges::new(vec![vec![[0, n / 2]], vec![[n / 2, n]]]));
    }
    for config in [stratified, ranged] {
        for rank in 0..2 {
            let loader = docs_loader(config.clone(), rank, 2);
            let want = init_rows(&config, rank, 2);
            assert!(!want.is_empty());
            assert_eq!(
                rows(&loader),
                want,
                "{:?} rank {rank}",
                config.order.partition
            );
            assert_eq!(loader.num_items(), want.len());
            // A second epoch over the same opened datasets is the same stream.
            assert_eq!(rows(&loader), want);
        }
    }
}

#[test]
fn to_device_lands_batches_on_that_device() {
    let dir = tempfile::tempdir().unwrap();
    let loader = BurnLoader::new(
        mixture_config(dir.path()),
        0,
        1,
        &Device::flex(),
        |b: BurnBatch| b.ids,
    )
    .unwrap();
    let moved = loader.to_device(&ndarray());
    let ids = moved.iter().next().unwrap().unwrap();
    assert_eq!(ids.device(), ndarray());
    assert_eq!(ids.into_data().dtype(), DType::I64);
    let ids = loader.iter().next().unwrap().unwrap();
    assert_eq!(ids.device(), Device::flex());
    assert_eq!(ids.into_data().dtype(), DType::I32);
}

#[test]
fn endless_and_packed_streams_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = mixture_config(dir.path());
    config.order.limit = StreamLimit::Endless;
    let err = BurnLoader::new(config.clone(), 0, 1, &Device::flex(), |b| b.ids)
        .err()
        .unwrap();
    assert!(err.to_string().contains("endless stream"), "{err}");
    config.order.limit = StreamLimit::Samples(10);
    config.collate.pack = true;
    let err = BurnLoader::new(config, 0, 1, &Device::flex(), |b| b.ids)
        .err()
        .unwrap();
    assert!(err.to_string().contains("packed stream"), "{err}");
}

#[test]
fn a_pipeline_error_reaches_burn_as_a_dataset_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = mixture_config(dir.path());
    config.transforms = vec!["reject_web_7".into()];
    let named = NamedTransforms::new().with("reject_web_7", |info, _ids| {
        if info.dataset == "web" && info.sample == 7 {
            Err("web sample 7 is rejected".into())
        } else {
            Ok(())
        }
    });
    let loader = docs_loader(config.clone(), 0, 1).with_transforms(named);
    let mut it = loader.iter();
    let mut ok = 0;
    let err = loop {
        match it.next().expect("the error comes before the end") {
            Ok(_) => ok += 1,
            Err(e) => break e,
        }
    };
    assert!(
        err.to_string().contains("web sample 7 is rejected"),
        "{err}"
    );
    assert!(it.next().is_none(), "the iterator ends after the error");
    assert!(ok < 32);

    // Without the registration the name itself is the error, at the first batch.
    let loader = docs_loader(config, 0, 1);
    let err = loader.iter().next().unwrap().err().unwrap();
    assert!(
        err.to_string()
            .contains("\"reject_web_7\" is not registered"),
        "{err}"
    );
}

/// A Burn training loop records a metrics history after each batch through
/// `BurnLoader::with_last_batch` (Flex device): the rows read back are the host loader's history
/// of the same stream, the metrics every 4 steps and the skipped sample with its step.
#[cfg(feature = "history")]
#[test]
fn a_burn_loop_records_the_history_the_host_loader_records() {
    use shardflow::history::{
        HistoryConfig, HistoryFiles, Recorder, SampleStatus, read_samples, read_steps,
    };
    use shardflow::transform::BadSamplePolicy;
    let data = tempfile::tempdir().unwrap();
    let mut config = mixture_config(data.path());
    config.transforms = vec!["reject_web_7".into()];
    config.transform.bad_samples = BadSamplePolicy::Skip { max_per_epoch: 1 };
    let named = || {
        NamedTransforms::new().with("reject_web_7", |info, _ids| {
            if info.dataset == "web" && info.sample == 7 {
                Err("web sample 7 is rejected".into())
            } else {
                Ok(())
            }
        })
    };
    // Every steps row (but its wall time) and every samples row, sorted.
    let rows = |dir: &Path| {
        let mut steps: Vec<_> = read_steps(dir, HistoryFiles::Parts)
            .unwrap()
            .into_iter()
            .map(|r| {
                (
                    r.step,
                    r.rank,
                    r.dataset,
                    r.metric,
                    r.stat,
                    r.value.to_bits(),
                )
            })
            .collect();
        let mut samples: Vec<_> = read_samples(dir, HistoryFiles::Parts)
            .unwrap()
            .into_iter()
            .map(|r| {
                (
                    r.step, r.dataset, r.sample, r.epoch, r.name, r.value, r.status,
                )
            })
            .collect();
        steps.sort();
        samples.sort_by_key(|r| (r.0, r.2));
        (steps, samples)
    };

    // The Burn loop: batches converted to their step, the history recorded after each one.
    let loader = BurnLoader::new(config.clone(), 0, 1, &Device::flex(), |b: BurnBatch| b.step)
        .unwrap()
        .with_transforms(named());
    assert!(loader.with_last_batch(|_| ()).is_none(), "no iterator yet");
    let burn_dir = tempfile::tempdir().unwrap();
    let history = HistoryConfig::new(burn_dir.path(), "run", 0);
    let mut recorder = Recorder::create(history, 4, loader.names()).unwrap();
    let (mut batches, mut skipped) = (0, Vec::new());
    for step in loader.iter() {
        let step = step.unwrap();
        loader
            .with_last_batch(|b| {
                assert_eq!(b.step, step + 1, "the step of the batch just yielded");
                skipped.extend(b.skipped.iter().map(|d| (b.step, d.dataset, d.sample)));
                recorder.after_batch(b.step, b.skipped, b.metrics, None)
            })
            .expect("the iterator is live")
            .unwrap();
        batches += 1;
    }
    assert!(
        loader.with_last_batch(|_| ()).is_none(),
        "the iterator ended"
    );
    assert_eq!(recorder.checkpoint().unwrap(), Some(32));
    drop(recorder);
    // One epoch of the 125-sample mixture: 32 batches; web (dataset 0) sample 7 skipped once.
    assert_eq!(batches, 32);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    let (skip_step, web, sample) = skipped[0];
    assert_eq!((web, sample), (0, 7));

    // The host loader over the same stream, recorded the same way.
    let mut host = config
        .builder_with::<i32>(0, 1, &named())
        .unwrap()
        .build_host()
        .unwrap();
    let names = host.plan().names().to_vec();
    let host_dir = tempfile::tempdir().unwrap();
    let history = HistoryConfig::new(host_dir.path(), "run", 0);
    let mut recorder = Recorder::create(history, 4, &names).unwrap();
    while let Some(batch) = host.next() {
        batch.unwrap();
        let last = host.last_batch();
        recorder
            .after_batch(last.step, last.skipped, last.metrics, None)
            .unwrap();
    }
    drop(recorder);
    let want = rows(host_dir.path());

    let (steps, samples) = rows(burn_dir.path());
    assert_eq!((&steps, &samples), (&want.0, &want.1));
    let at: std::collections::BTreeSet<u64> = steps.iter().map(|r| r.0).collect();
    assert_eq!(at, (1..=8).map(|k| 4 * k).collect());
    assert!(steps.iter().all(|r| r.1 == "0"), "this rank's own metrics");
    let last = |metric: &str| {
        let value = |r: &(u64, String, String, String, String, u64)| f64::from_bits(r.5);
        let of = |r: &&(u64, String, String, String, String, u64)| r.0 == 32 && r.3 == metric;
        steps.iter().filter(of).map(value).sum::<f64>()
    };
    // At the last step: every sample of the epoch but the skipped one seen, that one failed.
    assert_eq!((last("samples_seen"), last("samples_failed")), (124.0, 1.0));
    assert_eq!(
        samples,
        vec![(
            skip_step,
            "web".to_string(),
            7,
            0,
            "skip".to_string(),
            None,
            SampleStatus::Skipped
        )]
    );
}

/// The built-in mixture with a 128-token vocabulary, 32 tokens a row, 8 rows a batch.
fn train_config(dir: &Path, steps: u64) -> LoaderConfig {
    let mut corpus = SyntheticCorpus::demo();
    for d in &mut corpus.datasets {
        d.vocab = 128;
        d.documents /= 20;
    }
    corpus.write(dir, |_| {}).unwrap();
    let mut config = LoaderConfig::new(
        ["web", "code", "books"]
            .iter()
            .map(|n| DatasetConfig::new(dir.join(n)))
            .collect(),
    )
    .with_batch_size(8)
    .with_seed(5)
    .with_workers(1)
    .with_collate(CollateConfig {
        seq_len: 32,
        padding: Padding::Fixed,
        ..Default::default()
    });
    config.order.limit = StreamLimit::Samples(8 * steps);
    config
}

struct Run {
    losses: Vec<f32>,
    ids: Vec<Vec<i64>>,
    metrics: Aggregator,
}

/// Trains on `loader` until it ends or `stop` steps were taken, recording losses per dataset.
fn train(
    loader: &BurnLoader<BurnBatch>,
    device: &Device,
    metrics: &mut Aggregator,
    stop: usize,
) -> Run {
    train_vocab(loader, device, metrics, stop, 128)
}

/// [`train`] with a model over `vocab` ids.
fn train_vocab(
    loader: &BurnLoader<BurnBatch>,
    device: &Device,
    metrics: &mut Aggregator,
    stop: usize,
    vocab: usize,
) -> Run {
    let mut model = model::NextToken::new(vocab, 32, device);
    let mut optim = AdamConfig::new().init();
    let mut run = Run {
        losses: Vec::new(),
        ids: Vec::new(),
        metrics: Aggregator::default(),
    };
    for batch in loader.iter().take(stop) {
        let batch = batch.unwrap();
        run.ids.push(
            batch
                .ids
                .clone()
                .into_data()
                .convert::<i64>()
                .try_to_vec()
                .unwrap(),
        );
        let per_sample = model.per_sample_loss(batch.ids.clone(), batch.labels.clone().unwrap());
        let loss = per_sample.clone().mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
        record_losses(metrics, loader.names(), &batch.docs, per_sample.detach()).unwrap();
        run.losses.push(loss.into_scalar::<f32>());
    }
    run.metrics = metrics.reduce(&Solo).unwrap();
    run
}

#[test]
fn a_short_training_run_on_flex_lowers_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex().autodiff();
    device.seed(1);
    let loader = BurnLoader::new(train_config(dir.path(), 40), 0, 1, &device, |b| b).unwrap();
    let mut metrics = Aggregator::new(MetricsConfig::default());
    let run = train(&loader, &device, &mut metrics, usize::MAX);
    assert_eq!(run.losses.len(), 40);
    let mean = |l: &[f32]| l.iter().sum::<f32>() / l.len() as f32;
    let (first, last) = (mean(&run.losses[..5]), mean(&run.losses[35..]));
    assert!(
        last < 0.85 * first,
        "the loss fell from {first} to {last} only"
    );
    // Every sample's loss was counted against its dataset.
    let report = run.metrics.report();
    let samples: f64 = ["web", "code", "books"]
        .iter()
        .map(|d| report.number(d, "loss_samples").unwrap_or(0.0))
        .sum();
    assert_eq!(samples, 320.0);
}

/// The Burn example's `--data DIR`: shards written from text by the ingest pipeline (split into
/// numbered pairs), read as one dataset with the vocabulary found in them, train.
#[cfg(feature = "ingest")]
#[test]
fn the_example_trains_on_shards_written_from_text() {
    use shardflow::ingest::encode::{BYTE_LEVEL_EOD, Encoder};
    use shardflow::ingest::pipeline::{IngestConfig, ingest};
    use shardflow::ingest::{Document, Location};

    let dir = tempfile::tempdir().unwrap();
    let texts: Vec<String> = (0..400)
        .map(|i| {
            format!(
                "the {} fox jumps over the {} dog.",
                ["quick", "lazy"][i % 2],
                i % 7
            )
        })
        .collect();
    let docs = texts.into_iter().enumerate().map(|(i, text)| {
        Ok(Document {
            text,
            at: Location::Line {
                path: "docs.txt".into(),
                line: i as u64 + 1,
            },
        })
    });
    let config = IngestConfig {
        eod: Some(BYTE_LEVEL_EOD),
        max_tokens_per_shard: Some(4000),
        ..IngestConfig::new(dir.path().join("web"))
    };
    let summary = ingest(docs, &Encoder::byte_level(), &config, |_| {}).unwrap();
    assert!(summary.shards.len() > 1, "a split output");

    let data = data::from_dir(dir.path(), None).unwrap();
    assert_eq!(data.vocab, BYTE_LEVEL_EOD as usize + 1);
    let err = data::from_dir(dir.path(), Some(200))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("id 256") && err.contains("--vocab"), "{err}");
    assert_eq!(
        data::from_dir(dir.path(), Some(50_000)).unwrap().vocab,
        50_000
    );

    let mut config = LoaderConfig::new(data.datasets)
        .with_batch_size(8)
        .with_seed(3)
        .with_workers(1)
        .with_collate(CollateConfig {
            seq_len: 32,
            padding: Padding::Fixed,
            ..Default::default()
        });
    config.order.limit = StreamLimit::Samples(8 * 30);
    let device = Device::flex().autodiff();
    device.seed(2);
    let loader = BurnLoader::new(config, 0, 1, &device, |b| b).unwrap();
    let mut metrics = Aggregator::new(MetricsConfig::default());
    let run = train_vocab(&loader, &device, &mut metrics, usize::MAX, data.vocab);
    assert_eq!(run.losses.len(), 30);
    let mean = |l: &[f32]| l.iter().sum::<f32>() / l.len() as f32;
    let (first, last) = (mean(&run.losses[..5]), mean(&run.losses[25..]));
    assert!(
        last < 0.85 * first,
        "the loss fell from {first} to {last} only"
    );
}

#[test]
fn a_resumed_training_run_sees_the_same_batches_and_loss_counts() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex().autodiff();
    let config = train_config(dir.path(), 12);
    let fresh = |m: &mut Aggregator| {
        *m = Aggregator::new(MetricsConfig::default());
    };

    let whole = BurnLoader::new(config.clone(), 0, 1, &device, |b| b).unwrap();
    let mut metrics = Aggregator::default();
    fresh(&mut metrics);
    let full = train(&whole, &device, &mut metrics, usize::MAX);

    // Train 5 steps, checkpoint (loader state and loss totals, through JSON), resume.
    let first = BurnLoader::new(config.clone(), 0, 1, &device, |b| b).unwrap();
    fresh(&mut metrics);
    let head = train(&first, &device, &mut metrics, 5);
    let state = serde_json::to_string(&first.state().unwrap()).unwrap();
    let losses = serde_json::to_string(&metrics.state()).unwrap();

    let state = serde_json::from_str(&state).unwrap();
    let mut metrics = Aggregator::from_state(serde_json::from_str(&losses).unwrap());
    let second = BurnLoader::new(config, 0, 1, &device, |b| b)
        .unwrap()
        .resume(Some(state));
    let tail = train(&second, &device, &mut metrics, usize::MAX);

    assert_eq!(head.ids.len() + tail.ids.len(), 12);
    assert_eq!(
        [head.ids, tail.ids].concat(),
        full.ids,
        "the batches continue exactly"
    );
    // The loss values depend on the model; what was counted, and where, does not.
    let (a, b) = (full.metrics.report(), tail.metrics.report());
    for d in ["web", "code", "books"] {
        for m in ["loss_samples", "loss_tokens"] {
            assert_eq!(a.number(d, m), b.number(d, m), "{d} {m}");
        }
        let count = |r: &shardflow::metrics::Report| match r.get(d, "loss") {
            Some(shardflow::metrics::ReportValue::Stats(s)) => s["count"],
            other => panic!("{d}: {other:?}"),
        };
        assert_eq!(count(&a), count(&b), "{d} loss count");
    }
    // And the data metrics the loader carried through its state agree as well.
    let data = |l: &BurnLoader<BurnBatch>| {
        Aggregator::from_state(l.state().unwrap().metrics.unwrap()).report()
    };
    assert_eq!(data(&whole).flat(), data(&second).flat());
}

/// Burn's NdArray device (deprecated in Burn 0.22 in favour of Flex, still shipped, and the one
/// CPU device whose int dtype is i64).
#[allow(deprecated)]
fn ndarray() -> Device {
    Device::ndarray()
}
