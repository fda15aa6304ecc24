//! The NCCL engine. Without libcuda or libnccl: every constructor is an error naming the missing
//! library, never a panic. With GPUs (skipped elsewhere with the reason): every visible GPU is a
//! rank, reducing like the host world.
#![cfg(feature = "cuda")]

mod common;

use shardflow::Error;

use common::device_suite as suite;

#[test]
fn the_nccl_engine_without_a_driver_is_an_error_and_with_gpus_reduces_like_the_host() {
    use shardflow::collective::{Collective, FileStore, NcclCollective, ReduceOp};
    use shardflow::gpu::cuda::{cuda_present, nccl_present};
    if !(cuda_present() && nccl_present()) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path(), "nccl", 0, 1).unwrap();
        let errors = [
            NcclCollective::unique_id().unwrap_err(),
            NcclCollective::from_rank(0, 0, 1, &[0; 128]).err().unwrap(),
            NcclCollective::from_devices().err().unwrap(),
            NcclCollective::from_store(&store, 0).err().unwrap(),
        ];
        for err in errors {
            assert!(matches!(err, Error::Device { .. }), "{err}");
            let text = err.to_string();
            assert!(
                text.contains("libcuda.so") || text.contains("libnccl.so"),
                "{text}"
            );
        }
        // Nothing was published for other ranks to wait on.
        assert_eq!(store.get("nccl_id").unwrap(), None);
        return;
    }
    // A machine with GPUs: every visible GPU is a rank; sums, maxima and gathers as the host.
    let ranks = NcclCollective::from_devices().unwrap();
    let n = ranks.len();
    /// One rank's sums, minima and gathered bytes.
    type Seen = (Vec<f64>, Vec<u64>, Vec<Vec<u8>>);
    let results: Vec<Seen> = std::thread::scope(|s| {
        let hs: Vec<_> = ranks
            .iter()
            .map(|c| {
                s.spawn(move || {
                    let r = c.rank();
                    let mut f = vec![r as f64, -(r as f64)];
                    c.all_reduce_f64(&mut f, ReduceOp::Sum).unwrap();
                    let mut u = vec![u64::MAX - r as u64, r as u64];
                    c.all_reduce_u64(&mut u, ReduceOp::Min).unwrap();
                    let g = c.all_gather_bytes(&vec![r as u8; r + 1]).unwrap();
                    c.barrier().unwrap();
                    (f, u, g)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let tri = (n * (n - 1) / 2) as f64;
    for (f, u, g) in results {
        assert_eq!(f, [tri, -tri]);
        assert_eq!(u, [u64::MAX - (n as u64 - 1), 0]);
        for (r, bytes) in g.iter().enumerate() {
            assert_eq!(bytes, &vec![r as u8; r + 1]);
        }
    }
}

#[test]
fn nccl_over_every_visible_gpu_gives_the_host_worlds_metric_report() {
    use shardflow::collective::NcclCollective;
    use shardflow::gpu::cuda::{cuda_present, nccl_present};
    if !(cuda_present() && nccl_present()) {
        eprintln!("skipped: needs libcuda, libnccl and a GPU");
        return;
    }
    let ranks = NcclCollective::from_devices().unwrap();
    suite::metric_reduce_equals_the_host(suite::boxed(ranks));
}

#[test]
fn without_libnccl_its_version_is_an_error_naming_it() {
    use shardflow::gpu::cuda::{nccl_present, nccl_version};
    if !nccl_present() {
        let err = nccl_version().unwrap_err();
        assert!(
            err.to_string().contains("libnccl.so was not found"),
            "{err}"
        );
    }
}
