//! The NCCL engine.
//!
//! - Discovery: libnccl is found where it is installed (`libnccl.so.2` from the PyPI wheel
//!   `nvidia-nccl-cu12` on `LD_LIBRARY_PATH`, or `SHARDFLOW_NCCL_LIB`) and reports its version
//!   without a GPU. Skipped without libnccl, failed instead under `SHARDFLOW_REQUIRE_NCCL=1`.
//! - Without libcuda: every constructor is an error naming the missing library, never a panic,
//!   and nothing is published in the store for other ranks to wait on.
//! - With GPUs (skipped elsewhere with the reason; failed instead under
//!   `SHARDFLOW_REQUIRE_CUDA=1`, or without libnccl under `SHARDFLOW_REQUIRE_NCCL=1`): every
//!   visible GPU is a rank,
//!   reducing like the host world; a rank that never joins fails the others within the
//!   deadline; a rank that stops calling fails the others within the deadline (two GPUs).
//!
//! The GPU tests take one lock, so that two never use the same GPUs at once. Their inputs are
//! small integers and quarters, whose sums are exact in any order: NCCL's ring order gives the
//! host's results bit for bit.
#![cfg(feature = "cuda")]

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use shardflow::Error;
use shardflow::collective::{
    Collective, FileStore, NcclCollective, NcclLibrary, ReduceOp, nccl_library,
};
use shardflow::gpu::cuda::{cuda_present, device_count, nccl_present, nccl_version};

use common::available;
use common::device_suite as suite;

/// Held by every test that runs NCCL on the GPUs.
static GPUS: Mutex<()> = Mutex::new(());

/// libnccl, or a printed reason to skip (a failure under `SHARDFLOW_REQUIRE_NCCL=1`).
fn nccl() -> Option<NcclLibrary> {
    available(
        "SHARDFLOW_REQUIRE_NCCL",
        "libnccl cannot be loaded",
        nccl_library(),
    )
}

/// The number of visible GPUs (at least one), or a printed reason to skip (a failure under
/// `SHARDFLOW_REQUIRE_CUDA=1`; `SHARDFLOW_REQUIRE_NCCL=1` alone requires the library, which CI
/// has without a GPU).
fn gpus() -> Option<usize> {
    let found = device_count().and_then(|n| {
        if n == 0 {
            Err(Error::CheckFailed(
                "the driver reports no CUDA device".into(),
            ))
        } else {
            Ok(n)
        }
    });
    available("SHARDFLOW_REQUIRE_CUDA", "NCCL needs a CUDA device", found)
}

/// libnccl and the GPUs, with the lock that keeps the GPU tests apart.
fn nccl_on_gpus() -> Option<(usize, std::sync::MutexGuard<'static, ()>)> {
    nccl()?;
    let n = gpus()?;
    Some((n, GPUS.lock().unwrap_or_else(|e| e.into_inner())))
}

fn deadline(secs: u64) -> NcclCollective {
    NcclCollective::new()
        .unwrap()
        .with_deadline(Duration::from_secs(secs))
}

#[test]
fn libnccl_is_found_where_it_is_installed_and_tells_its_version_without_a_gpu() {
    let Some(lib) = nccl() else {
        // Absent here: the version is an error saying where it was looked for.
        assert!(!nccl_present());
        let err = nccl_version().unwrap_err().to_string();
        assert!(err.contains("libnccl.so was not found"), "{err}");
        assert!(err.contains("libnccl.so.2"), "{err}");
        assert!(err.contains("SHARDFLOW_NCCL_LIB"), "{err}");
        return;
    };
    assert!(nccl_present());
    let file = lib.path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(file.starts_with("libnccl.so"), "{}", lib.path.display());
    assert!(lib.path.is_absolute(), "{}", lib.path.display());
    let parts: Vec<u32> = lib.version.split('.').map(|p| p.parse().unwrap()).collect();
    assert_eq!(parts.len(), 3, "{}", lib.version);
    assert!(parts[0] == 2 && parts[1] >= 14, "{}", lib.version);
    assert_eq!(nccl_version().unwrap(), lib.version);
    eprintln!("NCCL {} at {}", lib.version, lib.path.display());
}

#[test]
fn without_a_driver_every_constructor_is_an_error_naming_what_is_missing() {
    if cuda_present() {
        eprintln!("skipped (libcuda is present): the GPU tests below cover this machine");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path(), "nccl", 0, 1).unwrap();
    let nccl = deadline(5);
    let errors = [
        NcclCollective::unique_id().unwrap_err(),
        nccl.join(0, 0, 1, &[0; 128]).unwrap_err(),
        nccl.join_devices().unwrap_err(),
        nccl.join_store(&store, 0).unwrap_err(),
    ];
    for err in errors {
        assert!(matches!(err, Error::Device { .. }), "{err}");
        assert!(err.to_string().contains("libcuda.so"), "{err}");
    }
    // Nothing was published for other ranks to wait on.
    assert_eq!(store.get("nccl_id.0").unwrap(), None);
    assert_eq!(store.get("nccl_generation.0").unwrap(), None);
}

#[test]
fn nccl_over_every_visible_gpu_reduces_like_the_host() {
    let Some((n, _gpus)) = nccl_on_gpus() else {
        return;
    };
    let ranks = deadline(60).join_devices().unwrap();
    assert_eq!(ranks.len(), n);
    /// One rank's sums, minima and gathered bytes.
    type Seen = (Vec<f64>, Vec<u64>, Vec<Vec<u8>>, Vec<Vec<u8>>);
    let results: Vec<Seen> = std::thread::scope(|s| {
        let hs: Vec<_> = ranks
            .iter()
            .map(|c| {
                s.spawn(move || {
                    let r = c.rank();
                    let mut f = vec![r as f64, -(r as f64), 0.25];
                    c.all_reduce_f64(&mut f, ReduceOp::Sum).unwrap();
                    let mut u = vec![u64::MAX - r as u64, r as u64];
                    c.all_reduce_u64(&mut u, ReduceOp::Min).unwrap();
                    // Empty buffers make no NCCL call, on every rank alike.
                    c.all_reduce_f64(&mut [], ReduceOp::Max).unwrap();
                    let g = c.all_gather_bytes(&vec![r as u8; r + 1]).unwrap();
                    let empty = c.all_gather_bytes(&[]).unwrap();
                    c.barrier().unwrap();
                    (f, u, g, empty)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let tri = (n * (n - 1) / 2) as f64;
    for (f, u, g, empty) in results {
        assert_eq!(f, [tri, -tri, 0.25 * n as f64]);
        assert_eq!(u, [u64::MAX - (n as u64 - 1), 0]);
        for (r, bytes) in g.iter().enumerate() {
            assert_eq!(bytes, &vec![r as u8; r + 1]);
        }
        assert_eq!(empty, vec![Vec::<u8>::new(); n]);
    }
    let t = Instant::now();
    drop(ranks);
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}

#[test]
fn nccl_over_every_visible_gpu_gives_the_host_worlds_metric_report() {
    let Some((_, _gpus)) = nccl_on_gpus() else {
        return;
    };
    let ranks = deadline(60).join_devices().unwrap();
    suite::metric_reduce_equals_the_host(suite::boxed(ranks));
}

#[test]
fn a_rank_that_never_joins_fails_the_others_within_the_deadline() {
    let Some((_, _gpus)) = nccl_on_gpus() else {
        return;
    };
    // A world of two where rank 1 never starts: rank 0's initialization gives up.
    let id = NcclCollective::unique_id().unwrap();
    let t = Instant::now();
    let err = deadline(3).join(0, 0, 2, &id).unwrap_err();
    let took = t.elapsed();
    let text = err.to_string();
    let init = "ncclCommInitRankConfig";
    assert!(
        matches!(&err, Error::Collective { op, rank: Some(0), .. } if op == init),
        "{text}"
    );
    assert!(text.contains("deadline of 3.0 s"), "{text}");
    assert!(took < Duration::from_secs(8), "{took:?}");
}

#[test]
fn a_rank_that_stops_calling_fails_the_other_within_the_deadline() {
    let Some((n, _gpus)) = nccl_on_gpus() else {
        return;
    };
    if n < 2 {
        eprintln!("skipped: one GPU (NCCL needs a GPU per rank)");
        return;
    }
    let id = NcclCollective::unique_id().unwrap();
    let nccl = deadline(3);
    let ranks: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|r| {
                let id = &id;
                s.spawn(move || nccl.join(r, r, 2, id).unwrap())
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Both reduce once; then rank 1 stops calling.
    std::thread::scope(|s| {
        for c in &ranks {
            s.spawn(move || c.all_reduce_u64(&mut [1], ReduceOp::Sum).unwrap());
        }
    });
    let t = Instant::now();
    let err = ranks[0]
        .all_reduce_f64(&mut [1.0], ReduceOp::Sum)
        .unwrap_err();
    let took = t.elapsed();
    let text = err.to_string();
    assert!(
        matches!(&err, Error::Collective { op, rank: Some(0), .. } if op == "ncclAllReduce f64"),
        "{text}"
    );
    assert!(text.contains("aborted"), "{text}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    // Rank 0 is unusable now and says why; dropping both returns.
    let again = ranks[0].barrier().unwrap_err().to_string();
    assert!(again.contains("aborted earlier"), "{again}");
    let t = Instant::now();
    drop(ranks);
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
}
