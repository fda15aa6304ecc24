//! `shardflow bench --device null`: the device sinks' host-side staging timed beside the host
//! sink in one run, so that the CPU cost of feeding a GPU is measured without one.
#![cfg(all(feature = "cli", any(feature = "wgpu", feature = "cuda")))]

mod common;

use common::cmd::ok;

/// A small generated corpus, a short run: the figures, not their values, are what is checked.
const ARGS: [&str; 12] = [
    "bench",
    "--tokens",
    "200000",
    "--batches",
    "20",
    "--rounds",
    "1",
    "--workers",
    "1",
    "--roofline-mib",
    "1",
    "--device",
];

#[test]
fn bench_on_the_null_device_reports_cpu_per_real_token_beside_the_host_sink() {
    let out = ok(&[&ARGS[..], &["null"]].concat());
    // "CPU ns/real token       0.54 null sink, 0.72 host sink (same batches)"
    let line = out
        .lines()
        .find(|l| l.contains("null sink,"))
        .unwrap_or_else(|| panic!("no null sink line: {out}"));
    let figures: Vec<f64> = line
        .split([' ', ','])
        .filter_map(|w| w.parse::<f64>().ok())
        .collect();
    assert_eq!(figures.len(), 2, "{line}");
    assert!(figures.iter().all(|f| f.is_finite() && *f > 0.0), "{line}");
    assert!(line.ends_with("host sink (same batches)"), "{line}");
    assert!(
        out.contains("batches/s on null (host sink"),
        "the sink's rate beside the host's: {out}"
    );
    assert!(
        out.contains(", 0 buffers created"),
        "nothing reaches a device: {out}"
    );

    // The same figures in JSON, under `device`.
    let json = ok(&[&ARGS[..], &["null", "--json"]].concat());
    let r: serde_json::Value = serde_json::from_str(&json).unwrap();
    let d = &r["device"];
    assert_eq!(d["adapter"], "null", "{d}");
    for key in ["cpu_ns_per_real_token", "host_cpu_ns_per_real_token"] {
        assert!(d[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {d}");
    }
    // Ragged staging sends only real tokens: fewer bytes than a padded batch.
    let (ragged, padded) = (
        d["bytes_per_batch"].as_f64().unwrap(),
        d["padded_bytes_per_batch"].as_f64().unwrap(),
    );
    assert!(0.0 < ragged && ragged < padded, "{d}");
}
