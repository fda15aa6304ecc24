//! A training step's per-sample losses read back from a Burn tensor and recorded per dataset;
//! the recording itself is [`crate::metrics::record_loss_values`], which needs no Burn type.

use ::burn::tensor::Tensor;

use crate::collate::DocRef;
use crate::error::{Error, Result};
use crate::metrics::{Aggregator, record_loss_values};

/// Records a padded step's per-sample losses (`losses[r]` for row `r`, shape `[B]`) per
/// dataset, as [`record_loss_values`] does (metric names in [`crate::metrics::loss_names`]):
/// row `r`'s dataset is `names[docs[r].dataset]`. The losses are read back once, as one small
/// buffer. Merge `metrics` into the loader's and reduce them together: one reduce covers the
/// data metrics and the losses of every rank.
///
/// # Errors
///
/// As [`record_loss_values`]; [`Error::Device`] when the losses cannot be read back.
pub fn record_losses(
    metrics: &mut Aggregator,
    names: &[String],
    docs: &[DocRef],
    losses: Tensor<1>,
) -> Result<()> {
    let data = losses.into_data();
    let values: Vec<f64> =
        data.convert::<f64>()
            .try_into_vec::<f64>()
            .map_err(|e| Error::Device {
                device: "burn".into(),
                op: "read back the losses".into(),
                reason: format!("{e:?}"),
            })?;
    record_loss_values(metrics, names, docs, &values)
}
