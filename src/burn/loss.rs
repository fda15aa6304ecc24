//! Training metrics per dataset: the per-sample loss of a step, recorded against the dataset
//! each row came from.

use ::burn::tensor::Tensor;

use crate::collate::DocRef;
use crate::error::{Error, Result};
use crate::metrics::{Aggregator, Kind};

/// The metric names [`record_losses`] writes, per dataset.
pub mod names {
    /// Every sample's loss (DISTRIBUTION: count, sum, mean, min, max, percentiles).
    pub const LOSS: &str = "loss";
    /// The mean loss per sample (MEAN, weighted by samples across steps and ranks).
    pub const LOSS_MEAN: &str = "loss_mean";
    /// Samples that had a loss (SUM).
    pub const LOSS_SAMPLES: &str = "loss_samples";
    /// Tokens that carried a label, and so a loss (SUM).
    pub const LOSS_TOKENS: &str = "loss_tokens";
}

/// Records a padded step's per-sample losses (`losses[r]` for row `r`, shape `[B]`) per
/// dataset: row `r`'s dataset is `names[docs[r].dataset]`. The losses are read back once, as
/// one small buffer. Rows that hold no tokens (dropped or skipped samples) have no loss and are
/// not counted. Merge `metrics` into the loader's and reduce them together: one reduce covers
/// the data metrics and the losses of every rank.
///
/// # Errors
///
/// [`Error::Config`] for a packed batch (a packed row holds pieces of several documents) or a
/// loss count that is not the row count; [`Error::Metric`] naming the dataset for a NaN or
/// infinite loss; [`Error::Device`] when the losses cannot be read back.
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

/// [`record_losses`] on values already on the host.
///
/// # Errors
///
/// As [`record_losses`].
pub fn record_loss_values(
    metrics: &mut Aggregator,
    names: &[String],
    docs: &[DocRef],
    losses: &[f64],
) -> Result<()> {
    check_rows(names, docs, losses.len())?;
    for (d, &loss) in docs.iter().zip(losses) {
        if d.len > 0 {
            let dataset = &names[d.dataset as usize];
            metrics.record(dataset, names::LOSS, Kind::Distribution, loss)?;
            metrics.record(dataset, names::LOSS_MEAN, Kind::Mean, loss)?;
        }
    }
    record_counts(metrics, names, docs)
}

/// Checks that `docs` is a padded batch of `losses` rows whose datasets `names` holds.
pub(crate) fn check_rows(names: &[String], docs: &[DocRef], losses: usize) -> Result<()> {
    let rows = docs.iter().map(|d| d.row as usize + 1).max().unwrap_or(0);
    if docs.len() != rows {
        return Err(Error::Config(
            "per-sample losses need a padded batch (one document per row); a packed row holds \
             pieces of several documents"
                .into(),
        ));
    }
    if losses != rows {
        return Err(Error::Config(format!(
            "{losses} losses for a batch of {rows} rows: give one loss per row"
        )));
    }
    if let Some(d) = docs.iter().find(|d| d.dataset as usize >= names.len()) {
        return Err(Error::Config(format!(
            "row {} names dataset {} of {}",
            d.row,
            d.dataset,
            names.len()
        )));
    }
    Ok(())
}

/// The samples and labelled tokens that had a loss, per dataset.
pub(crate) fn record_counts(
    metrics: &mut Aggregator,
    names: &[String],
    docs: &[DocRef],
) -> Result<()> {
    for d in docs.iter().filter(|d| d.len > 0) {
        let dataset = &names[d.dataset as usize];
        metrics.record(dataset, names::LOSS_SAMPLES, Kind::Sum, 1.0)?;
        metrics.record(dataset, names::LOSS_TOKENS, Kind::Sum, (d.len - 1) as f64)?;
    }
    Ok(())
}
