use burn::module::{Module, Param};
use burn::tensor::{Int, Tensor};

use crate::error::Result;
use crate::weights::WeightsView;

/// PyTorch's `nn.Embedding`: a `[num, dim]` lookup table.
#[derive(Module, Debug)]
pub struct Embedding {
    /// `[num, dim]`.
    pub weight: Param<Tensor<2>>,
}

impl Embedding {
    /// Load `weight` `[num, dim]`.
    pub fn load(vb: &WeightsView, num: usize, dim: usize) -> Result<Self> {
        Ok(Self {
            weight: Param::from_tensor(vb.tensor("weight", [num, dim])?),
        })
    }

    /// Number of rows.
    pub fn num_embeddings(&self) -> usize {
        self.weight.dims()[0]
    }

    /// # Shapes
    /// ids `[B, L]` (each `< num`) → `[B, L, dim]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        burn::tensor::module::embedding(self.weight.val(), ids)
    }
}
