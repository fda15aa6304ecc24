//! The CUDA context (feature `cuda`): a device picked as `local_rank % device_count`, a compute
//! stream and a copy stream, over cudarc's driver API; its page-locked host memory; and the
//! kernels of `kernels/` behind typed safe launch functions (`launch_pad_collate`,
//! `launch_sketch`, crate-private: the device sink and the sketch binning call them).
//!
//! cudarc loads libcuda when first used and panics when it is missing, so every entry point here
//! checks [`cuda_present`] first: no libcuda, no device or a driver error is an [`Error::Device`]
//! saying which, never a panic.

mod launch;
mod pinned;

pub(crate) use launch::*;
pub(crate) use pinned::{PinnedBuffer, PinnedMemory};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext as Driver, CudaFunction, CudaModule, CudaStream, DriverError};

use super::nvrtc::{self, Kernel};
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

pub(crate) fn device_error(device: &str, op: &str, reason: impl Into<String>) -> Error {
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
    /// The kernels of `kernels/` loaded into this context, each once.
    modules: Mutex<HashMap<Kernel, Arc<CudaModule>>>,
    /// The entry points the launch functions use, each looked up once.
    entries: Mutex<HashMap<(Kernel, &'static str), CudaFunction>>,
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
            modules: Mutex::new(HashMap::new()),
            entries: Mutex::new(HashMap::new()),
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

    /// The device as errors name it: `cuda:0 (NVIDIA H100 80GB HBM3)`.
    pub fn label(&self) -> String {
        format!("cuda:{} ({})", self.driver.ordinal(), self.name)
    }

    /// An [`Error::Device`] on this device for `op`.
    pub fn error(&self, op: &str, reason: impl std::fmt::Debug) -> Error {
        device_error(&self.label(), op, format!("{reason:?}"))
    }

    /// A closure turning a driver error of `op` into [`CudaContext::error`].
    pub fn fail<'a>(&'a self, op: &'a str) -> impl Fn(DriverError) -> Error + 'a {
        move |e| self.error(op, e)
    }

    /// The entry point `function` of `kernel`, compiled by NVRTC for this device (once per
    /// process and architecture) and loaded into this context (once per context).
    ///
    /// # Errors
    ///
    /// [`Error::Kernel`] when the kernel does not compile; [`Error::Device`] when NVRTC is
    /// missing or the driver refuses the image.
    pub fn function(&self, kernel: Kernel, function: &str) -> Result<CudaFunction> {
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
            match modules.get(&kernel) {
                Some(m) => m.clone(),
                None => {
                    let image = nvrtc::image(kernel, self.capability)?;
                    let op = format!("load {} ({})", kernel.file(), image.arch);
                    let module = self
                        .driver
                        .load_module(cudarc::nvrtc::Ptx::from_binary(image.data.clone()))
                        .map_err(|e| self.error(&op, e))?;
                    modules.insert(kernel, module.clone());
                    module
                }
            }
        };
        module
            .load_function(function)
            .map_err(|e| self.error(&format!("find {function} in {}", kernel.file()), e))
    }

    /// [`CudaContext::function`], looked up once per context: for the launch functions.
    pub(crate) fn entry(&self, kernel: Kernel, function: &'static str) -> Result<CudaFunction> {
        let cached = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(kernel, function))
            .cloned();
        if let Some(f) = cached {
            return Ok(f);
        }
        let f = self.function(kernel, function)?;
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((kernel, function), f.clone());
        Ok(f)
    }

    /// The bandwidth (bytes/s) of `copies` host-to-device copies of `bytes` bytes each from
    /// pinned memory on the copy stream, as the CUDA sink's uploads run: the bus roofline
    /// `shardflow bench --device cuda` compares the sink with.
    ///
    /// # Errors
    ///
    /// [`Error::Device`] with the driver's reason.
    pub fn pinned_copy_bandwidth(&self, bytes: usize, copies: usize) -> Result<f64> {
        let op = "time pinned copies";
        let fail = self.fail(op);
        let stream = &self.copy;
        let src = PinnedBuffer::new(self.pinned_memory(), bytes).ok_or_else(|| {
            device_error(
                &self.label(),
                op,
                format!("the driver gave no {bytes} pinned bytes"),
            )
        })?;
        let mut dst = stream.alloc_zeros::<u8>(bytes).map_err(&fail)?;
        let mut copy = || stream.memcpy_htod(&src[..], &mut dst).map_err(&fail);
        let timed = (|| {
            copy()?;
            stream.synchronize().map_err(&fail)?;
            let t0 = std::time::Instant::now();
            for _ in 0..copies {
                copy()?;
            }
            stream.synchronize().map_err(&fail)?;
            Ok((bytes * copies) as f64 / t0.elapsed().as_secs_f64())
        })();
        // The copies read `src`: they are done before it is freed, on the error path too.
        let _ = stream.synchronize();
        timed
    }
}
