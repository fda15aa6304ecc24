//! One wgpu device for Burn and shardflow (feature `wgpu`): a batch padded by
//! `shaders/pad_collate.wgsl` becomes Burn tensors by device-to-device copies, with no host round
//! trip ([`BurnShaderSink`]).
//!
//! Burn 0.22.1 cannot adopt a foreign `wgpu::Buffer` as a tensor, so each field is copied once
//! on the device: a Burn tensor of the field's shape is allocated (`Tensor::empty`), its raw
//! buffer found through CubeCL (`ComputeClient::get_resource`), and the sink's buffer copied
//! into it on the shared queue. The attention mask, which the shader packs as bytes, is
//! rebuilt from the lengths with one Burn comparison.

use std::sync::Arc;

use ::burn::backend::Cube;
use ::burn::backend::wgpu::{AutoCompiler, CubeTensor, WgpuResource, WgpuSetup};
use ::burn::cubecl::wgpu::WgpuServer;
use ::burn::tensor::{DType, Device, Int, IntDType, Tensor};

use super::BurnBatch;
use super::sink::check_ids;
use crate::collate::{CollateConfig, DocRef, Pool, StagedBatch};
use crate::device::{DeviceField, DeviceSink, RaggedBatch, WgpuBatch, WgpuSink};
use crate::error::{Error, Result};
use crate::gpu::WgpuContext;
use crate::metrics::Aggregator;
use crate::metrics::loss_names as names;
use crate::metrics::{check_rows, record_loss_counts as record_counts};
use crate::shard::TokenId;

/// A wgpu context and the Burn device registered on the same `wgpu::Device` and queue: hand
/// the context to [`BurnShaderSink::new`] and the device to the model.
///
/// Each call registers a new Burn device: call it once and clone what it returns.
///
/// # Errors
///
/// [`Error::Device`] when there is no adapter or Burn refuses the setup.
pub fn shared_wgpu() -> Result<(Device, Arc<WgpuContext>)> {
    let (instance, adapter) = WgpuContext::adapter()?;
    let ctx = WgpuContext::with_adapter(&adapter)?;
    let setup = WgpuSetup {
        instance,
        adapter,
        device: ctx.device().clone(),
        queue: ctx.queue().clone(),
        backend: ctx.info().backend,
    };
    let device = Device::wgpu_options()
        .setup(setup)
        .init()
        .map_err(|e| Error::Device {
            device: ctx.name().to_string(),
            op: "register the device with Burn".into(),
            reason: e.to_string(),
        })?;
    Ok((device, ctx))
}

/// Lands batches as Burn tensors on a wgpu `device` by padding them there: ragged ids cross to
/// the device of a [`WgpuSink`], the pad shader collates them, and each field is copied into a
/// Burn tensor on the same device (see [`shared_wgpu`], which makes the pair). Slower than host
/// padding ([`super::BurnSink`]) on every device measured so far; it is here for devices where it
/// is not, and to keep the data on the GPU.
#[derive(Debug)]
pub struct BurnShaderSink {
    device: Device,
    pad: WgpuSink,
}

impl BurnShaderSink {
    /// A sink onto `device`, padding on `ctx`'s device (the same `wgpu::Device`).
    ///
    /// # Errors
    ///
    /// As [`super::BurnSink::new`]; [`Error::Device`] when the device's int dtype is not i32
    /// (the shader writes i32 fields) or the shader does not compile.
    pub fn new(device: &Device, ctx: Arc<WgpuContext>) -> Result<Self> {
        let dtype = super::BurnSink::new(device)?.dtype();
        if dtype != IntDType::I32 {
            return Err(ctx.error(
                "pad batches for Burn",
                format!("the Burn device's int dtype is {dtype:?}, the shader's i32"),
            ));
        }
        Ok(BurnShaderSink {
            device: device.clone(),
            pad: WgpuSink::new(ctx)?,
        })
    }

    /// The device batches land on.
    pub fn burn_device(&self) -> &Device {
        &self.device
    }

    /// The int dtype of every field: i32.
    pub fn dtype(&self) -> IntDType {
        IntDType::I32
    }

    /// The sink that pads on the device (for its counters).
    pub fn pad_sink(&self) -> &WgpuSink {
        &self.pad
    }
}

impl<T: TokenId> DeviceSink<T> for BurnShaderSink {
    type Prepared = RaggedBatch<T>;
    type Output = BurnBatch;

    fn device(&self) -> String {
        format!("burn {:?}", self.device)
    }

    fn staging(&self) -> &Pool {
        DeviceSink::<T>::staging(&self.pad)
    }

    /// As [`WgpuSink`]'s bind; the ids must fit i32 too.
    fn bind(&mut self, config: &CollateConfig, rows: usize) -> Result<()> {
        DeviceSink::<T>::bind(&mut self.pad, config, rows)?;
        check_ids::<T>(&self.device, IntDType::I32)
    }

    fn prepare(&self, staged: StagedBatch<T>) -> Result<RaggedBatch<T>> {
        self.pad.prepare(staged)
    }

    fn upload(&self, prepared: RaggedBatch<T>, batch: u64) -> Result<BurnBatch> {
        land(&self.device, self.pad.upload(prepared, batch)?)
    }
}

/// Runs `f` on the wgpu buffer (and the offset in it) that holds `tensor`, kept in place
/// meanwhile (and after, as long as the tensor lives).
fn with_raw_buffer<R>(
    ctx: &WgpuContext,
    tensor: &CubeTensor,
    op: &str,
    f: impl FnOnce(&WgpuResource) -> R,
) -> Result<R> {
    let managed = tensor
        .client
        .get_resource::<WgpuServer<AutoCompiler>>(tensor.handle.clone())
        .map_err(|e| ctx.error(op, format!("{e:?}")))?;
    Ok(f(managed.resource()))
}

/// Copies a padded wgpu batch into Burn tensors on `device` (which shares the batch's queue).
fn land<T: TokenId>(device: &Device, batch: WgpuBatch<T>) -> Result<BurnBatch> {
    if device.settings().int_dtype != IntDType::I32 {
        return Err(batch.context().error(
            "land a batch in Burn tensors",
            "the shader writes i32 fields; the Burn device's int dtype must be i32",
        ));
    }
    let ctx = batch.context().clone();
    let plain = device.clone().without_autodiff();
    // Burn may hold recorded work that reads memory its pool is about to hand out again: submit
    // it before our copies, so that the queue orders it first.
    plain
        .flush()
        .map_err(|e| ctx.error("flush Burn's queue", format!("{e:?}")))?;
    let mut encoder = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("batch into Burn tensors"),
        });
    let mut copy = |field: DeviceField<'_>| -> Result<CubeTensor> {
        let shape: Vec<usize> = field.shape[..field.dims].to_vec();
        let tensor = match field.dims {
            1 => Tensor::<1, Int>::empty(shape, &plain).try_into_primitive::<Cube>(),
            _ => Tensor::<2, Int>::empty(shape, &plain).try_into_primitive::<Cube>(),
        }
        .map_err(|e| ctx.error("reach a Burn tensor's buffer", format!("{e:?}")))?;
        with_raw_buffer(&ctx, &tensor, "reach a Burn tensor's buffer", |target| {
            if field.bytes > 0 {
                encoder.copy_buffer_to_buffer(
                    field.buffer,
                    0,
                    &target.buffer,
                    target.offset,
                    field.bytes,
                );
            }
        })?;
        Ok(tensor)
    };
    let ids = copy(batch.ids())?;
    let lengths = copy(batch.lengths())?;
    let labels = batch.labels().map(&mut copy).transpose()?;
    let position_ids = batch.position_ids().map(&mut copy).transpose()?;
    let cu_seqlens = batch.cu_seqlens().map(&mut copy).transpose()?;
    ctx.scoped("copy a batch into Burn tensors", || {
        ctx.queue().submit([encoder.finish()])
    })?;
    let grid = |t: CubeTensor| Tensor::<2, Int>::from_primitive::<Cube>(t).to_device(device);
    let line = |t: CubeTensor| Tensor::<1, Int>::from_primitive::<Cube>(t).to_device(device);
    let lengths = line(lengths);
    let attention_mask = batch.attention_mask().map(|_| {
        let cols = Tensor::<1, Int>::arange(0..batch.width as i64, device)
            .unsqueeze_dim::<2>(0)
            .repeat_dim(0, batch.rows);
        let ends = lengths
            .clone()
            .unsqueeze_dim::<2>(1)
            .repeat_dim(1, batch.width);
        cols.lower(ends).int()
    });
    Ok(BurnBatch {
        step: batch.step,
        rows: batch.rows,
        width: batch.width,
        ids: grid(ids),
        lengths,
        attention_mask,
        labels: labels.map(grid),
        position_ids: position_ids.map(grid),
        cu_seqlens: cu_seqlens.map(line),
        docs: batch.docs,
    })
}

/// [`super::record_losses`] for losses on the wgpu device of [`shared_wgpu`]: the values stay on
/// the device, where `shaders/sketch.wgsl` bins them per dataset; only the sketches come back
/// (`datasets x buckets` counts, not the values). The sketch is exactly the host's except for
/// the sum's last bits (see [`crate::metrics::device`]); `loss_mean` takes that sum.
///
/// # Errors
///
/// As [`super::record_losses`]; [`Error::Device`] when the losses are not contiguous f32 on
/// `ctx`'s device.
pub fn record_losses_wgpu(
    metrics: &mut Aggregator,
    ctx: &WgpuContext,
    names: &[String],
    docs: &[DocRef],
    losses: Tensor<1>,
) -> Result<()> {
    let n = losses.dims()[0];
    check_rows(names, docs, n)?;
    let plain = losses.device().without_autodiff();
    let primitive = losses
        .without_autodiff()
        .try_into_primitive::<Cube>()
        .map_err(|e| ctx.error("reach the losses' buffer", format!("{e:?}")))?;
    if primitive.dtype != DType::F32 || !primitive.is_contiguous() {
        return Err(ctx.error(
            "bin the losses on the device",
            format!(
                "the losses must be contiguous f32, not {:?}",
                primitive.dtype
            ),
        ));
    }
    plain
        .flush()
        .map_err(|e| ctx.error("flush Burn's queue", format!("{e:?}")))?;
    // Rows without tokens have no loss: their dataset index lies past the names, which the
    // shader skips.
    let dataset_of: Vec<u32> = docs
        .iter()
        .map(|d| if d.len > 0 { d.dataset } else { u32::MAX })
        .collect();
    use wgpu::BufferUsages as U;
    let bytes = 4 * n as u64;
    let scratch = ctx.scoped("bin the losses on the device", || {
        let values = ctx.buffer("losses", bytes, U::STORAGE | U::COPY_DST);
        let of = ctx.buffer("loss datasets", bytes, U::STORAGE | U::COPY_DST);
        ctx.queue()
            .write_buffer(&of, 0, bytemuck::cast_slice(&dataset_of));
        let mut encoder = ctx
            .device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("losses to the sketch"),
            });
        with_raw_buffer(ctx, &primitive, "reach the losses' buffer", |source| {
            if bytes > 0 {
                encoder.copy_buffer_to_buffer(&source.buffer, source.offset, &values, 0, bytes);
            }
        })?;
        ctx.queue().submit([encoder.finish()]);
        Ok((values, of))
    })??;
    let map = *metrics.mapping();
    let sketches =
        crate::metrics::device::device_sketches(ctx, &map, &scratch.0, &scratch.1, n, names)?;
    for (name, sketch) in names.iter().zip(&sketches) {
        if sketch.count > 0 {
            metrics.add_sketch(name, names::LOSS, sketch)?;
            metrics.add_mean(name, names::LOSS_MEAN, sketch.sum, sketch.count as f64)?;
        }
    }
    record_counts(metrics, names, docs)
}
