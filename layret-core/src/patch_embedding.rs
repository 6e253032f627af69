//! The patch embedding of vision transformers (CLIP's vision tower, ViT): a `p × p` stride-`p`
//! convolution, computed as one matrix product over the flattened patches.

use burn::module::{Module, Param};
use burn::tensor::Tensor;

use crate::error::{Error, Result};
use crate::weights::WeightsView;

/// `patch_embedding` / `patch_embeddings.projection`: `weight` `[hidden, 3, p, p]`, optional
/// `bias`.
#[derive(Module, Debug)]
pub struct PatchEmbedding {
    /// `[3·p·p, hidden]` (the conv weight flattened and transposed).
    pub weight: Param<Tensor<2>>,
    /// `[hidden]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Patch size `p`.
    pub patch: usize,
}

impl PatchEmbedding {
    /// Load `weight` (and `bias` if `bias`) for `channels` input channels.
    pub fn load(
        vb: &WeightsView,
        channels: usize,
        hidden: usize,
        patch: usize,
        bias: bool,
    ) -> Result<Self> {
        // Flattened and transposed in host memory, uploaded once.
        let w: Tensor<4> = vb.host_tensor("weight", [hidden, channels, patch, patch])?;
        let w = w.reshape([hidden, channels * patch * patch]).transpose();
        let dtype = w.dtype();
        let w = Tensor::from_data(w.into_data(), (vb.device(), dtype));
        let bias = if bias {
            Some(Param::from_tensor(vb.tensor("bias", [hidden])?))
        } else {
            None
        };
        Ok(Self {
            weight: Param::from_tensor(w),
            bias,
            patch,
        })
    }

    /// # Shapes
    /// `[B, C, H, W]` with `H`, `W` multiples of `p` → `[B, (H/p)·(W/p), hidden]`, patches in
    /// row-major order.
    pub fn forward(&self, x: Tensor<4>) -> Result<Tensor<3>> {
        let [b, c, h, w] = x.dims();
        let p = self.patch;
        if h % p != 0 || w % p != 0 || c * p * p != self.weight.dims()[0] {
            return Err(Error::Shape {
                what: "vision transformer input".into(),
                expected: format!(
                    "[B, {}, H, W] with H and W multiples of {p}",
                    self.weight.dims()[0] / (p * p)
                ),
                got: vec![b, c, h, w],
            });
        }
        let (gh, gw) = (h / p, w / p);
        let patches = x
            .reshape([b, c, gh, p, gw, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, gh * gw, c * p * p]);
        let out = patches.matmul(self.weight.val().unsqueeze::<3>());
        Ok(match &self.bias {
            Some(bias) => out + bias.val().unsqueeze::<3>(),
            None => out,
        })
    }
}
