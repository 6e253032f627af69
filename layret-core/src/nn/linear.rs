use burn::module::{Module, Param};
use burn::tensor::Tensor;

use super::cpu_linear::linear;
use crate::error::Result;
use crate::weights::WeightsView;

/// `y = x Wᵀ + b`, PyTorch's `nn.Linear`.
///
/// The checkpoint stores `weight` as `[out, in]`; it is kept transposed as `[in, out]` (burn's
/// layout) so the forward pass is one matmul without a per-call transpose.
#[derive(Module, Debug)]
pub struct Linear {
    /// `[in, out]`.
    pub weight: Param<Tensor<2>>,
    /// `[out]`.
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    /// Load `weight` `[out, in]` (and `bias` `[out]` if `bias`) from `vb`.
    pub fn load(vb: &WeightsView, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        // Transposed once, at load time, before it reaches the device.
        let weight = vb.transposed_matrix("weight", [d_out, d_in])?;
        let bias = if bias {
            Some(Param::from_tensor(vb.tensor("bias", [d_out])?))
        } else {
            None
        };
        Ok(Self {
            weight: Param::from_tensor(weight),
            bias,
        })
    }

    /// # Shapes
    /// `[..., in]` → `[..., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        // flex f32, bf16 and f16: one multi-threaded gemm over all rows, bias fused (see
        // `cpu_linear`).
        let bias = self.bias.as_ref().map(|b| b.val());
        if let Some(y) = linear(&x, &self.weight.val(), bias.as_ref()) {
            return y;
        }
        burn::tensor::module::linear(x, self.weight.val(), bias)
    }
}

impl Linear {
    /// Input width.
    pub fn d_in(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.weight.dims()[1]
    }

    /// A copy with `delta` (`[out, in]`, PyTorch's layout) added to the weight; the original
    /// is untouched (the copy gets new storage for this weight only).
    pub fn with_weight_delta(&self, delta: Tensor<2>) -> Linear {
        Linear {
            weight: Param::from_tensor(merged(self.weight.val(), delta.transpose())),
            bias: self.bias.clone(),
        }
    }
}

/// `weight + delta` summed in f32 and held in the weight's dtype (a half-precision weight
/// gets one rounding, not two).
pub(crate) fn merged<const D: usize>(weight: Tensor<D>, delta: Tensor<D>) -> Tensor<D> {
    let dtype = weight.dtype();
    if dtype == burn::tensor::DType::F32 {
        return weight + delta.cast(dtype);
    }
    let f = burn::tensor::DType::F32;
    (weight.cast(f) + delta.cast(f)).cast(dtype)
}
