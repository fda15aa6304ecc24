//! The CUDA context (feature `cuda`): a device picked by the local rank (refused when it names
//! no device), a compute stream and a copy stream, over cudarc's driver API; host waits that
//! sleep rather than spin (blocking-sync events); its page-locked host memory; and the
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

use cudarc::driver::{
    CudaContext as Driver, CudaEvent, CudaFunction, CudaModule, CudaStream, DriverError, sys,
};

use super::nvrtc::{self, Kernel};
use crate::error::{Error, Result};

/// Whether libcuda (the driver library) can be loaded.
pub fn cuda_present() -> bool {
    // SAFETY: only tries to open the library by its candidate names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether libnccl can be loaded (NCCL discovery lives in the NCCL engine,
/// [`crate::collective::nccl_library`]: `libnccl.so.2`, `libnccl.so`, or `SHARDFLOW_NCCL_LIB`).
pub fn nccl_present() -> bool {
    crate::collective::nccl_library().is_ok()
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

/// NCCL's version as `major.minor.patch` (see [`crate::collective::nccl_library`], which also
/// gives the library's path; it needs no GPU).
///
/// # Errors
///
/// [`Error::Device`] saying where libnccl was looked for (`libnccl.so.2`, `libnccl.so` on the
/// loader's path, or the file `SHARDFLOW_NCCL_LIB` names), or that it is older than 2.14.
pub fn nccl_version() -> Result<String> {
    crate::collective::nccl_library().map(|lib| lib.version)
}

/// The newest CUDA version the driver supports, as (major, minor): (12, 8) for an R570 driver.
///
/// # Errors
///
/// [`Error::Device`] when libcuda is missing or the driver fails.
pub fn driver_version() -> Result<(i32, i32)> {
    let op = "read the driver's version";
    if !cuda_present() {
        return Err(no_driver(op));
    }
    let mut v = 0;
    // SAFETY: cuDriverGetVersion writes one int and needs no initialized context.
    let result = unsafe { sys::cuDriverGetVersion(&mut v) };
    if result != sys::CUresult::CUDA_SUCCESS {
        return Err(device_error("cuda", op, format!("{result:?}")));
    }
    Ok((v / 1000, (v % 1000) / 10))
}

/// The device of the rank with `local_rank` among the `n` this process sees (`visible`: the
/// value of `CUDA_VISIBLE_DEVICES`, for the message): device `local_rank`, or device 0 when
/// the process sees one; a `local_rank` past the devices is refused, naming them.
fn device_for_rank(
    local_rank: usize,
    n: usize,
    visible: Option<&str>,
) -> std::result::Result<usize, String> {
    match n {
        0 => Err("the driver reports no CUDA device".into()),
        1 => Ok(0),
        _ if local_rank < n => Ok(local_rank),
        _ => {
            let seen = match visible {
                Some(v) => format!("CUDA_VISIBLE_DEVICES={v}"),
                None => "CUDA_VISIBLE_DEVICES unset".into(),
            };
            Err(format!(
                "LOCAL_RANK {local_rank} names no device: this process sees {n} CUDA devices \
                 (0..{n}, {seen}); start at most {n} ranks per node, or give each rank its own \
                 device through CUDA_VISIBLE_DEVICES"
            ))
        }
    }
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
    /// The context of the device this rank uses: device `local_rank` of the visible ones, or
    /// the only one when the process sees one (each rank given its own device through
    /// `CUDA_VISIBLE_DEVICES`).
    ///
    /// # Errors
    ///
    /// [`Error::Device`] naming what is missing: libcuda, a device, or the driver's reason; a
    /// `local_rank` at or past the device count (when more than one is visible), naming
    /// `LOCAL_RANK` and the count.
    pub fn for_local_rank(local_rank: usize) -> Result<Arc<Self>> {
        let n = device_count()?;
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        let ordinal = device_for_rank(local_rank, n, visible.as_deref())
            .map_err(|why| device_error("cuda", "pick this rank's device", why))?;
        Self::new(ordinal)
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

    /// A new event that the host can wait for asleep (`CU_EVENT_BLOCKING_SYNC`): a host wait on
    /// an event without it spins a core until the device is done. (cudarc's event flags are
    /// single values, so it keeps timing enabled: a timestamp per record.)
    ///
    /// # Errors
    ///
    /// The driver's.
    pub fn host_event(&self) -> std::result::Result<CudaEvent, DriverError> {
        self.driver
            .new_event(Some(sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC))
    }

    /// Blocks the calling thread until the work queued on `stream` so far is done, asleep in
    /// the driver: `CudaStream::synchronize` spins a core under the default scheduling, which
    /// a primary context shared with other libraries should not be switched from.
    ///
    /// # Errors
    ///
    /// [`Error::Device`] naming `op`, with the driver's reason (an earlier asynchronous
    /// failure included).
    pub fn synchronize(&self, stream: &CudaStream, op: &str) -> Result<()> {
        let asleep = || -> std::result::Result<(), DriverError> {
            let done = self.host_event()?;
            done.record(stream)?;
            done.synchronize()
        };
        let Err(first) = asleep() else {
            return Ok(());
        };
        // cudarc reports an error that some earlier drop stored in the context at the next call
        // that makes the context current, before any waiting: the callers free pinned memory
        // the stream may still write once this returns, so it must really have waited. The
        // failed attempt cleared that error: wait on the stream itself.
        let waited = self.driver.bind_to_thread().and_then(|()| {
            // SAFETY: `stream` is a live stream of this context (current on this thread now).
            unsafe { cudarc::driver::result::stream::synchronize(stream.cu_stream()) }
        });
        match waited {
            Ok(()) => {
                tracing::warn!(device = %self.label(), op, "{first:?} (reported by the driver \
                     before the wait; the stream then finished its work)");
                Ok(())
            }
            Err(e) => Err(self.error(op, format!("{first:?}, then {e:?}"))),
        }
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
                        .map_err(|e| match e.0 {
                            sys::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION => {
                                let driver = driver_version().ok().map(|(a, b)| a * 1000 + b * 10);
                                let hint = nvrtc::ptx_driver_hint(image.ptx_isa(), driver);
                                device_error(&self.label(), &op, format!("{e:?}: {hint}"))
                            }
                            _ => self.error(&op, e),
                        })?;
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
            self.synchronize(stream, op)?;
            let t0 = std::time::Instant::now();
            for _ in 0..copies {
                copy()?;
            }
            self.synchronize(stream, op)?;
            Ok((bytes * copies) as f64 / t0.elapsed().as_secs_f64())
        })();
        // The copies read `src`: they are done before it is freed, on the error path too.
        let _ = self.synchronize(stream, op);
        timed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_rank_past_the_visible_devices_is_refused_by_name() {
        assert_eq!(device_for_rank(0, 8, None), Ok(0));
        assert_eq!(device_for_rank(7, 8, None), Ok(7));
        // One visible device per process: every rank's is device 0.
        assert_eq!(device_for_rank(5, 1, Some("5")), Ok(0));
        let e = device_for_rank(2, 2, Some("0,1")).unwrap_err();
        assert_eq!(
            e,
            "LOCAL_RANK 2 names no device: this process sees 2 CUDA devices (0..2, \
             CUDA_VISIBLE_DEVICES=0,1); start at most 2 ranks per node, or give each rank its \
             own device through CUDA_VISIBLE_DEVICES"
        );
        let e = device_for_rank(9, 4, None).unwrap_err();
        assert!(
            e.contains("LOCAL_RANK 9") && e.contains("sees 4 CUDA devices"),
            "{e}"
        );
        assert!(e.contains("CUDA_VISIBLE_DEVICES unset"), "{e}");
        let e = device_for_rank(0, 0, None).unwrap_err();
        assert!(e.contains("no CUDA device"), "{e}");
    }
}
