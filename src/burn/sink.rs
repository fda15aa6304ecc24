//! The Burn sinks: batches land as Burn `Int` tensors on any `burn::tensor::Device`, in that
//! device's own int dtype. [`BurnSink`] pads on the host and needs no wgpu;
//! `BurnShaderSink` (feature `wgpu`) pads on a wgpu device shared with Burn.

use ::burn::tensor::{Device, Int, IntDType, Tensor, TensorData};

use crate::collate::{
    Batch, CollateConfig, DocRef, PadValues, PaddedFields, Pool, PooledBuf, StagedBatch,
    cu_seqlens, fill_padded,
};
use crate::device::{Bound, DeviceBatch, DeviceSink};
use crate::error::{Error, Result};
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
/// `BurnShaderSink` (feature `wgpu`) pads on a wgpu device instead.
#[derive(Clone, Debug)]
pub struct BurnSink {
    device: Device,
    dtype: IntDType,
    pool: Pool,
    config: Bound,
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
            pool: Pool::new(),
            config: Bound::default(),
        })
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
    fn prepare_batch<T: TokenId>(
        &self,
        staged: StagedBatch<T>,
        config: &CollateConfig,
    ) -> HostFields {
        let pool = &self.pool;
        match self.dtype {
            IntDType::I64 => self.fields(staged, config, pool, |v| v),
            // `bind` checked that every id this sink is handed fits.
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

/// Checks that `T` ids fit the int dtype `dtype` of the Burn device `device`.
///
/// # Errors
///
/// [`Error::Device`] naming the id type and the dtype.
pub(crate) fn check_ids<T: TokenId>(device: &Device, dtype: IntDType) -> Result<()> {
    let (lo, hi) = T::RANGE;
    let fits = dtype == IntDType::I64 || (lo >= i32::MIN as i64 && hi <= i32::MAX as i64);
    if !fits {
        return Err(Error::Device {
            device: format!("burn {device:?}"),
            op: format!("collate {} ids", T::NAME),
            reason: format!(
                "{} ids do not fit the device's int dtype {dtype:?}; use i32 ids or an i64 device",
                T::NAME,
            ),
        });
    }
    Ok(())
}

impl<T: TokenId> DeviceSink<T> for BurnSink {
    type Prepared = HostFields;
    type Output = BurnBatch;

    fn device(&self) -> String {
        format!("burn {:?}", self.device)
    }

    fn staging(&self) -> &Pool {
        &self.pool
    }

    /// Host memory takes any batch the loader allows; the ids must fit the device's int dtype.
    fn bind(&mut self, config: &CollateConfig, _rows: usize) -> Result<()> {
        check_ids::<T>(&self.device, self.dtype)?;
        self.config.set(config);
        Ok(())
    }

    fn prepare(&self, staged: StagedBatch<T>) -> Result<HostFields> {
        let config = self.config.get(|| format!("burn {:?}", self.device))?;
        Ok(self.prepare_batch(staged, config))
    }

    fn upload(&self, p: HostFields, _batch: u64) -> Result<BurnBatch> {
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

/// A Burn tensor's values as i64, whatever its int dtype.
fn values<const D: usize>(tensor: &Tensor<D, Int>) -> Result<Vec<i64>> {
    tensor
        .clone()
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .map_err(|e| Error::Device {
            device: format!("burn {:?}", tensor.device()),
            op: "read a batch back".into(),
            reason: format!("{e:?}"),
        })
}

/// `values` in `pool`, each converted to `E`.
fn host_field<E: bytemuck::Pod>(
    pool: &Pool,
    values: &[i64],
    convert: impl Fn(i64) -> Option<E>,
) -> Result<PooledBuf<E>> {
    let mut out = pool.take::<E>(values.len());
    for (o, &v) in out.iter_mut().zip(values) {
        *o = convert(v).ok_or_else(|| Error::Device {
            device: "burn".into(),
            op: "read a batch back".into(),
            reason: format!("the value {v} does not fit the host field"),
        })?;
    }
    Ok(out)
}

/// The Burn batch's host copy reads every tensor back and converts it to the host batch's types
/// (`T` ids, u32 lengths, a u8 mask, i32 `cu_seqlens`).
impl<T: TokenId> DeviceBatch<T> for BurnBatch {
    fn step(&self) -> u64 {
        self.step
    }

    fn rows(&self) -> usize {
        self.rows
    }

    fn width(&self) -> usize {
        self.width
    }

    fn docs(&self) -> &[DocRef] {
        &self.docs
    }

    fn to_host(&self) -> Result<Batch<T>> {
        let pool = Pool::new();
        let id = |v: i64| T::try_from(v).ok();
        let grid = |t: &Option<Tensor<2, Int>>| -> Result<Option<PooledBuf<T>>> {
            t.as_ref()
                .map(|t| host_field(&pool, &values(t)?, id))
                .transpose()
        };
        let mut docs = pool.take::<DocRef>(self.docs.len());
        docs.copy_from_slice(&self.docs);
        Ok(Batch {
            step: self.step,
            rows: self.rows,
            width: self.width,
            ids: host_field(&pool, &values(&self.ids)?, id)?,
            lengths: host_field(&pool, &values(&self.lengths)?, |v| u32::try_from(v).ok())?,
            attention_mask: self
                .attention_mask
                .as_ref()
                .map(|t| host_field(&pool, &values(t)?, |v| u8::try_from(v).ok()))
                .transpose()?,
            labels: grid(&self.labels)?,
            position_ids: grid(&self.position_ids)?,
            cu_seqlens: self
                .cu_seqlens
                .as_ref()
                .map(|t| host_field(&pool, &values(t)?, |v| i32::try_from(v).ok()))
                .transpose()?,
            docs,
        })
    }
}
