//! A small next-token model: an embedding, one hidden layer, and logits over the vocabulary;
//! and the per-sample loss that shardflow records per dataset.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, log_softmax};
use burn::tensor::{Device, Int, Tensor};

/// Embedding, a GELU layer, logits.
#[derive(Module, Debug)]
pub struct NextToken {
    embed: Embedding,
    hidden: Linear,
    out: Linear,
}

impl NextToken {
    /// A model over ids `0..vocab` with `width` hidden units.
    pub fn new(vocab: usize, width: usize, device: &Device) -> Self {
        NextToken {
            embed: EmbeddingConfig::new(vocab, width).init(device),
            hidden: LinearConfig::new(width, width).init(device),
            out: LinearConfig::new(width, vocab).init(device),
        }
    }

    /// Logits `[B, T, vocab]` for ids `[B, T]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let x = self.embed.forward(ids);
        let x = x.clone() + gelu(self.hidden.forward(x));
        self.out.forward(x)
    }

    /// The mean negative log-likelihood of each row's labelled tokens, `[B]` (0 for a row
    /// without labels); labels below 0 (the ignore id, -100) are not counted.
    pub fn per_sample_loss(&self, ids: Tensor<2, Int>, labels: Tensor<2, Int>) -> Tensor<1> {
        let logp = log_softmax(self.forward(ids), 2);
        let keep = labels.clone().greater_equal_elem(0).float();
        let target = labels.clamp_min(0).unsqueeze_dim::<3>(2);
        let nll = logp.gather(2, target).squeeze_dim::<2>(2).neg() * keep.clone();
        let counts = keep.sum_dim(1).clamp_min(1.0);
        (nll.sum_dim(1) / counts).squeeze_dim::<1>(1)
    }
}
