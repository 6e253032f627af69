use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use crate::error::Result;
use crate::nn::{Conv2d, GroupNorm, Linear};
use crate::weights::WeightsView;

/// diffusers' `ResnetBlock2D` (with an optional time-embedding projection, as in the UNet; the
/// VAE's have none).
#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    /// Before `conv1`.
    pub norm1: GroupNorm,
    /// `in → out`, 3×3.
    pub conv1: Conv2d,
    /// `temb → out`, added after `conv1` (UNet only).
    pub time_emb_proj: Option<Linear>,
    /// Before `conv2`.
    pub norm2: GroupNorm,
    /// `out → out`, 3×3.
    pub conv2: Conv2d,
    /// 1×1 `in → out` when the channel count changes.
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    /// Load a block mapping `c_in` to `c_out` channels; `temb` is the time-embedding width
    /// (None for the VAE).
    pub fn load(
        vb: &WeightsView,
        c_in: usize,
        c_out: usize,
        temb: Option<usize>,
        groups: usize,
        eps: f64,
    ) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::load(&vb.pp("norm1"), groups, c_in, eps)?,
            conv1: Conv2d::load(&vb.pp("conv1"), c_in, c_out, 3, 1, 1)?,
            time_emb_proj: match temb {
                Some(t) => Some(Linear::load(&vb.pp("time_emb_proj"), t, c_out, true)?),
                None => None,
            },
            norm2: GroupNorm::load(&vb.pp("norm2"), groups, c_out, eps)?,
            conv2: Conv2d::load(&vb.pp("conv2"), c_out, c_out, 3, 1, 1)?,
            conv_shortcut: if c_in != c_out {
                Some(Conv2d::load(&vb.pp("conv_shortcut"), c_in, c_out, 1, 1, 0)?)
            } else {
                None
            },
        })
    }

    /// # Shapes
    /// - `x`: `[B, in, H, W]`, `temb`: `[B, temb]` (ignored without `time_emb_proj`)
    /// - returns `[B, out, H, W]`
    pub fn forward(&self, x: Tensor<4>, temb: Option<&Tensor<2>>) -> Tensor<4> {
        let h = self.conv1.forward(self.norm1.forward_silu(x.clone()));
        let h = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(t)) => {
                let [b, c] = [t.dims()[0], proj.weight.dims()[1]];
                h + proj.forward(silu(t.clone())).reshape([b, c, 1, 1])
            }
            _ => h,
        };
        let h = self.conv2.forward(self.norm2.forward_silu(h));
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x),
            None => x,
        };
        skip + h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::seeded_noise;
    use crate::weights::Weights;
    use burn::tensor::{DType, Device};

    #[test]
    fn forward_keeps_the_map_and_maps_channels() {
        let dev = Device::flex();
        let w = Weights::random(&dev, DType::F32, 1, 0.1);
        // 8 → 16 channels: a 1×1 shortcut; with a time embedding of width 12.
        let block = ResnetBlock2D::load(&w.pp("r"), 8, 16, Some(12), 4, 1e-5).unwrap();
        assert!(block.conv_shortcut.is_some());
        let x: Tensor<4> = seeded_noise(2, [2, 8, 5, 7], &dev);
        let t: Tensor<2> = seeded_noise(3, [2, 12], &dev);
        assert_eq!(block.forward(x.clone(), Some(&t)).dims(), [2, 16, 5, 7]);
        // Same width: the input is the skip.
        let same = ResnetBlock2D::load(&w.pp("s"), 8, 8, None, 4, 1e-6).unwrap();
        assert!(same.conv_shortcut.is_none() && same.time_emb_proj.is_none());
        assert_eq!(same.forward(x, None).dims(), [2, 8, 5, 7]);
    }
}
