//! The CUDA C kernels of `kernels/`, compiled at run time by NVRTC (feature `cuda`), so the crate
//! builds with no CUDA toolkit: `libnvrtc.so.12` is loaded when first needed (the PyPI wheel
//! `nvidia-cuda-nvrtc-cu12` provides it; put its `lib` directory on `LD_LIBRARY_PATH`).
//!
//! Kernels compile to CUBIN for a named architecture (`sm_80`, `sm_90`), which a driver older
//! than this NVRTC still loads (PTX of a newer NVRTC it may not). A failed compilation is
//! [`Error::Kernel`] naming the kernel, the architecture and NVRTC's log.

use std::ffi::{CStr, c_char};
use std::sync::Arc;

use cudarc::nvrtc::{result, sys};

use crate::error::{Error, Result};

/// A kernel source of `kernels/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `kernels/pad_collate.cu`: ragged ids to every padded field.
    PadCollate,
    /// `kernels/sketch.cu`: device f32 values into the host's sketch buckets.
    Sketch,
}

impl Kernel {
    /// Every kernel.
    pub const ALL: [Kernel; 2] = [Kernel::PadCollate, Kernel::Sketch];

    /// The file name, as errors name it.
    pub fn file(self) -> &'static str {
        match self {
            Kernel::PadCollate => "pad_collate.cu",
            Kernel::Sketch => "sketch.cu",
        }
    }

    /// The CUDA C source.
    pub fn source(self) -> &'static str {
        match self {
            Kernel::PadCollate => include_str!("../../kernels/pad_collate.cu"),
            Kernel::Sketch => include_str!("../../kernels/sketch.cu"),
        }
    }

    /// The `extern "C"` entry points the source defines.
    pub fn functions(self) -> &'static [&'static str] {
        match self {
            Kernel::PadCollate => &["pad_collate"],
            Kernel::Sketch => &["sketch"],
        }
    }

    /// This kernel as CUBIN for `arch` (`sm_80`, `sm_90`, ...).
    ///
    /// # Errors
    ///
    /// As [`compile`].
    pub fn compile(self, arch: &str) -> Result<Vec<u8>> {
        compile(self.file(), self.source(), arch)
    }
}

/// Whether `libnvrtc` can be loaded (checked before any NVRTC call: cudarc panics otherwise).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the library by its candidate names.
    unsafe { sys::is_culib_present() }
}

fn missing() -> Error {
    Error::Device {
        device: "nvrtc".into(),
        op: "load libnvrtc".into(),
        reason: "libnvrtc.so.12 was not found: `pip install nvidia-cuda-nvrtc-cu12` and put its \
                 nvidia/cuda_nvrtc/lib directory on LD_LIBRARY_PATH"
            .into(),
    }
}

/// NVRTC's version, (major, minor).
///
/// # Errors
///
/// [`Error::Device`] when NVRTC cannot be loaded.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_present() {
        return Err(missing());
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; both pointers are valid out-parameters.
    let code = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    nvrtc_ok("nvrtcVersion", code)?;
    Ok((major, minor))
}

fn nvrtc_ok(call: &str, code: sys::nvrtcResult) -> Result<()> {
    code.result().map_err(|e| Error::Device {
        device: "nvrtc".into(),
        op: call.into(),
        reason: format!("{e:?}"),
    })
}

/// Compiles the CUDA C `source` (named `name` in errors) to CUBIN for `arch` (`sm_80`).
///
/// # Errors
///
/// [`Error::Device`] when NVRTC cannot be loaded or fails outside compilation;
/// [`Error::Kernel`] with NVRTC's log when the source does not compile.
pub fn compile(name: &str, source: &str, arch: &str) -> Result<Vec<u8>> {
    run(name, source, arch, Output::Cubin)
}

/// Compiles `source` to PTX for the virtual architecture `arch` (`compute_90`), NUL-terminated
/// as the driver loads it: for devices newer than this NVRTC, whose driver compiles the PTX.
///
/// # Errors
///
/// As [`compile`].
pub(crate) fn compile_ptx(name: &str, source: &str, arch: &str) -> Result<Vec<u8>> {
    run(name, source, arch, Output::Ptx)
}

/// What NVRTC hands out.
#[derive(Clone, Copy)]
enum Output {
    Cubin,
    Ptx,
}

fn run(name: &str, source: &str, arch: &str, output: Output) -> Result<Vec<u8>> {
    if !nvrtc_present() {
        return Err(missing());
    }
    let src = std::ffi::CString::new(source).map_err(|_| Error::Kernel {
        kernel: name.into(),
        arch: arch.into(),
        log: "the source holds a NUL byte".into(),
    })?;
    let cname = std::ffi::CString::new(name).expect("kernel names hold no NUL");
    let prog = result::create_program(&src, Some(&cname)).map_err(|e| Error::Device {
        device: "nvrtc".into(),
        op: format!("create the program {name}"),
        reason: format!("{e:?}"),
    })?;
    let options = [
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "--restrict".to_string(),
    ];
    // SAFETY: `prog` was created above and is destroyed once, below; the log and output buffers
    // are sized by NVRTC's own size queries before it writes them.
    unsafe {
        let compiled = result::compile_program(prog, &options);
        let out = match compiled {
            Err(e) => {
                let log = result::get_program_log(prog)
                    .map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned())
                    .unwrap_or_else(|_| format!("(no log: {e:?})"));
                Err(Error::Kernel {
                    kernel: name.into(),
                    arch: arch.into(),
                    log,
                })
            }
            Ok(()) => {
                let mut size = 0usize;
                let (size_call, code) = match output {
                    Output::Cubin => ("nvrtcGetCUBINSize", sys::nvrtcGetCUBINSize(prog, &mut size)),
                    Output::Ptx => ("nvrtcGetPTXSize", sys::nvrtcGetPTXSize(prog, &mut size)),
                };
                nvrtc_ok(size_call, code).and_then(|()| {
                    let mut image = vec![0u8; size];
                    let at = image.as_mut_ptr() as *mut c_char;
                    match output {
                        Output::Cubin => nvrtc_ok("nvrtcGetCUBIN", sys::nvrtcGetCUBIN(prog, at)),
                        Output::Ptx => nvrtc_ok("nvrtcGetPTX", sys::nvrtcGetPTX(prog, at)),
                    }
                    .map(|()| image)
                })
            }
        };
        let _ = result::destroy_program(prog);
        out
    }
}

/// The real architectures this NVRTC compiles CUBIN for, as numbers (80 for `sm_80`).
///
/// # Errors
///
/// [`Error::Device`] when NVRTC cannot be loaded.
pub fn supported_archs() -> Result<Vec<i32>> {
    if !nvrtc_present() {
        return Err(missing());
    }
    let mut n = 0;
    // SAFETY: the library is present; the buffer is sized by NVRTC's count.
    unsafe {
        nvrtc_ok(
            "nvrtcGetNumSupportedArchs",
            sys::nvrtcGetNumSupportedArchs(&mut n),
        )?;
        let mut archs = vec![0; n.max(0) as usize];
        nvrtc_ok(
            "nvrtcGetSupportedArchs",
            sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()),
        )?;
        Ok(archs)
    }
}

/// A kernel compiled for one device: CUBIN for its own architecture where this NVRTC knows it,
/// else PTX of the newest architecture below it (the driver compiles that for the device).
#[derive(Debug)]
pub struct Image {
    /// The kernel.
    pub kernel: Kernel,
    /// The architecture compiled for: `sm_90`, or `compute_90` for PTX.
    pub arch: String,
    /// CUBIN, or NUL-terminated PTX.
    pub data: Vec<u8>,
}

type ImageCache = std::sync::Mutex<std::collections::HashMap<(Kernel, i32), Arc<Image>>>;

/// `kernel` for a device of compute capability `capability`, compiled once per process and
/// architecture.
///
/// # Errors
///
/// [`Error::Device`] when NVRTC is missing or supports no architecture at or below the
/// device's; [`Error::Kernel`] when the kernel does not compile.
pub fn image(kernel: Kernel, capability: (i32, i32)) -> Result<Arc<Image>> {
    static CACHE: std::sync::OnceLock<ImageCache> = std::sync::OnceLock::new();
    let arch = capability.0 * 10 + capability.1;
    let cache = CACHE.get_or_init(Default::default);
    if let Some(image) = cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(kernel, arch))
    {
        return Ok(image.clone());
    }
    let supported = supported_archs()?;
    let (name, data) = if supported.contains(&arch) {
        let name = format!("sm_{arch}");
        let data = kernel.compile(&name)?;
        (name, data)
    } else {
        let Some(&below) = supported.iter().filter(|&&a| a <= arch).max() else {
            return Err(Error::Device {
                device: "nvrtc".into(),
                op: format!("compile {} for sm_{arch}", kernel.file()),
                reason: format!(
                    "this NVRTC compiles for {supported:?} only, nothing at or below the device's \
                     architecture"
                ),
            });
        };
        let name = format!("compute_{below}");
        let data = compile_ptx(kernel.file(), kernel.source(), &name)?;
        (name, data)
    };
    let image = Arc::new(Image {
        kernel,
        arch: name,
        data,
    });
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((kernel, arch), image.clone());
    Ok(image)
}
