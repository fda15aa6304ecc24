//! The metrics history: rows round-trip exactly through parts and the merged file, a killed
//! writer leaves whole readable parts and a resumed one writes no step twice, the buffer stays
//! bounded over a million rows, and the summary and `--top` match values computed from the rows.
#![cfg(feature = "history")]

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use shardflow::history::{
    HistoryConfig, HistoryFiles, HistoryWriter, Recorder, SampleOf, SampleRow, SampleStatus,
    StepRow, compact, read_samples, read_steps, summarize,
};
use shardflow::metrics::{Aggregator, Kind};

/// A report of a few metrics whose values depend on `step`.
fn report(step: u64) -> shardflow::metrics::Report {
    let mut agg = Aggregator::default();
    for i in 0..5 {
        let v = (step * 5 + i) as f64 * 0.25 - 3.0;
        agg.record("wéb", "loss", Kind::Distribution, v).unwrap();
        agg.record("wéb", "tokens", Kind::Sum, i as f64).unwrap();
        agg.record("code", "epoch", Kind::Max, step as f64).unwrap();
        agg.record_category(
            "code",
            "lang",
            ["en", "de", "日本"][((i + step) % 3) as usize],
        )
        .unwrap();
    }
    agg.report()
}

/// Writes `steps` steps of `per_step` samples each (every 7th failed, every 11th skipped).
fn write_run(w: &mut HistoryWriter, steps: std::ops::Range<u64>, per_step: u64) {
    for step in steps {
        w.record_report(step, None, &report(step)).unwrap();
        for s in 0..per_step {
            let sample = step * per_step + s;
            let of = SampleOf {
                dataset: if s % 2 == 0 { "wéb" } else { "code" },
                sample,
                epoch: step / 10,
            };
            let (value, status) = match sample {
                x if x % 7 == 0 => (Some(f64::NAN), SampleStatus::Ok),
                x if x % 11 == 0 => (Some(1.0), SampleStatus::Skipped),
                x => (Some((x * 37 % 101) as f64 / 10.0), SampleStatus::Ok),
            };
            w.record_sample(step, &of, "loss", value, status).unwrap();
        }
    }
}

fn config(dir: &Path, max_rows: usize) -> HistoryConfig {
    HistoryConfig {
        max_rows,
        ..HistoryConfig::new(dir, "run-α", 0)
    }
}

#[test]
fn every_row_round_trips_through_the_parts_and_the_merged_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = HistoryWriter::create(config(dir.path(), 37)).unwrap();
    write_run(&mut w, 0..20, 9);
    // A second rank's rows beside rank 0's.
    let mut other = HistoryWriter::create(HistoryConfig {
        rank: 1,
        ..config(dir.path(), 37)
    })
    .unwrap();
    write_run(&mut other, 0..3, 2);
    other.flush().unwrap();
    let compacted = w.finish().unwrap();
    let steps = read_steps(dir.path(), HistoryFiles::Parts).unwrap();
    let samples = read_samples(dir.path(), HistoryFiles::Parts).unwrap();
    assert_eq!(compacted.steps_rows, steps.len() as u64);
    assert_eq!(compacted.samples_rows, samples.len() as u64);
    assert_eq!(samples.len(), 20 * 9 + 3 * 2);

    // The steps table holds every value of every report, once.
    let mut want: Vec<(u64, String, String, String, u64)> = Vec::new();
    for step in 0..20 {
        for (d, metrics) in report(step).datasets {
            for (m, v) in metrics {
                let stats: Vec<(String, f64)> = match v {
                    shardflow::metrics::ReportValue::Number(x) => vec![("value".into(), x)],
                    shardflow::metrics::ReportValue::Stats(s) => s.into_iter().collect(),
                    shardflow::metrics::ReportValue::Counts(c) => {
                        c.into_iter().map(|(k, n)| (k, n as f64)).collect()
                    }
                };
                for (s, x) in stats {
                    want.push((step, d.clone(), m.clone(), s, x.to_bits()));
                }
            }
        }
    }
    let got: Vec<(u64, String, String, String, u64)> = steps
        .iter()
        .filter(|r| r.rank == "all" && r.run == "run-α")
        .take(want.len())
        .map(|r| {
            (
                r.step,
                r.dataset.clone(),
                r.metric.clone(),
                r.stat.clone(),
                r.value.to_bits(),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert!(steps.iter().all(|r| r.wall_time_ms > 1_600_000_000_000));

    // Samples: statuses kept, failed and skipped rows with null values, strings intact.
    let rank0: Vec<&SampleRow> = samples.iter().filter(|r| r.rank == 0).collect();
    for r in &rank0 {
        let x = r.sample;
        match r.status {
            SampleStatus::Failed => assert!(x % 7 == 0 && r.value.is_none(), "{r:?}"),
            SampleStatus::Skipped => assert!(x % 11 == 0 && r.value.is_none(), "{r:?}"),
            SampleStatus::Ok => assert_eq!(r.value, Some((x * 37 % 101) as f64 / 10.0)),
        }
        assert_eq!(r.dataset, if (x % 9) % 2 == 0 { "wéb" } else { "code" });
        assert_eq!((r.step, r.epoch, r.name.as_str()), (x / 9, x / 90, "loss"));
    }
    assert_eq!(rank0.len(), 180);

    // The merged files hold the same rows.
    assert_eq!(read_steps(dir.path(), HistoryFiles::Merged).unwrap(), steps);
    assert_eq!(
        read_samples(dir.path(), HistoryFiles::Merged).unwrap(),
        samples
    );
}

#[test]
fn a_new_history_refuses_a_directory_holding_its_ranks_parts() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = HistoryWriter::create(config(dir.path(), 10)).unwrap();
    write_run(&mut w, 0..2, 3);
    w.flush().unwrap();
    let e = HistoryWriter::create(config(dir.path(), 10)).unwrap_err();
    assert!(e.to_string().contains("resume from a checkpoint"), "{e}");
    // Another rank may start beside it.
    HistoryWriter::create(HistoryConfig {
        rank: 3,
        ..config(dir.path(), 10)
    })
    .unwrap();
}

/// Run by the crash test in a child process: writes steps until killed.
#[test]
#[ignore = "a helper run by another test"]
fn history_writer_child() {
    let Ok(dir) = std::env::var("SHARDFLOW_HISTORY_DIR") else {
        return;
    };
    let mut w = HistoryWriter::create(config(Path::new(&dir), 300)).unwrap();
    for step in 0..1_000_000 {
        write_run(&mut w, step..step + 1, 40);
    }
}

fn part_count(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("samples"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
            })
            .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_killed_writer_leaves_whole_parts_and_the_resumed_run_writes_no_step_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "history_writer_child",
            "--ignored",
            "--nocapture",
        ])
        .env("SHARDFLOW_HISTORY_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while part_count(dir.path()) < 8 {
        assert!(start.elapsed().as_secs() < 120, "the child wrote no parts");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // Every part is whole and readable; rows are what the child wrote.
    let steps = read_steps(dir.path(), HistoryFiles::Parts).unwrap();
    let samples = read_samples(dir.path(), HistoryFiles::Parts).unwrap();
    assert!(samples.len() >= 8 * 300, "{} samples", samples.len());
    let last = samples.iter().map(|r| r.step).max().unwrap();
    for r in &samples {
        assert_eq!(r.step, r.sample / 40, "{r:?}");
    }

    // Resume from a checkpoint at `at`: later rows go, earlier ones stay, and the run goes on.
    let at = last / 2;
    let before: Vec<StepRow> = steps.iter().filter(|r| r.step <= at).cloned().collect();
    let mut w = HistoryWriter::resume(config(dir.path(), 300), Some(at)).unwrap();
    write_run(&mut w, at + 1..last + 5, 40);
    w.flush().unwrap();
    let steps = read_steps(dir.path(), HistoryFiles::Parts).unwrap();
    let samples = read_samples(dir.path(), HistoryFiles::Parts).unwrap();
    let kept: Vec<StepRow> = steps.iter().filter(|r| r.step <= at).cloned().collect();
    assert_eq!(kept, before, "rows up to the checkpoint are untouched");
    let mut seen = HashSet::new();
    for r in &steps {
        assert!(
            seen.insert((r.step, r.dataset.clone(), r.metric.clone(), r.stat.clone())),
            "step {} written twice: {r:?}",
            r.step
        );
    }
    let mut seen = HashSet::new();
    for r in &samples {
        assert!(seen.insert(r.sample), "sample {} written twice", r.sample);
    }
    // Every step after the checkpoint is there, exactly once per sample.
    assert_eq!(
        samples.iter().filter(|r| r.step > at).count() as u64,
        (last + 5 - (at + 1)) * 40
    );
}

#[test]
fn the_buffer_stays_bounded_over_a_million_rows() {
    let dir = tempfile::tempdir().unwrap();
    let max_rows = 4096;
    let mut w = HistoryWriter::create(config(dir.path(), max_rows)).unwrap();
    // The buffer's bytes: at most max_rows rows of samples (a few distinct strings) and as
    // many of steps.
    let limit = 2 * max_rows * 64 + 4096;
    let mut largest = 0;
    let names = ["wéb".to_string(), "code".to_string()];
    for step in 0..1_000_000u64 / 64 {
        let docs: Vec<shardflow::collate::DocRef> = (0..64)
            .map(|i| shardflow::collate::DocRef {
                dataset: (i % 2) as u32,
                sample: step * 64 + i,
                len: 1,
                ..Default::default()
            })
            .collect();
        let values: Vec<f64> = (0..64).map(|i| (step + i) as f64).collect();
        w.record_batch_values(step, &docs, &names, "loss", &values)
            .unwrap();
        largest = largest.max(w.buffered_bytes());
        assert!(w.buffered_rows() <= 2 * max_rows);
    }
    assert!(
        largest <= limit,
        "buffered {largest} bytes, over the {limit} limit"
    );
    w.flush().unwrap();
    assert_eq!(w.buffered_bytes(), 0);
    assert_eq!(part_count(dir.path()), 1_000_000usize.div_ceil(max_rows));
    let summary = summarize(dir.path(), HistoryFiles::Parts, None).unwrap();
    assert_eq!(summary.samples, 1_000_000);
}

#[test]
fn the_summary_and_top_match_values_computed_from_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = HistoryWriter::create(config(dir.path(), 50)).unwrap();
    write_run(&mut w, 0..30, 13);
    w.finish().unwrap();
    let steps = read_steps(dir.path(), HistoryFiles::Parts).unwrap();
    let samples = read_samples(dir.path(), HistoryFiles::Parts).unwrap();
    for source in [HistoryFiles::Parts, HistoryFiles::Merged] {
        let s = summarize(dir.path(), source, Some((5, "loss"))).unwrap();
        assert_eq!(s.steps, 30);
        assert_eq!(s.step_rows, steps.len() as u64);
        assert_eq!(s.samples, samples.len() as u64);
        let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
        for r in &samples {
            let name = serde_json::to_value(r.status).unwrap();
            *statuses
                .entry(name.as_str().unwrap().to_string())
                .or_default() += 1;
        }
        assert_eq!(s.statuses, statuses);
        for series in &s.series {
            let rows: Vec<&StepRow> = steps
                .iter()
                .filter(|r| {
                    (&r.rank, &r.dataset, &r.metric, &r.stat)
                        == (&series.rank, &series.dataset, &series.metric, &series.stat)
                })
                .collect();
            let values: Vec<f64> = rows.iter().map(|r| r.value).collect();
            let last = rows.iter().max_by_key(|r| r.step).unwrap();
            assert_eq!(series.count, rows.len() as u64);
            assert_eq!((series.last_step, series.last), (last.step, last.value));
            assert_eq!(
                series.min,
                values.iter().copied().fold(f64::INFINITY, f64::min)
            );
            assert_eq!(
                series.max,
                values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
            );
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            assert!((series.mean - mean).abs() <= 1e-12 * mean.abs().max(1.0));
        }
        assert!(
            s.series
                .iter()
                .any(|x| x.metric == "lang" && x.stat == "日本")
        );
        // The top 5 by loss: the highest ok values, earliest first among equals.
        let mut ok: Vec<&SampleRow> = samples
            .iter()
            .filter(|r| r.status == SampleStatus::Ok)
            .collect();
        ok.sort_by(|a, b| b.value.unwrap().total_cmp(&a.value.unwrap()));
        let want: Vec<SampleRow> = ok.into_iter().take(5).cloned().collect();
        assert_eq!(s.top, want);
    }
}

#[test]
fn a_part_of_another_table_or_not_parquet_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = HistoryWriter::create(config(dir.path(), 10)).unwrap();
    write_run(&mut w, 0..2, 3);
    w.flush().unwrap();
    let bad = dir
        .path()
        .join("steps")
        .join("r00009-00000000-s0-0.parquet");
    std::fs::write(&bad, b"not parquet at all").unwrap();
    let e = read_steps(dir.path(), HistoryFiles::Parts).unwrap_err();
    assert!(
        e.to_string().contains("r00009-00000000-s0-0.parquet"),
        "{e}"
    );
    std::fs::remove_file(&bad).unwrap();
    // A samples part among the steps.
    let sample_part = std::fs::read_dir(dir.path().join("samples"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(&sample_part, &bad).unwrap();
    let e = read_steps(dir.path(), HistoryFiles::Parts).unwrap_err();
    assert!(e.to_string().contains("not the steps table's"), "{e}");
    // Without the stray file the parts compact again.
    std::fs::remove_file(&bad).unwrap();
    let c = compact(dir.path()).unwrap();
    let parts = std::fs::read_dir(dir.path().join("steps")).unwrap().count();
    assert_eq!(c.steps_parts, parts);
    assert_eq!(
        c.steps_rows,
        read_steps(dir.path(), HistoryFiles::Parts).unwrap().len() as u64
    );
}

mod common;

/// (step, rank, dataset, metric, stat, value bits) of every steps row, sorted.
fn step_keys(dir: &Path) -> Vec<(u64, String, String, String, String, u64)> {
    let mut keys: Vec<_> = read_steps(dir, HistoryFiles::Parts)
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
    keys.sort();
    keys
}

/// Takes the loader's next batch and hands the recorder what it records after a batch (this
/// rank's own metrics: no collective).
fn next_recorded(loader: &mut shardflow::loader::Loader<i32>, recorder: &mut Recorder) {
    loader.next().unwrap().unwrap();
    let skipped = loader.skipped().to_vec();
    let step = loader.step();
    recorder
        .after_batch(step, &skipped, loader.metrics_mut(), None)
        .unwrap();
}

#[test]
fn a_loader_writes_its_metrics_every_k_steps_and_a_resumed_one_continues_without_repeats() {
    use shardflow::loader::{LoaderBuilder, LoaderState, Source as Data};
    use shardflow::order::{OrderConfig, Shuffle};
    let data = tempfile::tempdir().unwrap();
    let sources = common::mixture(data.path());
    let builder = |sources: &[Data]| {
        LoaderBuilder::<i32>::new(sources.to_vec())
            .with_order(OrderConfig {
                seed: 5,
                shuffle: Shuffle::Full,
                local_batch: 4,
                ..Default::default()
            })
            .with_workers(2)
    };
    let history = |dir: &Path| HistoryConfig::new(dir, "run", 0);
    let names = builder(&sources)
        .build_host()
        .unwrap()
        .plan()
        .names()
        .to_vec();
    // The uninterrupted run: 20 steps.
    let whole = tempfile::tempdir().unwrap();
    let mut loader = builder(&sources).build_host().unwrap();
    let mut recorder = Recorder::create(history(whole.path()), 2, &names).unwrap();
    for _ in 0..20 {
        next_recorded(&mut loader, &mut recorder);
    }
    drop(recorder);
    let want = step_keys(whole.path());
    let steps: HashSet<u64> = want.iter().map(|k| k.0).collect();
    assert_eq!(steps, (1..=10).map(|k| 2 * k).collect());
    assert!(want.iter().all(|k| k.1 == "0"));
    assert!(want.iter().any(|k| k.3 == "tokens_seen"));

    // A run checkpointed at step 9, going on to step 15 before it dies, then resumed.
    let dir = tempfile::tempdir().unwrap();
    let mut loader = builder(&sources).build_host().unwrap();
    let mut recorder = Recorder::create(history(dir.path()), 2, &names).unwrap();
    for _ in 0..9 {
        next_recorded(&mut loader, &mut recorder);
    }
    let mut state = loader.state();
    state.history_step = recorder.checkpoint().unwrap();
    let json = serde_json::to_vec(&state).unwrap();
    for _ in 9..15 {
        next_recorded(&mut loader, &mut recorder);
    }
    drop(recorder);
    drop(loader);
    let state = LoaderState::from_json(&json).unwrap();
    assert_eq!(state.history_step, Some(8));
    let last_step = state.history_step;
    let mut resumed = builder(&sources).resume(state).build_host().unwrap();
    let mut recorder = Recorder::resume(history(dir.path()), 2, &names, last_step).unwrap();
    for _ in 9..20 {
        next_recorded(&mut resumed, &mut recorder);
    }
    drop(recorder);
    assert_eq!(
        step_keys(dir.path()),
        want,
        "the resumed history is the whole run's"
    );

    // A fresh recorder refuses the directory; the error says what to do.
    let e = Recorder::create(history(dir.path()), 2, &names).unwrap_err();
    assert!(e.to_string().contains("resume from a checkpoint"), "{e}");
}

#[test]
fn the_recorder_writes_each_skipped_sample_at_its_step_with_status_skipped() {
    use shardflow::loader::{LoaderBuilder, Source as Data};
    use shardflow::order::{OrderConfig, Shuffle, StreamLimit};
    use shardflow::transform::{BadSamplePolicy, TransformConfig};
    let data = tempfile::tempdir().unwrap();
    let d = common::write_dataset(data.path(), "d", 0, &[3, 4, 5, 6, 7, 8]);
    let mut loader = LoaderBuilder::<i32>::new(vec![Data::new("d", d, 1.0)])
        .with_order(OrderConfig {
            shuffle: Shuffle::None,
            local_batch: 2,
            limit: StreamLimit::Epochs(1.0),
            ..Default::default()
        })
        .with_transform(TransformConfig {
            bad_samples: BadSamplePolicy::Skip { max_per_epoch: 9 },
            ..Default::default()
        })
        .with_user_transform(|info, _| match info.sample {
            1 | 4 => Err("bad".into()),
            _ => Ok(()),
        })
        .with_workers(1)
        .build_host()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let names = loader.plan().names().to_vec();
    let mut recorder =
        Recorder::create(HistoryConfig::new(dir.path(), "skips", 0), 10, &names).unwrap();
    for _ in 0..3 {
        next_recorded(&mut loader, &mut recorder);
    }
    assert!(loader.next().is_none());
    assert_eq!(recorder.checkpoint().unwrap(), Some(3));
    let rows: Vec<(u64, String, u64, String, Option<f64>, SampleStatus)> =
        read_samples(dir.path(), HistoryFiles::Parts)
            .unwrap()
            .into_iter()
            .map(|r| (r.step, r.dataset, r.sample, r.name, r.value, r.status))
            .collect();
    let skipped = |step, sample| {
        let d = "d".to_string();
        (
            step,
            d,
            sample,
            "skip".to_string(),
            None,
            SampleStatus::Skipped,
        )
    };
    assert_eq!(rows, vec![skipped(1, 1), skipped(3, 4)]);
    // No reporting step was reached: no metrics rows.
    assert!(
        read_steps(dir.path(), HistoryFiles::Parts)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn ranks_reduce_their_metrics_and_rank_0_writes_them_as_all() {
    use shardflow::collective::{Collective, in_process};
    use shardflow::loader::LoaderBuilder;
    use shardflow::order::OrderConfig;
    let data = tempfile::tempdir().unwrap();
    let sources = common::mixture(data.path());
    let dir = tempfile::tempdir().unwrap();
    let world = in_process(2, std::time::Duration::from_secs(20));
    let own: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = world
            .into_iter()
            .map(|c| {
                let (sources, dir) = (sources.clone(), dir.path());
                s.spawn(move || {
                    let rank = c.rank();
                    let mut loader = LoaderBuilder::<i32>::new(sources)
                        .with_order(OrderConfig {
                            local_batch: 4,
                            rank,
                            world: 2,
                            ..Default::default()
                        })
                        .build_host()
                        .unwrap();
                    let config = HistoryConfig::new(dir, "ddp", rank);
                    let names = loader.plan().names().to_vec();
                    let mut recorder = Recorder::create(config, 3, &names).unwrap();
                    for _ in 0..6 {
                        loader.next().unwrap().unwrap();
                        // Every rank after every batch: the reduce is a collective.
                        let step = loader.step();
                        let skipped = loader.skipped().to_vec();
                        recorder
                            .after_batch(step, &skipped, loader.metrics_mut(), Some(&c))
                            .unwrap();
                    }
                    drop(recorder);
                    loader
                        .metrics()
                        .report()
                        .number("web", "tokens_seen")
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let rows = read_steps(dir.path(), HistoryFiles::Parts).unwrap();
    assert!(
        rows.iter().all(|r| r.rank == "all" && r.run == "ddp"),
        "rank 0 alone writes"
    );
    let tokens = |step: u64| {
        rows.iter()
            .find(|r| r.step == step && r.dataset == "web" && r.metric == "tokens_seen")
            .unwrap()
            .value
    };
    assert_eq!(tokens(6), own[0] + own[1]);
    assert!(tokens(3) < tokens(6));
}

#[cfg(feature = "cli")]
#[test]
fn the_history_command_summarizes_compacts_and_names_a_missing_directory() {
    use common::cmd::{ok, p, run};
    let dir = tempfile::tempdir().unwrap();
    let mut w = HistoryWriter::create(config(dir.path(), 40)).unwrap();
    write_run(&mut w, 0..12, 7);
    w.flush().unwrap();
    let json = ok(&[
        "history",
        p(dir.path()),
        "--top",
        "4",
        "--by",
        "loss",
        "--json",
    ]);
    let got: serde_json::Value = serde_json::from_str(&json).unwrap();
    // Both sides through JSON text (serde_json's float parsing may differ from the value in the
    // last bit).
    let want: serde_json::Value = serde_json::from_str(
        &serde_json::to_string(
            &summarize(dir.path(), HistoryFiles::Parts, Some((4, "loss"))).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(got, want);
    assert_eq!(got["top"].as_array().unwrap().len(), 4);
    assert_eq!(got["samples"], 84);
    let text = ok(&["history", p(dir.path()), "--top", "2"]);
    assert!(text.contains("12 steps"), "{text}");
    assert!(text.contains("top 2 samples by loss"), "{text}");
    let compacted = ok(&["history", "compact", p(dir.path())]);
    assert!(compacted.contains("84 samples rows"), "{compacted}");
    assert_eq!(
        read_samples(dir.path(), HistoryFiles::Merged).unwrap(),
        read_samples(dir.path(), HistoryFiles::Parts).unwrap()
    );
    let merged = ok(&["history", p(dir.path()), "--merged", "--json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&merged).unwrap()["samples"],
        84
    );
    let missing = dir.path().join("nope");
    let out = run(&["history", p(&missing)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nope") && err.contains("directory not found"),
        "{err}"
    );
}

#[cfg(feature = "cli")]
#[test]
fn the_history_command_refuses_a_directory_that_is_not_a_history_saying_what_it_expected() {
    use common::cmd::{p, run};
    let fails = |args: &[&str]| {
        let out = run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let none = "not a metrics history: it holds no steps/ or samples/ directory of part files";
    let root = tempfile::tempdir().unwrap();
    let history = root.path().join("run");
    let mut w = HistoryWriter::create(config(&history, 40)).unwrap();
    write_run(&mut w, 0..3, 4);
    w.flush().unwrap();
    // Its parent, naming the history inside.
    assert_eq!(
        fails(&["history", p(root.path())]),
        format!(
            "error: history {}: {none}; histories inside it: {}\n",
            root.path().display(),
            history.display()
        )
    );
    // One of its tables, naming the history.
    let steps = history.join("steps");
    assert_eq!(
        fails(&["history", p(&steps)]),
        format!(
            "error: history {}: {none}; it is the steps table of the history {}: give that \
             directory\n",
            steps.display(),
            history.display()
        )
    );
    // An empty directory, and `/`.
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_eq!(
        fails(&["history", p(&empty)]),
        format!("error: history {}: {none}\n", empty.display())
    );
    assert!(
        fails(&["history", "/"]).starts_with(&format!("error: history /: {none}")),
        "/"
    );
    // Compaction refuses it too, and writes nothing there.
    assert_eq!(
        fails(&["history", "compact", p(&empty)]),
        format!("error: history {}: {none}\n", empty.display())
    );
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    // The merged files only: read them with --merged.
    let merged = root.path().join("merged");
    std::fs::create_dir(&merged).unwrap();
    compact(&history).unwrap();
    for table in ["steps", "samples"] {
        let name = format!("{table}.parquet");
        std::fs::copy(history.join(&name), merged.join(&name)).unwrap();
    }
    assert_eq!(
        fails(&["history", p(&merged)]),
        format!(
            "error: history {}: {none}; it holds merged files only: read them with --merged\n",
            merged.display()
        )
    );
    let text = common::cmd::ok(&["history", p(&merged), "--merged"]);
    assert!(text.contains(": 3 steps"), "{text}");
    // --merged where there are parts only.
    for table in ["steps", "samples"] {
        std::fs::remove_file(history.join(format!("{table}.parquet"))).unwrap();
    }
    assert_eq!(
        fails(&["history", p(&history), "--merged"]),
        format!(
            "error: history {0}: holds no merged history (steps.parquet, samples.parquet); merge \
             its parts with `shardflow history compact {0}` or read them without --merged\n",
            history.display()
        )
    );
    // A history whose writer has not flushed yet is one: 0 steps.
    let fresh = root.path().join("fresh");
    let _w = HistoryWriter::create(config(&fresh, 40)).unwrap();
    let text = common::cmd::ok(&["history", p(&fresh)]);
    assert!(text.contains(": 0 steps (0 rows), 0 samples"), "{text}");
}

#[cfg(feature = "cli")]
#[test]
fn top_by_an_unknown_name_lists_the_names_the_history_holds() {
    use common::cmd::{p, run};
    let dir = tempfile::tempdir().unwrap();
    let mut w = HistoryWriter::create(config(dir.path(), 40)).unwrap();
    write_run(&mut w, 0..3, 4);
    let of = SampleOf {
        dataset: "code",
        sample: 1,
        epoch: 0,
    };
    w.record_sample(2, &of, "grad_norm", Some(0.5), SampleStatus::Ok)
        .unwrap();
    w.flush().unwrap();
    let out = run(&["history", p(dir.path()), "--top", "3", "--by", "los"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: history {}: no per-sample value is named \"los\"; the names it holds: \
             grad_norm, loss\n",
            dir.path().display()
        )
    );
    // With no per-sample values at all.
    let bare = tempfile::tempdir().unwrap();
    let mut w = HistoryWriter::create(config(bare.path(), 40)).unwrap();
    w.record_report(0, None, &report(0)).unwrap();
    w.flush().unwrap();
    let e = summarize(bare.path(), HistoryFiles::Parts, Some((3, "loss"))).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "history {}: no per-sample value is named \"loss\"; it holds no per-sample values",
            bare.path().display()
        )
    );
}

#[test]
fn compactions_at_once_all_succeed_with_every_row() {
    // Ranks finishing together, or `history compact` beside a run's `finish`: each compaction
    // writes both merged files, and none may fail or tear the other's.
    let dir = tempfile::tempdir().unwrap();
    let mut w = HistoryWriter::create(config(dir.path(), 3)).unwrap();
    write_run(&mut w, 0..6, 2);
    w.flush().unwrap();
    let want = read_samples(dir.path(), HistoryFiles::Parts).unwrap();
    let (threads, rounds) = (4, 30);
    let barrier = std::sync::Barrier::new(threads);
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    for round in 0..rounds {
                        barrier.wait();
                        let c =
                            compact(dir.path()).unwrap_or_else(|e| panic!("round {round}: {e}"));
                        assert_eq!(c.samples_rows, want.len() as u64);
                    }
                })
            })
            .collect();
        for r in runs {
            r.join().unwrap();
        }
    });
    assert_eq!(
        read_samples(dir.path(), HistoryFiles::Merged).unwrap(),
        want
    );
}

#[test]
fn a_compaction_waits_for_the_one_in_progress() {
    // Compactions take turns on DIR/.compact.lock: one started while another holds it writes
    // nothing until that one is done.
    let dir = tempfile::tempdir().unwrap();
    let mut w = HistoryWriter::create(config(dir.path(), 5)).unwrap();
    write_run(&mut w, 0..4, 3);
    w.flush().unwrap();
    let held = std::fs::File::create(dir.path().join(shardflow::history::COMPACT_LOCK)).unwrap();
    held.lock().unwrap();
    std::thread::scope(|s| {
        let second = s.spawn(|| compact(dir.path()));
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert!(!second.is_finished(), "it waits for the lock");
        assert!(!dir.path().join("samples.parquet").exists());
        drop(held);
        let c = second.join().unwrap().unwrap();
        assert_eq!(c.samples_rows, 12);
    });
    assert_eq!(
        read_samples(dir.path(), HistoryFiles::Merged).unwrap(),
        read_samples(dir.path(), HistoryFiles::Parts).unwrap()
    );
}

#[test]
fn a_reader_tolerates_parts_dropped_while_it_reads() {
    // A resumed writer drops the parts after its checkpoint and writes the steps again, over
    // and over; a reader meanwhile always succeeds, and always sees the rows up to the
    // checkpoint exactly once.
    let dir = tempfile::tempdir().unwrap();
    let mut w = HistoryWriter::create(config(dir.path(), 4)).unwrap();
    write_run(&mut w, 0..12, 4);
    w.flush().unwrap();
    drop(w);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let kept = |rows: &[SampleRow]| rows.iter().filter(|r| r.step <= 3).count();
    let want = kept(&read_samples(dir.path(), HistoryFiles::Parts).unwrap());
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            for _ in 0..60 {
                let mut w = HistoryWriter::resume(config(dir.path(), 4), Some(3)).unwrap();
                write_run(&mut w, 4..12, 4);
                w.flush().unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut reads = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let rows = read_samples(dir.path(), HistoryFiles::Parts)
                .unwrap_or_else(|e| panic!("read {reads}: {e}"));
            assert_eq!(kept(&rows), want, "read {reads}");
            summarize(dir.path(), HistoryFiles::Parts, Some((3, "loss")))
                .unwrap_or_else(|e| panic!("summary {reads}: {e}"));
            reads += 1;
        }
        writer.join().unwrap();
        assert!(reads > 0);
    });
}
