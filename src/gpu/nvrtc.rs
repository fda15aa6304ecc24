//! The CUDA C kernels of `kernels/`, compiled at run time by NVRTC (feature `cuda`), so the crate
//! builds with no CUDA toolkit: `libnvrtc.so.12` is loaded when first needed (the PyPI wheel
//! `nvidia-cuda-nvrtc-cu12` provides it; put its `lib` directory on `LD_LIBRARY_PATH`).
//!
//! Kernels compile to CUBIN for a named architecture (`sm_80`, `sm_90`), which a driver older
//! than this NVRTC still loads (PTX of a newer NVRTC it may not: a driver that refuses the PTX
//! is an error naming the driver the PTX ISA needs, [`Image::ptx_isa`]). A failed compilation
//! is [`Error::Kernel`] naming the kernel, the architecture and NVRTC's log.

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

impl Image {
    /// The PTX ISA version a PTX image declares (its `.version` line), as (major, minor);
    /// `None` for CUBIN.
    pub fn ptx_isa(&self) -> Option<(u32, u32)> {
        ptx_isa(&self.data)
    }
}

/// The `.version major.minor` line of PTX text.
pub(crate) fn ptx_isa(ptx: &[u8]) -> Option<(u32, u32)> {
    if ptx.starts_with(b"\x7fELF") {
        return None;
    }
    let text = std::str::from_utf8(ptx.strip_suffix(b"\0").unwrap_or(ptx)).ok()?;
    let version = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(".version"))?;
    let (major, minor) = version.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.trim().parse().ok()?))
}

/// The driver a PTX ISA version needs: (the CUDA release that introduced it, the driver branch,
/// the oldest Linux driver of that release), from NVIDIA's PTX ISA and CUDA release notes.
const PTX_DRIVERS: [((u32, u32), &str, &str, &str); 19] = [
    ((7, 0), "11.0", "R450", "450.36.06"),
    ((7, 1), "11.1", "R455", "455.23"),
    ((7, 2), "11.2", "R460", "460.27.03"),
    ((7, 3), "11.3", "R465", "465.19.01"),
    ((7, 4), "11.4", "R470", "470.42.01"),
    ((7, 5), "11.5", "R495", "495.29.05"),
    ((7, 6), "11.6", "R510", "510.39.01"),
    ((7, 7), "11.7", "R515", "515.43.04"),
    ((7, 8), "11.8", "R520", "520.61.05"),
    ((8, 0), "12.0", "R525", "525.60.13"),
    ((8, 1), "12.1", "R530", "530.30.02"),
    ((8, 2), "12.2", "R535", "535.54.03"),
    ((8, 3), "12.3", "R545", "545.23.06"),
    ((8, 4), "12.4", "R550", "550.54.14"),
    ((8, 5), "12.5", "R555", "555.42.02"),
    ((8, 6), "12.6", "R560", "560.28.03"),
    ((8, 7), "12.8", "R570", "570.26"),
    ((8, 8), "12.9", "R575", "575.51.03"),
    ((9, 0), "13.0", "R580", "580.65.06"),
];

/// What to tell a user whose driver refused PTX of ISA `isa` (`CUDA_ERROR_UNSUPPORTED_PTX_VERSION`):
/// the driver it needs, what this driver supports (`cuDriverGetVersion`'s 1000 * major + 10 *
/// minor), and the way out.
pub(crate) fn ptx_driver_hint(isa: Option<(u32, u32)>, driver: Option<i32>) -> String {
    let has = match driver {
        Some(v) => format!(
            "this driver supports CUDA {}.{} at most",
            v / 1000,
            (v % 1000) / 10
        ),
        None => "this driver's CUDA version is unknown".to_string(),
    };
    let needs = match isa {
        Some(isa) => match PTX_DRIVERS.iter().find(|(v, ..)| *v == isa) {
            Some((_, cuda, branch, linux)) => format!(
                "the kernel is PTX ISA {}.{} (CUDA {cuda}), which needs an {branch} driver or \
                 newer ({linux} on Linux)",
                isa.0, isa.1
            ),
            None => format!(
                "the kernel is PTX ISA {}.{}, which needs a driver at least as new as the NVRTC \
                 that wrote it (PTX ISA 9.0 needs R580)",
                isa.0, isa.1
            ),
        },
        None => "the kernel's PTX declares no ISA version".to_string(),
    };
    let fix = match driver {
        Some(v) => format!(
            "update the driver, or use an NVRTC no newer than it (`pip install \
             'nvidia-cuda-nvrtc-cu12=={}.{}.*'`), or one that compiles CUBIN for this device",
            v / 1000,
            (v % 1000) / 10
        ),
        None => "update the driver, or use an NVRTC no newer than it".to_string(),
    };
    format!(
        "{needs}; {has}. NVRTC has no CUBIN target for this device, so it wrote PTX for the \
         driver to compile: {fix}"
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ptx_isa_version_names_the_driver_it_needs() {
        let ptx = b"//\n// Generated by NVIDIA NVVM Compiler\n\n.version 8.8\n.target sm_90\n\0";
        assert_eq!(ptx_isa(ptx), Some((8, 8)));
        assert_eq!(ptx_isa(b"\x7fELF\x02\x01"), None);
        assert_eq!(ptx_isa(b".target sm_90\n"), None);
        let hint = ptx_driver_hint(Some((8, 8)), Some(12040));
        assert!(hint.contains("PTX ISA 8.8 (CUDA 12.9)"), "{hint}");
        assert!(
            hint.contains("R575 driver or newer (575.51.03 on Linux)"),
            "{hint}"
        );
        assert!(
            hint.contains("this driver supports CUDA 12.4 at most"),
            "{hint}"
        );
        assert!(hint.contains("nvidia-cuda-nvrtc-cu12==12.4.*"), "{hint}");
        let hint = ptx_driver_hint(Some((9, 9)), None);
        assert!(
            hint.contains("PTX ISA 9.9, which needs a driver at least"),
            "{hint}"
        );
        // Every PTX ISA in the table comes with a newer driver than the one before it.
        for pair in PTX_DRIVERS.windows(2) {
            assert!(pair[0].0 < pair[1].0 && pair[0].2 < pair[1].2, "{pair:?}");
        }
    }
}
