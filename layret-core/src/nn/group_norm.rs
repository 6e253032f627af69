use burn::module::{Module, Param};
use burn::tensor::activation::silu;
use burn::tensor::{DType, Tensor};

use super::cpu_pointwise::group_norm;
use crate::error::Result;
use crate::weights::WeightsView;

/// PyTorch's `nn.GroupNorm` on `[B, C, H, W]` (biased variance per group, affine per channel).
#[derive(Module, Debug)]
pub struct GroupNorm {
    /// `[C]`.
    pub weight: Param<Tensor<1>>,
    /// `[C]`.
    pub bias: Param<Tensor<1>>,
    /// Number of groups; divides `C`.
    pub groups: usize,
    /// Added to the variance.
    pub eps: f64,
}

impl GroupNorm {
    /// Load `weight` and `bias`, both `[channels]`.
    pub fn load(vb: &WeightsView, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: Param::from_tensor(vb.tensor("weight", [channels])?),
            bias: Param::from_tensor(vb.tensor("bias", [channels])?),
            groups,
            eps,
        })
    }

    /// # Shapes
    /// `[B, C, H, W]` → `[B, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_fused(x, false)
    }

    /// `silu(group_norm(x))` in one pass on flex f32 (the ResNet blocks' pre-activation).
    ///
    /// # Shapes
    /// `[B, C, H, W]` → `[B, C, H, W]`.
    pub fn forward_silu(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_fused(x, true)
    }

    /// Half-precision input is normalized in f32 (statistics, affine, SiLU) and rounded back
    /// once, as PyTorch's CPU and CUDA kernels do.
    fn forward_fused(&self, x: Tensor<4>, with_silu: bool) -> Tensor<4> {
        let (gamma, beta) = (self.weight.val(), self.bias.val());
        let dtype = x.dtype();
        if matches!(dtype, DType::F16 | DType::BF16) {
            let f = DType::F32;
            return self
                .forward_with(x.cast(f), gamma.cast(f), beta.cast(f), with_silu)
                .cast(dtype);
        }
        self.forward_with(x, gamma, beta, with_silu)
    }

    fn forward_with(
        &self,
        x: Tensor<4>,
        gamma: Tensor<1>,
        beta: Tensor<1>,
        with_silu: bool,
    ) -> Tensor<4> {
        if let Some(y) = group_norm(&x, &gamma, &beta, self.groups, self.eps, with_silu) {
            return y;
        }
        let y = Self::forward_ops(x, gamma, beta, self.groups, self.eps);
        if with_silu { silu(y) } else { y }
    }

    /// The same with burn's tensor ops (other backends and dtypes).
    fn forward_ops(
        x: Tensor<4>,
        gamma: Tensor<1>,
        beta: Tensor<1>,
        groups: usize,
        eps: f64,
    ) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let g = groups;
        let xg = x.reshape([b, g, (c / g) * h * w]);
        let (var, mean) = xg.clone().var_mean_bias(2);
        let xg = (xg - mean).div(var.add_scalar(eps).sqrt());
        let x = xg.reshape([b, c, h, w]);
        x.mul(gamma.reshape([1, c, 1, 1]))
            .add(beta.reshape([1, c, 1, 1]))
    }
}
