use burn::module::Module;
use burn::tensor::Tensor;

use super::config::BlockKind;
use super::resnet::ResnetBlock2D;
use super::transformer::{Transformer2D, TransformerSpec};
use crate::error::Result;
use crate::nn::{Conv2d, resize_nearest};
use crate::processor::AttentionHook;
use crate::weights::WeightsView;

/// `downsamplers.0`: a 3×3 convolution with stride 2 and padding 1.
#[derive(Module, Debug)]
pub struct Downsample2D {
    /// The strided convolution.
    pub conv: Conv2d,
}

/// `upsamplers.0`: nearest-neighbour 2× (or to the skip's size) then a 3×3 convolution.
#[derive(Module, Debug)]
pub struct Upsample2D {
    /// The convolution after upsampling.
    pub conv: Conv2d,
}

impl Upsample2D {
    /// # Shapes
    /// `[B, C, H, W]` → `[B, C, height, width]` (normally `2H × 2W`).
    pub fn forward(&self, x: Tensor<4>, height: usize, width: usize) -> Tensor<4> {
        self.conv.forward(resize_nearest(x, height, width))
    }
}

/// What every block of a UNet level is built with.
pub(crate) struct BlockSpec {
    /// Width of the time embedding.
    pub temb: usize,
    /// GroupNorm epsilon of the ResNets.
    pub eps: f64,
    /// The transformers' settings (heads at this level, text width, norms, projections).
    pub transformer: TransformerSpec,
}

impl BlockSpec {
    fn resnet(&self, vb: &WeightsView, c_in: usize, c_out: usize) -> Result<ResnetBlock2D> {
        let groups = self.transformer.groups;
        ResnetBlock2D::load(vb, c_in, c_out, Some(self.temb), groups, self.eps)
    }

    fn transformer(&self, vb: &WeightsView, c: usize, j: usize) -> Result<Transformer2D> {
        Transformer2D::load(&vb.pp(format!("attentions.{j}")), c, &self.transformer)
    }
}

/// The shape of one down block.
pub(crate) struct DownBlockPlan {
    /// Channels in.
    pub in_channels: usize,
    /// Channels out (the level's).
    pub out_channels: usize,
    /// ResNets.
    pub layers: usize,
    /// With transformers or without.
    pub kind: BlockKind,
    /// Whether it ends with a downsampler (all but the last level).
    pub downsample: bool,
}

/// The shape of one up block.
pub(crate) struct UpBlockPlan {
    /// Channels coming from the block below.
    pub prev_channels: usize,
    /// Channels out (the level's).
    pub out_channels: usize,
    /// Channels of the last skip connection it takes (the next level's).
    pub last_skip_channels: usize,
    /// ResNets minus one (up blocks have `layers + 1`).
    pub layers: usize,
    /// With transformers or without.
    pub kind: BlockKind,
    /// Whether it ends with an upsampler (all but the last level).
    pub upsample: bool,
}

/// `CrossAttnDownBlock2D` (with `attentions`) or `DownBlock2D` (without).
#[derive(Module, Debug)]
pub struct DownBlock {
    /// `resnets.N`.
    pub resnets: Vec<ResnetBlock2D>,
    /// `attentions.N`, empty for `DownBlock2D`.
    pub attentions: Vec<Transformer2D>,
    /// Absent on the last level.
    pub downsamplers: Option<Downsample2D>,
}

impl DownBlock {
    pub(crate) fn load(vb: &WeightsView, spec: &BlockSpec, plan: &DownBlockPlan) -> Result<Self> {
        let (c_in, c_out, layers) = (plan.in_channels, plan.out_channels, plan.layers);
        let (cross_attn, downsample) = (plan.kind == BlockKind::CrossAttention, plan.downsample);
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for j in 0..layers {
            let cin = if j == 0 { c_in } else { c_out };
            resnets.push(spec.resnet(&vb.pp(format!("resnets.{j}")), cin, c_out)?);
            if cross_attn {
                attentions.push(spec.transformer(vb, c_out, j)?);
            }
        }
        let downsamplers = if downsample {
            Some(Downsample2D {
                conv: Conv2d::load(&vb.pp("downsamplers.0.conv"), c_out, c_out, 3, 2, 1)?,
            })
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            downsamplers,
        })
    }

    /// Runs the block, pushing every output the up path will concatenate onto `skips`.
    pub(crate) fn forward(
        &self,
        mut x: Tensor<4>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
        skips: &mut Vec<Tensor<4>>,
        hook: &mut AttentionHook,
    ) -> Result<Tensor<4>> {
        for (j, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, Some(temb));
            if let Some(attn) = self.attentions.get(j) {
                x = attn.forward(x, context, hook)?;
            }
            skips.push(x.clone());
        }
        if let Some(ds) = &self.downsamplers {
            x = ds.conv.forward(x);
            skips.push(x.clone());
        }
        Ok(x)
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, transformer, resnet.
#[derive(Module, Debug)]
pub struct MidBlock {
    /// `resnets.0` and `resnets.1`.
    pub resnets: Vec<ResnetBlock2D>,
    /// `attentions.0`.
    pub attentions: Vec<Transformer2D>,
}

impl MidBlock {
    pub(crate) fn load(vb: &WeightsView, spec: &BlockSpec, c: usize) -> Result<Self> {
        Ok(Self {
            resnets: vec![
                spec.resnet(&vb.pp("resnets.0"), c, c)?,
                spec.resnet(&vb.pp("resnets.1"), c, c)?,
            ],
            attentions: vec![spec.transformer(vb, c, 0)?],
        })
    }

    /// # Shapes
    /// `[B, C, H, W]` → `[B, C, H, W]`.
    pub(crate) fn forward(
        &self,
        x: Tensor<4>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
        hook: &mut AttentionHook,
    ) -> Result<Tensor<4>> {
        let mut x = self.resnets[0].forward(x, Some(temb));
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = attn.forward(x, context, hook)?;
            x = resnet.forward(x, Some(temb));
        }
        Ok(x)
    }
}

/// `CrossAttnUpBlock2D` (with `attentions`) or `UpBlock2D` (without).
#[derive(Module, Debug)]
pub struct UpBlock {
    /// `resnets.N` (layers + 1 of them).
    pub resnets: Vec<ResnetBlock2D>,
    /// `attentions.N`, empty for `UpBlock2D`.
    pub attentions: Vec<Transformer2D>,
    /// Absent on the last level.
    pub upsamplers: Option<Upsample2D>,
}

impl UpBlock {
    pub(crate) fn load(vb: &WeightsView, spec: &BlockSpec, plan: &UpBlockPlan) -> Result<Self> {
        let (prev_out, c_out, c_skip_last) = (
            plan.prev_channels,
            plan.out_channels,
            plan.last_skip_channels,
        );
        let (layers, cross_attn, upsample) = (
            plan.layers,
            plan.kind == BlockKind::CrossAttention,
            plan.upsample,
        );
        let mut resnets = Vec::new();
        let mut attentions = Vec::new();
        for j in 0..=layers {
            let skip = if j == layers { c_skip_last } else { c_out };
            let cin = if j == 0 { prev_out } else { c_out };
            resnets.push(spec.resnet(&vb.pp(format!("resnets.{j}")), cin + skip, c_out)?);
            if cross_attn {
                attentions.push(spec.transformer(vb, c_out, j)?);
            }
        }
        let upsamplers = if upsample {
            Some(Upsample2D {
                conv: Conv2d::load(&vb.pp("upsamplers.0.conv"), c_out, c_out, 3, 1, 1)?,
            })
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsamplers,
        })
    }

    /// Runs the block, popping its skip connections from `skips`; the upsampler produces the
    /// size of the next skip (odd sizes round-trip).
    pub(crate) fn forward(
        &self,
        mut x: Tensor<4>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
        skips: &mut Vec<Tensor<4>>,
        hook: &mut AttentionHook,
    ) -> Result<Tensor<4>> {
        for (j, resnet) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .unwrap_or_else(|| unreachable!("the down path pushes one skip per up resnet"));
            x = resnet.forward(Tensor::cat(vec![x, skip], 1), Some(temb));
            if let Some(attn) = self.attentions.get(j) {
                x = attn.forward(x, context, hook)?;
            }
        }
        if let Some(us) = &self.upsamplers {
            let [_, _, h, w] = x.dims();
            let (th, tw) = skips
                .last()
                .map(|s| (s.dims()[2], s.dims()[3]))
                .unwrap_or((2 * h, 2 * w));
            x = us.forward(x, th, tw);
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::seeded_noise;
    use crate::weights::Weights;
    use burn::tensor::{DType, Device};

    #[test]
    fn resampling_halves_and_restores_odd_maps() {
        let dev = Device::flex();
        let w = Weights::random(&dev, DType::F32, 1, 0.1);
        let down = Downsample2D {
            conv: Conv2d::load(&w.pp("d"), 4, 4, 3, 2, 1).unwrap(),
        };
        let up = Upsample2D {
            conv: Conv2d::load(&w.pp("u"), 4, 4, 3, 1, 1).unwrap(),
        };
        let x: Tensor<4> = seeded_noise(2, [1, 4, 9, 13], &dev);
        // ⌈9/2⌉ × ⌈13/2⌉, as a stride-2 padded conv gives; up to the skip's size again.
        let d = down.conv.forward(x);
        assert_eq!(d.dims(), [1, 4, 5, 7]);
        assert_eq!(up.forward(d.clone(), 9, 13).dims(), [1, 4, 9, 13]);
        assert_eq!(up.forward(d, 10, 14).dims(), [1, 4, 10, 14]);
    }
}
