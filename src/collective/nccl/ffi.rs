//! libnccl, loaded at run time: the dozen functions the engine calls, found where NCCL really
//! is. The one place of unsafe FFI for NCCL; [`super::comm`] wraps it safely.
//!
//! cudarc 0.19 looks for `libnccl.so` and `libnccl.so.{12,11,10,9,1}`, while the PyPI wheel
//! `nvidia-nccl-cu12` and the distributions' packages ship `libnccl.so.2`, and its safe
//! communicator is blocking (a peer that dies hangs every other rank). So NCCL is bound here:
//! [`NCCL_LIB_ENV`] names the library file when set; otherwise `libnccl.so.2`, then
//! `libnccl.so`, on the loader's path (`LD_LIBRARY_PATH`, the system's directories).
//!
//! Only NCCL 2.14 and later are used (the first with non-blocking communicators and
//! `ncclCommGetAsyncError` polling); the configuration passed is NCCL 2.14's `ncclConfig_t`
//! (size, magic, version, blocking), which every later NCCL reads by its size and version.

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::path::PathBuf;
use std::sync::OnceLock;

use cudarc::driver::sys::{CUdeviceptr, CUstream};

use crate::error::{Error, Result};

/// The environment variable that names the NCCL library file to load (a path such as
/// `/opt/nccl/lib/libnccl.so.2`), instead of searching `libnccl.so.2` and `libnccl.so`.
pub const NCCL_LIB_ENV: &str = "SHARDFLOW_NCCL_LIB";

/// The names searched on the loader's path, in order.
const CANDIDATES: [&str; 2] = ["libnccl.so.2", "libnccl.so"];

/// `ncclComm_t`.
pub(super) type RawComm = *mut c_void;
/// `ncclResult_t`.
pub(super) type NcclResult = c_int;
/// `ncclSuccess`.
pub(super) const SUCCESS: NcclResult = 0;
/// `ncclInProgress`: a non-blocking call still running.
pub(super) const IN_PROGRESS: NcclResult = 7;

/// `ncclDataType_t` values (stable since NCCL 2.0).
pub(super) const UINT8: c_int = 1;
pub(super) const UINT64: c_int = 5;
pub(super) const FLOAT64: c_int = 8;

/// `ncclRedOp_t` values.
pub(super) const SUM: c_int = 0;
pub(super) const MAX: c_int = 2;
pub(super) const MIN: c_int = 3;

/// `ncclUniqueId`: 128 opaque bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct UniqueId {
    pub(super) internal: [c_char; 128],
}

/// NCCL 2.14's `ncclConfig_t`, as `NCCL_CONFIG_INITIALIZER` fills it. Later versions copy
/// `size` bytes of it and give every field it lacks its default.
#[repr(C)]
pub(super) struct Config {
    size: usize,
    magic: c_uint,
    version: c_uint,
    blocking: c_int,
    /// Explicit, zeroed: NCCL copies `size` bytes, padding included.
    _pad: c_int,
}

impl Config {
    /// A non-blocking communicator's configuration: calls return `ncclInProgress` and finish
    /// while the caller polls `ncclCommGetAsyncError`.
    pub(super) fn non_blocking() -> Self {
        Config {
            size: size_of::<Config>(),
            magic: 0xcafe_beef,
            version: MIN_VERSION as c_uint,
            blocking: 0,
            _pad: 0,
        }
    }
}

/// NCCL 2.14.0 as NCCL encodes versions (major * 10000 + minor * 100 + patch).
pub(super) const MIN_VERSION: c_int = 21400;

/// The library and the functions the engine calls.
pub(super) struct Nccl {
    /// Where the library was loaded from (as the dynamic loader resolved it).
    pub(super) path: PathBuf,
    /// `ncclGetVersion`'s code.
    pub(super) code: c_int,
    pub(super) get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> NcclResult,
    pub(super) comm_init_rank_config:
        unsafe extern "C" fn(*mut RawComm, c_int, UniqueId, c_int, *mut Config) -> NcclResult,
    pub(super) comm_get_async_error: unsafe extern "C" fn(RawComm, *mut NcclResult) -> NcclResult,
    pub(super) comm_finalize: unsafe extern "C" fn(RawComm) -> NcclResult,
    pub(super) comm_destroy: unsafe extern "C" fn(RawComm) -> NcclResult,
    pub(super) comm_abort: unsafe extern "C" fn(RawComm) -> NcclResult,
    pub(super) all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        RawComm,
        CUstream,
    ) -> NcclResult,
    pub(super) all_gather: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        RawComm,
        CUstream,
    ) -> NcclResult,
    get_error_string: unsafe extern "C" fn(NcclResult) -> *const c_char,
    get_last_error: unsafe extern "C" fn(RawComm) -> *const c_char,
    /// Kept loaded for the life of the process: the function pointers above point into it.
    _lib: libloading::Library,
}

impl Nccl {
    /// NCCL's version as `major.minor.patch`.
    pub(super) fn version(&self) -> String {
        version_text(self.code)
    }

    /// NCCL's name for `result`, and its last error message for `comm` when it has one.
    pub(super) fn describe(&self, result: NcclResult, comm: RawComm) -> String {
        // SAFETY: both functions return pointers to static or per-communicator strings that NCCL
        // keeps alive (NUL-terminated, or null); they are copied out at once. `comm` is a live
        // communicator or null, which ncclGetLastError accepts.
        let (name, last) = unsafe {
            (
                text((self.get_error_string)(result)),
                text((self.get_last_error)(comm)),
            )
        };
        let name = name.unwrap_or_else(|| format!("NCCL error {result}"));
        match last.filter(|l| !l.trim().is_empty()) {
            Some(last) => format!("{name} ({result}): {}", last.trim()),
            None => format!("{name} ({result})"),
        }
    }
}

/// A C string NCCL returned, copied; `None` for null.
///
/// # Safety
///
/// `p` is null or points to a NUL-terminated string alive during the call.
unsafe fn text(p: *const c_char) -> Option<String> {
    // SAFETY: as the caller promises.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// libnccl, loaded once per process; the error says where it was looked for.
pub(super) fn nccl() -> Result<&'static Nccl> {
    static NCCL: OnceLock<std::result::Result<Nccl, String>> = OnceLock::new();
    NCCL.get_or_init(load)
        .as_ref()
        .map_err(|reason| Error::Device {
            device: "nccl".into(),
            op: "load libnccl".into(),
            reason: reason.clone(),
        })
}

fn load() -> std::result::Result<Nccl, String> {
    let (lib, name) = match std::env::var_os(NCCL_LIB_ENV) {
        Some(path) if !path.is_empty() => {
            // SAFETY: loading runs the library's initializers; the user named this file as
            // NCCL, and NCCL's initializers have no preconditions.
            let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| {
                format!(
                    "{NCCL_LIB_ENV}={} cannot be loaded: {e}",
                    PathBuf::from(&path).display()
                )
            })?;
            (lib, PathBuf::from(path).display().to_string())
        }
        _ => {
            let mut tried = Vec::new();
            let mut found = None;
            for name in CANDIDATES {
                // SAFETY: as above, for the library the loader finds under NCCL's names.
                match unsafe { libloading::Library::new(name) } {
                    Ok(lib) => {
                        found = Some((lib, name.to_string()));
                        break;
                    }
                    Err(e) => tried.push(format!("{name}: {e}")),
                }
            }
            found.ok_or_else(|| {
                format!(
                    "libnccl.so was not found ({}): install NCCL (the PyPI wheel \
                     nvidia-nccl-cu12 ships it in site-packages/nvidia/nccl/lib) and put its \
                     directory on LD_LIBRARY_PATH, or name the file in {NCCL_LIB_ENV}",
                    tried.join("; ")
                )
            })?
        }
    };
    bind(lib, &name)
}

/// The functions of `lib` (loaded as `name`), and its version, checked.
fn bind(lib: libloading::Library, name: &str) -> std::result::Result<Nccl, String> {
    macro_rules! get {
        ($symbol:literal) => {
            // SAFETY: the symbol is NCCL's public function of that name, whose C signature
            // (nccl.h, unchanged since 2.14) is the field's type; the pointer stays valid while
            // `lib` is loaded, and the struct keeps `lib`.
            *unsafe { lib.get(concat!($symbol, "\0").as_bytes()) }
                .map_err(|e| format!("{name} lacks {}: {e}", $symbol))?
        };
    }
    let get_version: unsafe extern "C" fn(*mut c_int) -> NcclResult = get!("ncclGetVersion");
    let mut code = 0;
    // SAFETY: ncclGetVersion writes one int; it needs no GPU and no initialization.
    let result = unsafe { get_version(&mut code) };
    if result != SUCCESS {
        return Err(format!("{name}: ncclGetVersion failed with code {result}"));
    }
    let path = resolved_path(get_version as *const c_void).unwrap_or_else(|| name.into());
    // Before any other symbol: an older NCCL lacks some of them, and this says why.
    if code < MIN_VERSION {
        return Err(format!(
            "{} is NCCL {}; shardflow needs NCCL 2.14 or later (non-blocking communicators, \
             so that a rank that dies never hangs the others)",
            path.display(),
            version_text(code)
        ));
    }
    let nccl = Nccl {
        path,
        code,
        get_unique_id: get!("ncclGetUniqueId"),
        comm_init_rank_config: get!("ncclCommInitRankConfig"),
        comm_get_async_error: get!("ncclCommGetAsyncError"),
        comm_finalize: get!("ncclCommFinalize"),
        comm_destroy: get!("ncclCommDestroy"),
        comm_abort: get!("ncclCommAbort"),
        all_reduce: get!("ncclAllReduce"),
        all_gather: get!("ncclAllGather"),
        get_error_string: get!("ncclGetErrorString"),
        get_last_error: get!("ncclGetLastError"),
        _lib: lib,
    };
    Ok(nccl)
}

/// NCCL's version code as `major.minor.patch`: `major * 10000 + minor * 100 + patch` from 2.9
/// on, `major * 1000 + minor * 100 + patch` before.
fn version_text(v: c_int) -> String {
    if v >= 20900 {
        format!("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100)
    } else {
        format!("{}.{}.{}", v / 1000, (v / 100) % 10, v % 100)
    }
}

/// The file the dynamic loader took `symbol` from.
fn resolved_path(symbol: *const c_void) -> Option<PathBuf> {
    // SAFETY: `Dl_info` is plain data; dladdr only reads the loader's tables for an address
    // inside a loaded library, and `dli_fname` then points to a string the loader keeps.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(symbol, &mut info) == 0 || info.dli_fname.is_null() {
            return None;
        }
        text(info.dli_fname).map(PathBuf::from)
    }
}

/// A device pointer as NCCL's buffer argument.
pub(super) fn buffer(ptr: CUdeviceptr) -> *mut c_void {
    ptr as usize as *mut c_void
}
