//! The wgpu 30 context: adapter, device, queue, and the compute pipelines of `shaders/`.
//!
//! [`WgpuContext::new`] picks an adapter of the native backends (Vulkan, Metal, DX12): the one
//! whose name contains `SHARDFLOW_WGPU_ADAPTER` (case-insensitive) when that is set, else by
//! power preference (a discrete GPU, an integrated one, a virtual one, then a CPU adapter such
//! as lavapipe). [`WgpuContext::from_device`] adopts a device and queue made elsewhere, such as
//! Burn's, so that batches land on the device the model uses. Pipelines are compiled once per
//! context, on first use. Every wgpu call that can fail runs inside an error scope, so a
//! validation or out-of-memory error is an [`Error::Device`] naming the operation, not wgpu's
//! default panic.

use std::sync::{Arc, OnceLock};

use crate::error::{Error, Result};

/// The environment variable that picks an adapter by (part of) its name, case-insensitive.
pub const ADAPTER_ENV: &str = "SHARDFLOW_WGPU_ADAPTER";

/// Gives `XDG_RUNTIME_DIR` a value when it has none (or a relative one), so that opening a
/// Vulkan adapter prints nothing that reads like shardflow's error: Mesa's device-select layer
/// asks libwayland for a compositor while it orders the adapters, and libwayland then prints
/// `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` on stderr, once per
/// instance. The value is the session's `/run/user/UID` when that exists, else a private
/// directory (mode 0700) under the temporary directory; libwayland finds no compositor there
/// and stays quiet, and child processes inherit a usable directory.
///
/// Changing the environment is sound only while no other thread can read it, so this does
/// nothing unless the process has a single thread (counted in `/proc/self/task`; elsewhere than
/// Linux it does nothing): the command calls it first thing in `main`. Returns whether it set
/// the variable.
pub fn quiet_wayland_probe() -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        const VAR: &str = "XDG_RUNTIME_DIR";
        if std::env::var_os(VAR).is_some_and(|v| std::path::Path::new(&v).is_absolute()) {
            return false;
        }
        let single = std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.count() == 1);
        let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
            return false;
        };
        if !single {
            tracing::debug!("{VAR} is unset, and the process already runs threads: left as it is");
            return false;
        }
        let ours = |dir: &std::path::Path| {
            std::fs::symlink_metadata(dir)
                .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.permissions().mode() & 0o077 == 0)
        };
        let session = std::path::PathBuf::from(format!("/run/user/{uid}"));
        let dir = if ours(&session) {
            session
        } else {
            let private = std::env::temp_dir().join(format!("shardflow-runtime-{uid}"));
            let _ = std::fs::DirBuilder::new().mode(0o700).create(&private);
            if !ours(&private) {
                return false;
            }
            private
        };
        // SAFETY: the process has one thread (counted just above), this one; only it could start
        // another, and it is here, so nothing reads or writes the environment meanwhile.
        unsafe { std::env::set_var(VAR, &dir) };
        true
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// The compute shaders, by file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shader {
    /// `shaders/pad_collate.wgsl`: ragged ids to padded ids, mask, labels, positions.
    PadCollate,
    /// `shaders/sketch.wgsl`: device f32 values into sketch buckets, per dataset.
    Sketch,
}

impl Shader {
    const ALL: [Shader; 2] = [Shader::PadCollate, Shader::Sketch];

    fn source(self) -> &'static str {
        match self {
            Shader::PadCollate => include_str!("../../shaders/pad_collate.wgsl"),
            Shader::Sketch => include_str!("../../shaders/sketch.wgsl"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Shader::PadCollate => "pad_collate.wgsl",
            Shader::Sketch => "sketch.wgsl",
        }
    }

    /// Whether the shader uses f64 (the adapter needs `SHADER_F64`).
    fn needs_f64(self) -> bool {
        matches!(self, Shader::Sketch)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// An adapter's device and queue, with the pipelines shardflow runs on them.
pub struct WgpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    name: String,
    pipelines: [OnceLock<std::result::Result<Pipeline, String>>; Shader::ALL.len()],
}

/// A compiled pipeline and its bind group layout.
pub(crate) struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

impl std::fmt::Debug for WgpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuContext")
            .field("adapter", &self.name)
            .field("f64", &self.has_f64())
            .finish()
    }
}

/// The reason no adapter was found, with what to install.
const NO_ADAPTER: &str = "no Vulkan, Metal or DX12 adapter found; on Linux install a Vulkan driver \
     (the package mesa-vulkan-drivers gives the software one, lavapipe), or run with the host sink";

impl WgpuContext {
    /// A context on the adapter `SHARDFLOW_WGPU_ADAPTER` names, or the most powerful one.
    ///
    /// # Errors
    ///
    /// [`Error::Device`] when there is no adapter (saying what to install), when no adapter's
    /// name matches `SHARDFLOW_WGPU_ADAPTER` (listing the names), or when the device cannot be
    /// created.
    pub fn new() -> Result<Arc<Self>> {
        let (_instance, adapter) = Self::adapter()?;
        Self::with_adapter(&adapter)
    }

    /// The instance and the adapter [`WgpuContext::new`] picks (the first discrete GPU, then
    /// integrated, virtual, CPU; or the one `SHARDFLOW_WGPU_ADAPTER` names).
    ///
    /// # Errors
    ///
    /// As [`WgpuContext::new`].
    pub fn adapter() -> Result<(wgpu::Instance, wgpu::Adapter)> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
        let fail = |op: &str, reason: String| Error::Device {
            device: "wgpu".into(),
            op: op.into(),
            reason,
        };
        if adapters.is_empty() {
            return Err(fail("find an adapter", NO_ADAPTER.into()));
        }
        let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Cpu => 3,
            wgpu::DeviceType::Other => 4,
        };
        adapters.sort_by_key(rank);
        let adapter = match std::env::var(ADAPTER_ENV) {
            Ok(want) if !want.is_empty() => {
                let want_lower = want.to_lowercase();
                let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
                let found = adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&want_lower));
                found.ok_or_else(|| {
                    fail(
                        "find an adapter",
                        format!("{ADAPTER_ENV}={want} matches none of the adapters {names:?}"),
                    )
                })?
            }
            _ => adapters.remove(0),
        };
        Ok((instance, adapter))
    }

    /// A context on `adapter`: a device with the adapter's features (less
    /// `MAPPABLE_PRIMARY_BUFFERS`, as Burn creates its devices) and limits.
    ///
    /// # Errors
    ///
    /// [`Error::Device`] when the device cannot be created.
    pub fn with_adapter(adapter: &wgpu::Adapter) -> Result<Arc<Self>> {
        let info = adapter.get_info();
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("shardflow"),
            required_features: adapter.features() - wgpu::Features::MAPPABLE_PRIMARY_BUFFERS,
            required_limits: adapter.limits(),
            ..Default::default()
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&descriptor)).map_err(|e| Error::Device {
                device: format!("wgpu {}", info.name),
                op: "create a device".into(),
                reason: e.to_string(),
            })?;
        Ok(Self::from_device(device, queue, info))
    }

    /// Adopts a device and queue made elsewhere (Burn's, say): batches then land where the model
    /// runs. `info` names the adapter in reports.
    pub fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
    ) -> Arc<Self> {
        let name = format!("wgpu {} ({:?})", info.name, info.backend);
        Arc::new(WgpuContext {
            device,
            queue,
            info,
            name,
            pipelines: Default::default(),
        })
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The adapter's description.
    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// `wgpu NAME (BACKEND)`, as errors and reports name the device.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether shaders may use f64 (`SHADER_F64`): device sketches then run on the device with
    /// exact sums (without it the values come back and the host bins them).
    pub fn has_f64(&self) -> bool {
        self.device.features().contains(wgpu::Features::SHADER_F64)
    }

    /// An [`Error::Device`] for this device.
    pub(crate) fn error(&self, op: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Device {
            device: self.name.clone(),
            op: op.into(),
            reason: reason.into(),
        }
    }

    /// Runs `f` inside a validation and out-of-memory error scope; a wgpu error becomes an
    /// [`Error::Device`] naming `op`.
    pub(crate) fn scoped<R>(&self, op: &str, f: impl FnOnce() -> R) -> Result<R> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let errors = [
            pollster::block_on(validation.pop()),
            pollster::block_on(oom.pop()),
        ];
        match errors.into_iter().flatten().next() {
            Some(e) => Err(self.error(op, e.to_string())),
            None => Ok(out),
        }
    }

    /// The compiled pipeline of `shader`, compiled on first use.
    pub(crate) fn pipeline(&self, shader: Shader) -> Result<&Pipeline> {
        let compiled = self.pipelines[shader.index()].get_or_init(|| {
            if shader.needs_f64() && !self.has_f64() {
                return Err(format!(
                    "{} needs f64 in shaders, which this adapter lacks (SHADER_F64)",
                    shader.name()
                ));
            }
            self.scoped(&format!("compile {}", shader.name()), || {
                let module = self
                    .device
                    .create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(shader.name()),
                        source: wgpu::ShaderSource::Wgsl(shader.source().into()),
                    });
                let pipeline =
                    self.device
                        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                            label: Some(shader.name()),
                            layout: None,
                            module: &module,
                            entry_point: Some("main"),
                            compilation_options: Default::default(),
                            cache: None,
                        });
                let layout = pipeline.get_bind_group_layout(0);
                Pipeline { pipeline, layout }
            })
            .map_err(|e| e.to_string())
        });
        compiled
            .as_ref()
            .map_err(|reason| self.error(format!("compile {}", shader.name()), reason.clone()))
    }

    /// Compiles every pipeline this adapter can run (the f64 ones only with `SHADER_F64`), so
    /// that a broken shader fails here; returns how many were compiled.
    ///
    /// # Errors
    ///
    /// [`Error::Device`] naming the shader and wgpu's message.
    pub fn compile_all(&self) -> Result<usize> {
        let mut n = 0;
        for shader in Shader::ALL {
            if shader.needs_f64() && !self.has_f64() {
                continue;
            }
            self.pipeline(shader)?;
            n += 1;
        }
        Ok(n)
    }

    /// A bind group of `buffers`, bound to bindings 0, 1, … of `shader`'s pipeline.
    ///
    /// # Errors
    ///
    /// [`Error::Device`] when the shader does not compile or the buffers do not fit its
    /// bindings.
    pub(crate) fn bind(
        &self,
        shader: Shader,
        buffers: &[&wgpu::Buffer],
    ) -> Result<wgpu::BindGroup> {
        let pipeline = self.pipeline(shader)?;
        self.scoped(&format!("bind the buffers of {}", shader.name()), || {
            let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource: b.as_entire_binding(),
                })
                .collect();
            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(shader.name()),
                layout: &pipeline.layout,
                entries: &entries,
            })
        })
    }

    /// A bind group of buffer windows `(buffer, offset, size)` in bytes, bound to bindings 0, 1,
    /// … of `shader`'s pipeline: each offset a multiple of the device's
    /// `min_storage_buffer_offset_alignment` (`min_uniform_buffer_offset_alignment` for a
    /// uniform), each size at most its binding limit.
    ///
    /// # Errors
    ///
    /// As [`WgpuContext::bind`].
    pub(crate) fn bind_windows(
        &self,
        shader: Shader,
        windows: &[(&wgpu::Buffer, u64, u64)],
    ) -> Result<wgpu::BindGroup> {
        let pipeline = self.pipeline(shader)?;
        self.scoped(&format!("bind buffer windows of {}", shader.name()), || {
            let entries: Vec<wgpu::BindGroupEntry<'_>> = windows
                .iter()
                .enumerate()
                .map(|(i, &(buffer, offset, size))| wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer,
                        offset,
                        size: wgpu::BufferSize::new(size),
                    }),
                })
                .collect();
            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(shader.name()),
                layout: &pipeline.layout,
                entries: &entries,
            })
        })
    }

    /// Submits one dispatch of `workgroups` workgroups of `shader` over `bind`, in one dimension
    /// (the shader reads `global_invocation_id.x` only); the caller's error scope covers it.
    ///
    /// # Errors
    ///
    /// [`Error::Device`] when the shader does not compile, or when `workgroups` passes the
    /// device's `max_compute_workgroups_per_dimension` (a shader that needs more takes a grid:
    /// [`WgpuContext::dispatch_grid`]).
    pub(crate) fn dispatch(
        &self,
        shader: Shader,
        bind: &wgpu::BindGroup,
        workgroups: u32,
    ) -> Result<wgpu::SubmissionIndex> {
        let max = self.device.limits().max_compute_workgroups_per_dimension;
        if workgroups > max {
            return Err(self.error(
                format!("dispatch {}", shader.name()),
                format!(
                    "{workgroups} workgroups in one dimension, over the device's \
                     max_compute_workgroups_per_dimension of {max}"
                ),
            ));
        }
        self.submit(shader, &[(bind, [workgroups, 1])])
    }

    /// Submits, in one compute pass, a dispatch of `shader` per `(bind group, workgroups)`, each
    /// as a 2-D grid: `x` up to the device's `max_compute_workgroups_per_dimension`, `y` for the
    /// rest. The shader computes its flat workgroup index as `workgroup_id.y * num_workgroups.x +
    /// workgroup_id.x`, and must ignore the grid's last workgroups past `workgroups` (the last
    /// row of the grid may be partly beyond it). The caller's error scope covers it.
    ///
    /// # Errors
    ///
    /// [`Error::Device`] when the shader does not compile, or when a dispatch needs more than
    /// `max_compute_workgroups_per_dimension` squared workgroups.
    pub(crate) fn dispatch_grid(
        &self,
        shader: Shader,
        dispatches: &[(&wgpu::BindGroup, u64)],
    ) -> Result<wgpu::SubmissionIndex> {
        let max = self.device.limits().max_compute_workgroups_per_dimension;
        let grids = dispatches
            .iter()
            .map(|&(bind, workgroups)| {
                let grid = grid(workgroups, max).ok_or_else(|| {
                    self.error(
                        format!("dispatch {}", shader.name()),
                        format!(
                            "{workgroups} workgroups, over the device's \
                             max_compute_workgroups_per_dimension of {max} squared"
                        ),
                    )
                })?;
                Ok((bind, grid))
            })
            .collect::<Result<Vec<_>>>()?;
        self.submit(shader, &grids)
    }

    /// Encodes and submits one compute pass of `shader` with a dispatch of `[x, y]` workgroups
    /// over each bind group (empty grids skipped).
    fn submit(
        &self,
        shader: Shader,
        grids: &[(&wgpu::BindGroup, [u32; 2])],
    ) -> Result<wgpu::SubmissionIndex> {
        let pipeline = self.pipeline(shader)?;
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(shader.name()),
            });
        if grids.iter().any(|(_, [x, y])| *x > 0 && *y > 0) {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(shader.name()),
                timestamp_writes: None,
            });
            pass.set_pipeline(&pipeline.pipeline);
            for &(bind, [x, y]) in grids {
                if x > 0 && y > 0 {
                    pass.set_bind_group(0, bind, &[]);
                    pass.dispatch_workgroups(x, y, 1);
                }
            }
        }
        Ok(self.queue.submit([encoder.finish()]))
    }

    /// A buffer of `size` bytes (at least 4) with `usage`.
    pub(crate) fn buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(4).next_multiple_of(4),
            usage,
            mapped_at_creation: false,
        })
    }

    /// Blocks until `index` has finished on the device.
    ///
    /// # Errors
    ///
    /// [`Error::Device`] when the device is lost or the wait fails.
    pub(crate) fn wait(&self, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: index,
                timeout: None,
            })
            .map(|_| ())
            .map_err(|e| self.error("wait for the device", e.to_string()))
    }

    /// Copies `size` bytes of `buffer` from `offset` back to the host (a staging copy, a map and
    /// a wait): for tests, debugging and small results.
    ///
    /// # Errors
    ///
    /// [`Error::Device`] naming the operation.
    pub fn read(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        self.read_many(&[(buffer, offset, size)])
            .map(|mut v| v.remove(0))
    }

    /// Copies several ranges back to the host in one submission and one map.
    ///
    /// # Errors
    ///
    /// As [`WgpuContext::read`].
    ///
    /// The copies go through a staging buffer of at most [`READBACK_BYTES`] (and the device's
    /// `max_buffer_size`), one round trip per staging buffer's worth, so that reading back a
    /// large batch neither passes the device's buffer limit nor doubles its memory.
    pub(crate) fn read_many(&self, ranges: &[(&wgpu::Buffer, u64, u64)]) -> Result<Vec<Vec<u8>>> {
        let cap = READBACK_BYTES.min(self.device.limits().max_buffer_size) & !3;
        // Each range in pieces of at most `cap` bytes (4-byte multiples, as copies must be).
        let mut pieces: Vec<(usize, u64, u64)> = Vec::new();
        for (i, &(_, offset, size)) in ranges.iter().enumerate() {
            let padded = size.next_multiple_of(4);
            let mut at = 0;
            while at < padded {
                let len = cap.min(padded - at);
                pieces.push((i, offset + at, len));
                at += len;
            }
        }
        let total: u64 = pieces.iter().map(|p| p.2).sum();
        let staging = self.buffer(
            "shardflow readback",
            total.min(cap),
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        let mut out: Vec<Vec<u8>> = ranges
            .iter()
            .map(|r| Vec::with_capacity(r.2 as usize))
            .collect();
        let mut next = 0;
        while next < pieces.len() {
            // As many pieces as the staging buffer holds.
            let mut end = next;
            let mut bytes = 0;
            while end < pieces.len() && bytes + pieces[end].2 <= cap {
                bytes += pieces[end].2;
                end += 1;
            }
            let round = &pieces[next..end];
            let index = self.scoped("copy back to the host", || {
                let mut encoder =
                    self.device
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                            label: Some("shardflow readback"),
                        });
                let mut at = 0;
                for &(i, offset, len) in round {
                    encoder.copy_buffer_to_buffer(ranges[i].0, offset, &staging, at, len);
                    at += len;
                }
                self.queue.submit([encoder.finish()])
            })?;
            let (tx, rx) = std::sync::mpsc::channel();
            staging.map_async(wgpu::MapMode::Read, ..bytes.max(4), move |r| {
                let _ = tx.send(r);
            });
            self.wait(Some(index))?;
            rx.recv()
                .map_err(|_| self.error("map a readback buffer", "the map callback never ran"))?
                .map_err(|e| self.error("map a readback buffer", e.to_string()))?;
            let view = staging
                .get_mapped_range(..bytes.max(4))
                .map_err(|e| self.error("map a readback buffer", e.to_string()))?;
            let mut at = 0usize;
            for &(i, _, len) in round {
                let want = ranges[i].2 as usize - out[i].len();
                let take = want.min(len as usize);
                out[i].extend_from_slice(&view[at..at + take]);
                at += len as usize;
            }
            drop(view);
            staging.unmap();
            next = end;
        }
        Ok(out)
    }
}

/// The most bytes a readback stages at a time ([`WgpuContext::read_many`]).
pub(crate) const READBACK_BYTES: u64 = 256 << 20;

/// `workgroups` as a 2-D grid `[x, y]` with `x` at most `max` (and `y` as small as it can be),
/// or `None` past `max` squared.
fn grid(workgroups: u64, max: u32) -> Option<[u32; 2]> {
    let max = u64::from(max.max(1));
    let x = workgroups.min(max);
    let y = if x == 0 { 0 } else { workgroups.div_ceil(x) };
    (y <= max).then_some([x as u32, y as u32])
}

#[cfg(test)]
mod tests {
    use super::grid;

    #[test]
    fn a_grid_covers_the_workgroups_within_the_limit_per_dimension() {
        assert_eq!(grid(0, 65_535), Some([0, 0]));
        assert_eq!(grid(1, 65_535), Some([1, 1]));
        assert_eq!(grid(65_535, 65_535), Some([65_535, 1]));
        assert_eq!(grid(65_536, 65_535), Some([65_535, 2]));
        // 2^28 cells at 256 a workgroup.
        assert_eq!(grid(1 << 20, 65_535), Some([65_535, 17]));
        assert_eq!(grid(65_535 * 65_535, 65_535), Some([65_535, 65_535]));
        assert_eq!(grid(65_535 * 65_535 + 1, 65_535), None);
        for n in [1u64, 7, 65_534, 65_536, 1 << 20, 3 << 30] {
            let [x, y] = grid(n, 65_535).unwrap();
            let (x, y) = (u64::from(x), u64::from(y));
            assert!(x * y >= n && x * (y - 1) < n, "{n}: {x} x {y}");
        }
    }
}
