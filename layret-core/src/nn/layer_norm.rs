use burn::module::{Module, Param};
use burn::tensor::{DType, Tensor};

use super::cpu_pointwise::layer_norm;
use crate::error::Result;
use crate::weights::WeightsView;

/// PyTorch's `nn.LayerNorm` over the last dimension (biased variance, f32 statistics).
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// `[d]`.
    pub weight: Param<Tensor<1>>,
    /// `[d]`.
    pub bias: Param<Tensor<1>>,
    /// Added to the variance.
    pub eps: f64,
}

impl LayerNorm {
    /// Load `weight` and `bias`, both `[d]`.
    pub fn load(vb: &WeightsView, d: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: Param::from_tensor(vb.tensor("weight", [d])?),
            bias: Param::from_tensor(vb.tensor("bias", [d])?),
            eps,
        })
    }

    /// # Shapes
    /// `[..., d]` → `[..., d]`.
    ///
    /// Half-precision input is normalized in f32 (statistics, affine) and rounded back once.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let (gamma, beta) = (self.weight.val(), self.bias.val());
        let dtype = x.dtype();
        if matches!(dtype, DType::F16 | DType::BF16) {
            let f = DType::F32;
            return self
                .forward_with(x.cast(f), gamma.cast(f), beta.cast(f))
                .cast(dtype);
        }
        self.forward_with(x, gamma, beta)
    }

    fn forward_with<const D: usize>(
        &self,
        x: Tensor<D>,
        gamma: Tensor<1>,
        beta: Tensor<1>,
    ) -> Tensor<D> {
        // flex f32: one fused pass (see `cpu_pointwise`).
        if let Some(y) = layer_norm(&x, &gamma, &beta, self.eps) {
            return y;
        }
        let (var, mean) = x.clone().var_mean_bias(D - 1);
        let x = (x - mean).div(var.add_scalar(self.eps).sqrt());
        let shape = {
            let mut s = [1usize; D];
            s[D - 1] = self.weight.dims()[0];
            s
        };
        x.mul(gamma.reshape(shape)).add(beta.reshape(shape))
    }
}
