use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::ops::ConvOptions;

use super::cpu_conv::{ConvGeometry, conv2d};
use super::linear::merged;
use crate::error::Result;
use crate::weights::WeightsView;

/// PyTorch's `nn.Conv2d` (square kernel, equal stride and padding on both axes, with bias).
#[derive(Module, Debug)]
pub struct Conv2d {
    /// `[out, in, k, k]`.
    pub weight: Param<Tensor<4>>,
    /// `[out]`.
    pub bias: Param<Tensor<1>>,
    /// Stride on both axes.
    pub stride: usize,
    /// Zero padding on both axes.
    pub padding: usize,
}

impl Conv2d {
    /// Load `weight` `[out, in, k, k]` and `bias` `[out]`.
    pub fn load(
        vb: &WeightsView,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: Param::from_tensor(vb.tensor("weight", [c_out, c_in, kernel, kernel])?),
            bias: Param::from_tensor(vb.tensor("bias", [c_out])?),
            stride,
            padding,
        })
    }

    /// A copy with `delta` (`[out, in, k, k]`) added to the weight; the original is untouched.
    pub fn with_weight_delta(&self, delta: Tensor<4>) -> Conv2d {
        Conv2d {
            weight: Param::from_tensor(merged(self.weight.val(), delta)),
            bias: self.bias.clone(),
            stride: self.stride,
            padding: self.padding,
        }
    }

    /// # Shapes
    /// `[B, in, H, W]` → `[B, out, H', W']`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        // flex f32, bf16 and f16: layret's kernel (reads the weight in place; see `cpu_conv`).
        let [_, _, k, _] = self.weight.dims();
        let geometry = ConvGeometry {
            kernel: k,
            stride: self.stride,
            padding: self.padding,
        };
        if let Some(y) = conv2d(&x, &self.weight.val(), &self.bias.val(), geometry) {
            return y;
        }
        burn::tensor::module::conv2d(
            x,
            self.weight.val(),
            Some(self.bias.val()),
            ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1),
        )
    }
}
