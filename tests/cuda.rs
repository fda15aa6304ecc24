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
