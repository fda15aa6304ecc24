//! The Burn sink: batches land as Burn `Int` tensors on any `burn::tensor::Device`, in that
//! device's own int dtype.

use ::burn::tensor::{Device, Int, IntDType, Tensor, TensorData};

use crate::collate::{
    CollateConfig, DocRef, PadValues, PaddedFields, Pool, PooledBuf, StagedBatch, cu_seqlens,
    fill_padded,
};
use std::sync::Arc;

use crate::device::{DeviceSink, RaggedBatch, WgpuSink};
use crate::error::{Error, Result};
use crate::gpu::WgpuContext;
use crate::shard::TokenId;

/// A batch as Burn tensors: every field of the host [`crate::collate::Batch`] (the reference), as `Int`
/// tensors in the device's int dtype. The mask holds 1 and 0 (compare it with
/// `equal_elem(1)` for a `Bool` mask).
#[derive(Debug)]
pub struct BurnBatch {
    /// The step this batch belongs to.
    pub step: u64,
    /// Rows, B.
    pub rows: usize,
    /// Columns, T.
    pub width: usize,
    /// Token ids `[B, T]`.
    pub ids: Tensor<2, Int>,
    /// Real tokens per row `[B]`.
    pub lengths: Tensor<1, Int>,
    /// `[B, T]`: 1 on real tokens, 0 on padding.
    pub attention_mask: Option<Tensor<2, Int>>,
    /// `[B, T]`: the next token of the same document, else the ignore id (-100).
    pub labels: Option<Tensor<2, Int>>,
    /// `[B, T]`: position within the row, restarting per document when packed.
    pub position_ids: Option<Tensor<2, Int>>,
    /// `[segments + 1]`: document boundaries over the real tokens (packed batches only).
    pub cu_seqlens: Option<Tensor<1, Int>>,
    /// The document pieces, in row order, on the host: which dataset and sample each row holds.
    pub docs: PooledBuf<DocRef>,
}

/// What a worker hands the caller's thread: host fields in the device's int dtype, or (with
/// [`BurnSink::with_shader`]) the ragged batch for the pad shader.
pub enum BurnPrepared<T: TokenId> {
    /// Padded on the host.
    Host(Box<HostFields>),
    /// Ragged, for `shaders/pad_collate.wgsl`.
    Shader(Box<RaggedBatch<T>>),
}

/// The host side of a [`BurnBatch`]: each field already in the device's int dtype.
pub struct HostFields {
    step: u64,
    rows: usize,
    width: usize,
    ids: TensorData,
    lengths: TensorData,
    attention_mask: Option<TensorData>,
    labels: Option<TensorData>,
    position_ids: Option<TensorData>,
    cu_seqlens: Option<TensorData>,
    docs: PooledBuf<DocRef>,
}

/// Lands batches as Burn tensors on `device`. The loader's workers pad each batch on the host
/// (as [`crate::device::HostSink`] does) and write its fields straight into the buffers Burn
/// takes, in the device's int dtype; the caller's thread only hands those to the device.
///
/// Padding on the host is the default because it measured faster than padding on the device
/// on every device kind tried (see the README's Burn section and `benches/loader.rs`);
/// [`BurnSink::with_shader`] pads on a wgpu device instead.
#[derive(Clone, Debug)]
pub struct BurnSink {
    device: Device,
    dtype: IntDType,
    shader: Option<Arc<WgpuSink>>,
}

impl BurnSink {
    /// A sink onto `device`, whose int dtype it reads from the device's settings.
    ///
    /// # Errors
    ///
    /// [`Error::Device`] when the device's int dtype is not i32 or i64.
    pub fn new(device: &Device) -> Result<Self> {
        let dtype = device.settings().int_dtype;
        if !matches!(dtype, IntDType::I32 | IntDType::I64) {
            return Err(Error::Device {
                device: format!("{device:?}"),
                op: "collate ids".into(),
                reason: format!(
                    "the device's int dtype is {dtype:?}; Burn batches need i32 or i64 (set the \
                     device's int dtype to one of them)"
                ),
            });
        }
        Ok(BurnSink {
            device: device.clone(),
            dtype,
            shader: None,
        })
    }

    /// A sink that pads on the device: ragged ids cross to `ctx`'s device, the pad shader
    /// collates them there, and each field is copied into a Burn tensor on the same device (see
    /// [`super::shared_wgpu`], which makes the pair). Slower than host padding on every device
    /// measured so far; it is here for devices where it is not, and to keep the data on the GPU.
    ///
    /// # Errors
    ///
    /// As [`BurnSink::new`]; [`Error::Device`] when the device's int dtype is not i32 (the
    /// shader writes i32 fields).
    pub fn with_shader(device: &Device, ctx: Arc<WgpuContext>) -> Result<Self> {
        let mut sink = Self::new(device)?;
        if sink.dtype != IntDType::I32 {
            return Err(ctx.error(
                "pad batches for Burn",
                format!(
                    "the Burn device's int dtype is {:?}, the shader's i32",
                    sink.dtype
                ),
            ));
        }
        sink.shader = Some(Arc::new(WgpuSink::new(ctx)?));
        Ok(sink)
    }

    /// The device batches land on.
    pub fn burn_device(&self) -> &Device {
        &self.device
    }

    /// The int dtype of every field.
    pub fn dtype(&self) -> IntDType {
        self.dtype
    }

    /// The Burn fields of a staged batch, padded on the host straight into the vectors Burn
    /// takes, in the device's int dtype: one pass per field.
    pub(crate) fn prepare_batch<T: TokenId>(
        &self,
        staged: StagedBatch<T>,
        config: &CollateConfig,
        pool: &Pool,
    ) -> HostFields {
        match self.dtype {
            IntDType::I64 => self.fields(staged, config, pool, |v| v),
            // `worker` checked that every id this sink is handed fits.
            _ => self.fields(staged, config, pool, |v| v as i32),
        }
    }

    fn fields<T: TokenId, E: ::burn::tensor::Element + Default>(
        &self,
        staged: StagedBatch<T>,
        config: &CollateConfig,
        pool: &Pool,
        cast: impl Fn(i64) -> E + Copy,
    ) -> HostFields {
        let (rows, width) = (staged.rows, staged.width);
        let cells = rows * width;
        let grid = [rows, width];
        let field = |on: bool| on.then(|| vec![E::default(); cells]);
        let mut ids = vec![E::default(); cells];
        let (mut mask, mut labels, mut positions) = (
            field(config.attention_mask),
            field(config.labels),
            field(config.position_ids),
        );
        let pad = config.pad_value::<T>();
        let values = PadValues {
            id: |t: T| cast(t.into()),
            pad: cast(pad.into()),
            ignore: cast(T::IGNORE.into()),
            position: |j: usize| cast(j as i64),
        };
        fill_padded(
            &staged,
            &values,
            (cast(1), cast(0)),
            PaddedFields {
                ids: &mut ids,
                attention_mask: mask.as_deref_mut(),
                labels: labels.as_deref_mut(),
                position_ids: positions.as_deref_mut(),
            },
        );
        let lengths: Vec<E> = (0..rows)
            .map(|r| cast(staged.row(r).len() as i64))
            .collect();
        let cu = staged.packed.then(|| {
            let cu = cu_seqlens(&staged.docs, rows, pool);
            TensorData::new(
                cu.iter().map(|&c| cast(c as i64)).collect::<Vec<E>>(),
                [cu.len()],
            )
        });
        let on_grid = |v: Vec<E>| TensorData::new(v, grid);
        HostFields {
            step: staged.step,
            rows,
            width,
            ids: on_grid(ids),
            lengths: TensorData::new(lengths, [rows]),
            attention_mask: mask.map(on_grid),
            labels: labels.map(on_grid),
            position_ids: positions.map(on_grid),
            cu_seqlens: cu,
            docs: staged.docs,
        }
    }
}

impl<T: TokenId> DeviceSink<T> for BurnSink {
    type Worker = ();
    type Prepared = BurnPrepared<T>;
    type Output = BurnBatch;

    fn device(&self) -> String {
        format!("burn {:?}", self.device)
    }

    fn staging(&self) -> Pool {
        match &self.shader {
            Some(w) => DeviceSink::<T>::staging(&**w),
            None => Pool::new(),
        }
    }

    fn check_batch(&self, rows: usize, config: &CollateConfig) -> Result<()> {
        match &self.shader {
            Some(w) => DeviceSink::<T>::check_batch(&**w, rows, config),
            None => Ok(()),
        }
    }

    fn worker(&self) -> Result<()> {
        if let Some(w) = &self.shader {
            DeviceSink::<T>::worker(&**w)?;
        }
        let (lo, hi) = T::RANGE;
        let fits = self.dtype == IntDType::I64 || (lo >= i32::MIN as i64 && hi <= i32::MAX as i64);
        if !fits {
            return Err(Error::Device {
                device: DeviceSink::<T>::device(self),
                op: format!("collate {} ids", T::NAME),
                reason: format!(
                    "{} ids do not fit the device's int dtype {:?}; use i32 ids or an i64 device",
                    T::NAME,
                    self.dtype
                ),
            });
        }
        Ok(())
    }

    fn prepare(
        &self,
        _worker: &mut (),
        staged: StagedBatch<T>,
        config: &CollateConfig,
        pool: &Pool,
    ) -> Result<BurnPrepared<T>> {
        match &self.shader {
            Some(w) => {
                let ragged = w.prepare(&mut (), staged, config, pool)?;
                Ok(BurnPrepared::Shader(Box::new(ragged)))
            }
            None => Ok(BurnPrepared::Host(Box::new(
                self.prepare_batch(staged, config, pool),
            ))),
        }
    }

    fn upload(&self, p: BurnPrepared<T>, batch: u64, config: &CollateConfig) -> Result<BurnBatch> {
        let p = match (p, &self.shader) {
            (BurnPrepared::Host(p), _) => *p,
            (BurnPrepared::Shader(p), Some(w)) => {
                return super::wgpu::land(&self.device, w.upload(*p, batch, config)?);
            }
            (BurnPrepared::Shader(_), None) => {
                unreachable!("only a sink with a shader prepares for it")
            }
        };
        let grid = |d: TensorData| Tensor::<2, Int>::from_data(d, &self.device);
        let line = |d: TensorData| Tensor::<1, Int>::from_data(d, &self.device);
        Ok(BurnBatch {
            step: p.step,
            rows: p.rows,
            width: p.width,
            ids: grid(p.ids),
            lengths: line(p.lengths),
            attention_mask: p.attention_mask.map(grid),
            labels: p.labels.map(grid),
            position_ids: p.position_ids.map(grid),
            cu_seqlens: p.cu_seqlens.map(line),
            docs: p.docs,
        })
    }
}
