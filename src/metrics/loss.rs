//! Per-sample training losses recorded per dataset: the host side of loss recording, with no
//! tensor library involved. `crate::burn::record_losses` reads a Burn tensor back and calls
//! [`record_loss_values`].

use crate::collate::DocRef;
use crate::error::{Error, Result};
use crate::metrics::{Aggregator, Kind};

/// The metric names [`record_loss_values`] writes, per dataset.
pub mod loss_names {
    /// Every sample's loss (DISTRIBUTION: count, sum, mean, min, max, percentiles).
    pub const LOSS: &str = "loss";
    /// The mean loss per sample (MEAN, weighted by samples across steps and ranks).
    pub const LOSS_MEAN: &str = "loss_mean";
    /// Samples that had a loss (SUM).
    pub const LOSS_SAMPLES: &str = "loss_samples";
    /// Tokens that carried a label, and so a loss (SUM).
    pub const LOSS_TOKENS: &str = "loss_tokens";
}

/// Records a padded step's per-sample losses (`losses[r]` for row `r`) per dataset: row `r`'s
/// dataset is `names[docs[r].dataset]`. Rows that hold no tokens (dropped or skipped samples)
/// have no loss and are not counted. Merge `metrics` into the loader's and reduce them
/// together: one reduce covers the data metrics and the losses of every rank.
///
/// # Errors
///
/// [`Error::Config`] for a packed batch (a packed row holds pieces of several documents), a
/// loss count that is not the row count, or a row whose dataset `names` does not hold;
/// [`Error::Metric`] naming the dataset for a NaN or infinite loss.
///
/// # Example
///
/// ```
/// use shardflow::collate::DocRef;
/// use shardflow::metrics::{Aggregator, record_loss_values};
///
/// let names = ["web".to_string(), "code".to_string()];
/// let docs = [
///     DocRef { dataset: 0, row: 0, len: 5, ..Default::default() },
///     DocRef { dataset: 1, row: 1, len: 3, ..Default::default() },
/// ];
/// let mut metrics = Aggregator::default();
/// record_loss_values(&mut metrics, &names, &docs, &[2.0, 4.0])?;
/// let report = metrics.report();
/// assert_eq!(report.number("web", "loss_mean"), Some(2.0));
/// assert_eq!(report.number("code", "loss_tokens"), Some(2.0));
/// # Ok::<(), shardflow::Error>(())
/// ```
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
            metrics.record(dataset, loss_names::LOSS, Kind::Distribution, loss)?;
            metrics.record(dataset, loss_names::LOSS_MEAN, Kind::Mean, loss)?;
        }
    }
    record_loss_counts(metrics, names, docs)
}

/// Checks that `docs` is a padded batch of `losses` rows whose datasets `names` holds (what
/// [`record_loss_values`] and a device's loss binning need before they record anything).
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
pub(crate) fn record_loss_counts(
    metrics: &mut Aggregator,
    names: &[String],
    docs: &[DocRef],
) -> Result<()> {
    for d in docs.iter().filter(|d| d.len > 0) {
        let dataset = &names[d.dataset as usize];
        metrics.record(dataset, loss_names::LOSS_SAMPLES, Kind::Sum, 1.0)?;
        metrics.record(
            dataset,
            loss_names::LOSS_TOKENS,
            Kind::Sum,
            (d.len - 1) as f64,
        )?;
    }
    Ok(())
}
