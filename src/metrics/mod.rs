//! Data metrics: kinds, the [`Aggregator`], the distribution [`Sketch`], the fused cross-rank
//! reduce, the standard metric transform the loader runs on every batch, and per-sample training
//! losses recorded per dataset ([`record_loss_values`]).
//!
//! | kind | state | merged by | reported |
//! |---|---|---|---|
//! | SUM | sum | + | the sum |
//! | MEAN | sum, count | + | sum / count (weighted by count, never a mean of means) |
//! | MAX | max | max | the max |
//! | MIN | min | min (reduced as max of −min) | the min |
//! | DISTRIBUTION | sketch + exact count, sum, min, max | + per bucket | count, sum, mean, min, max, p05, p50, p95 |
//! | CATEGORICAL | count per category | + | the counts |

mod aggregator;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod device;
mod loss;
mod reduce;
mod report;
mod sketch;
mod standard;
pub(crate) mod wire;

pub use aggregator::*;
pub use loss::*;
pub use report::*;
pub use sketch::*;
pub use standard::*;
