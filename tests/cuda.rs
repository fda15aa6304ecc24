//! The CUDA kernels through NVRTC: every kernel compiles to CUBIN for sm_80 and sm_90, and a
//! broken source names itself and carries NVRTC's log. Without libnvrtc the tests skip with the
//! reason, unless SHARDFLOW_REQUIRE_NVRTC=1 (CI), which makes them fail.
#![cfg(feature = "cuda")]

use shardflow::Error;
use shardflow::gpu::nvrtc::{Kernel, compile, nvrtc_present, nvrtc_version};

fn nvrtc() -> bool {
    if nvrtc_present() {
        return true;
    }
    let why = nvrtc_version().unwrap_err();
    if std::env::var("SHARDFLOW_REQUIRE_NVRTC").as_deref() == Ok("1") {
        panic!("SHARDFLOW_REQUIRE_NVRTC=1, but NVRTC cannot be loaded: {why}");
    }
    eprintln!("skipped: {why}");
    false
}

#[test]
fn every_kernel_compiles_to_cubin_for_sm_80_and_sm_90() {
    if !nvrtc() {
        return;
    }
    let (major, minor) = nvrtc_version().unwrap();
    assert!(major >= 12, "NVRTC {major}.{minor}");
    for kernel in Kernel::ALL {
        for arch in ["sm_80", "sm_90"] {
            let cubin = kernel.compile(arch).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                &cubin[..4],
                b"\x7fELF",
                "{kernel:?} for {arch} is a CUBIN (ELF)"
            );
            for f in kernel.functions() {
                let symbol = f.as_bytes();
                assert!(
                    cubin.windows(symbol.len()).any(|w| w == symbol),
                    "{kernel:?} for {arch} defines {f}"
                );
            }
        }
    }
}

#[test]
fn a_broken_kernel_names_itself_and_carries_the_log() {
    if !nvrtc() {
        return;
    }
    let source = "extern \"C\" __global__ void f(float* x) { x[0] = not_declared_anywhere; }";
    match compile("broken.cu", source, "sm_80") {
        Err(Error::Kernel { kernel, arch, log }) => {
            assert_eq!((kernel.as_str(), arch.as_str()), ("broken.cu", "sm_80"));
            assert!(log.contains("not_declared_anywhere"), "{log}");
        }
        other => panic!("{other:?}"),
    }
    // NVRTC has no standard headers: a kernel that includes one fails the same way.
    let err = compile("headers.cu", "#include <stdint.h>\n", "sm_90").unwrap_err();
    assert!(
        err.to_string()
            .contains("kernel headers.cu does not compile for sm_90"),
        "{err}"
    );
}

#[test]
fn without_a_driver_the_cuda_context_is_an_error_not_a_panic() {
    use shardflow::gpu::cuda::{
        CudaContext, cuda_present, device_count, nccl_present, nccl_version,
    };
    if cuda_present() {
        // A machine with a driver: the context comes up on this rank's device.
        let n = device_count().unwrap();
        match CudaContext::for_local_rank(0) {
            Ok(ctx) => {
                assert!(n > 0);
                assert!(!ctx.name().is_empty());
                assert!(ctx.arch().starts_with("sm_"), "{}", ctx.arch());
            }
            Err(e) => assert_eq!(n, 0, "{e}"),
        }
    } else {
        for err in [
            CudaContext::for_local_rank(0).unwrap_err(),
            CudaContext::new(3).unwrap_err(),
            device_count().unwrap_err(),
        ] {
            assert!(matches!(err, Error::Device { .. }), "{err}");
            assert!(err.to_string().contains("libcuda.so"), "{err}");
        }
    }
    if !nccl_present() {
        let err = nccl_version().unwrap_err();
        assert!(
            err.to_string().contains("libnccl.so was not found"),
            "{err}"
        );
    }
}

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
