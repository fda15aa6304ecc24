//! The CUDA context (feature `cuda`): a device picked as `local_rank % device_count`, a compute
//! stream and a copy stream, over cudarc's driver API.
//!
//! cudarc loads libcuda when first used and panics when it is missing, so every entry point here
//! checks [`cuda_present`] first: no libcuda, no device or a driver error is an [`Error::Device`]
//! saying which, never a panic.

use std::sync::Arc;

use cudarc::driver::{CudaContext as Driver, CudaStream};

use crate::error::{Error, Result};

/// Whether libcuda (the driver library) can be loaded.
pub fn cuda_present() -> bool {
    // SAFETY: only tries to open the library by its candidate names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether libnccl can be loaded.
pub fn nccl_present() -> bool {
    // SAFETY: as above.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

fn device_error(device: &str, op: &str, reason: impl Into<String>) -> Error {
    Error::Device {
        device: device.into(),
        op: op.into(),
        reason: reason.into(),
    }
}

/// The reason CUDA cannot be used here: no libcuda.
fn no_driver(op: &str) -> Error {
    device_error(
        "cuda",
        op,
        "libcuda.so (the NVIDIA driver library) was not found: this machine has no NVIDIA \
         driver, or its library is not on the loader's path",
    )
}

/// The number of CUDA devices.
///
/// # Errors
///
/// [`Error::Device`] when libcuda is missing or the driver fails to initialize.
pub fn device_count() -> Result<usize> {
    if !cuda_present() {
        return Err(no_driver("count devices"));
    }
    Driver::device_count()
        .map(|n| n.max(0) as usize)
        .map_err(|e| device_error("cuda", "count devices", format!("{e:?}")))
}

/// NCCL's version as `major.minor.patch`.
///
/// # Errors
///
/// [`Error::Device`] when libnccl is missing (cudarc looks for `libnccl.so`; the PyPI wheel
/// ships `libnccl.so.2` only, so link one to the other).
pub fn nccl_version() -> Result<String> {
    if !nccl_present() {
        return Err(device_error(
            "nccl",
            "load libnccl",
            "libnccl.so was not found (the nvidia-nccl-cu12 wheel ships libnccl.so.2: link \
             libnccl.so to it and put the directory on LD_LIBRARY_PATH)",
        ));
    }
    let v = cudarc::nccl::result::get_nccl_version()
        .map_err(|e| device_error("nccl", "ncclGetVersion", format!("{e:?}")))?;
    // NCCL encodes 2.x versions as major * 10000 + minor * 100 + patch.
    Ok(format!("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100))
}

/// A CUDA device with a compute stream and a copy stream.
pub struct CudaContext {
    driver: Arc<Driver>,
    compute: Arc<CudaStream>,
    copy: Arc<CudaStream>,
    name: String,
    capability: (i32, i32),
    memory: usize,
}

impl std::fmt::Debug for CudaContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaContext")
            .field("name", &self.name)
            .field("capability", &self.capability)
            .finish_non_exhaustive()
    }
}

impl CudaContext {
    /// The context of the device this rank uses: `local_rank % device_count`.
    ///
    /// # Errors
    ///
    /// [`Error::Device`] naming what is missing: libcuda, a device, or the driver's reason.
    pub fn for_local_rank(local_rank: usize) -> Result<Arc<Self>> {
        let n = device_count()?;
        if n == 0 {
            return Err(device_error(
                "cuda",
                "pick a device",
                "the driver reports no CUDA device",
            ));
        }
        Self::new(local_rank % n)
    }

    /// The context of device `ordinal`.
    ///
    /// # Errors
    ///
    /// As [`CudaContext::for_local_rank`].
    pub fn new(ordinal: usize) -> Result<Arc<Self>> {
        if !cuda_present() {
            return Err(no_driver("create a context"));
        }
        let device = format!("cuda:{ordinal}");
        let fail = |op: &str| {
            let device = device.clone();
            let op = op.to_string();
            move |e: cudarc::driver::DriverError| device_error(&device, &op, format!("{e:?}"))
        };
        let driver = Driver::new(ordinal).map_err(fail("create a context"))?;
        let compute = driver
            .new_stream()
            .map_err(fail("create the compute stream"))?;
        let copy = driver
            .new_stream()
            .map_err(fail("create the copy stream"))?;
        let name = driver.name().map_err(fail("read the device name"))?;
        let capability = driver
            .compute_capability()
            .map_err(fail("read the compute capability"))?;
        let memory = driver.total_mem().map_err(fail("read the memory size"))?;
        Ok(Arc::new(CudaContext {
            driver,
            compute,
            copy,
            name,
            capability,
            memory,
        }))
    }

    /// cudarc's context.
    pub fn driver(&self) -> &Arc<Driver> {
        &self.driver
    }

    /// The stream kernels run on.
    pub fn compute_stream(&self) -> &Arc<CudaStream> {
        &self.compute
    }

    /// The stream host-to-device copies run on.
    pub fn copy_stream(&self) -> &Arc<CudaStream> {
        &self.copy
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The compute capability, (major, minor).
    pub fn capability(&self) -> (i32, i32) {
        self.capability
    }

    /// The architecture NVRTC compiles for: `sm_` and the capability.
    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.capability.0, self.capability.1)
    }

    /// Device memory in bytes.
    pub fn memory(&self) -> usize {
        self.memory
    }
}
