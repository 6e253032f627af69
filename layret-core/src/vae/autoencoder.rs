use std::path::Path;

use burn::module::Module;
use burn::tensor::ops::PadMode;
use burn::tensor::{DType, Device, Tensor};

use super::config::VaeConfig;
use crate::error::{Error, Result};
use crate::nn::{Conv2d, GroupNorm, Linear, resize_nearest};
use crate::processor::default_attention;
use crate::unet::{ResnetBlock2D, ToOut};
use crate::weights::{Weights, WeightsView};

/// The single-head spatial self-attention of the VAE's mid block (with its own GroupNorm and
/// a residual). Reads both the current (`to_q/to_k/to_v/to_out.0`) and the legacy
/// (`query/key/value/proj_attn`) key names.
#[derive(Module, Debug)]
pub struct VaeAttention {
    /// `group_norm` (eps 1e-6).
    pub group_norm: GroupNorm,
    /// Query projection (with bias).
    pub to_q: Linear,
    /// Key projection.
    pub to_k: Linear,
    /// Value projection.
    pub to_v: Linear,
    /// Output projection.
    pub to_out: ToOut,
}

impl VaeAttention {
    fn load(vb: &WeightsView, c: usize, groups: usize) -> Result<Self> {
        let legacy = !vb.contains("to_q.weight") && vb.contains("query.weight");
        let name = |new: &'static str, old: &'static str| if legacy { old } else { new };
        Ok(Self {
            group_norm: GroupNorm::load(&vb.pp("group_norm"), groups, c, 1e-6)?,
            to_q: Linear::load(&vb.pp(name("to_q", "query")), c, c, true)?,
            to_k: Linear::load(&vb.pp(name("to_k", "key")), c, c, true)?,
            to_v: Linear::load(&vb.pp(name("to_v", "value")), c, c, true)?,
            to_out: ToOut {
                linear: Linear::load(&vb.pp(name("to_out.0", "proj_attn")), c, c, true)?,
            },
        })
    }

    /// # Shapes
    /// `[B, C, H, W]` → `[B, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let t = self
            .group_norm
            .forward(x.clone())
            .reshape([b, c, h * w])
            .swap_dims(1, 2);
        let split = |t: Tensor<3>| t.reshape([b, 1, h * w, c]);
        let q = split(self.to_q.forward(t.clone()));
        let k = split(self.to_k.forward(t.clone()));
        let v = split(self.to_v.forward(t));
        let o = default_attention(q, k, v).reshape([b, h * w, c]);
        let o = self
            .to_out
            .linear
            .forward(o)
            .swap_dims(1, 2)
            .reshape([b, c, h, w]);
        o + x
    }
}

/// `UNetMidBlock2D`: resnet, attention, resnet.
#[derive(Module, Debug)]
pub struct VaeMidBlock {
    /// `resnets.0`, `resnets.1`.
    pub resnets: Vec<ResnetBlock2D>,
    /// `attentions.0`.
    pub attentions: Vec<VaeAttention>,
}

impl VaeMidBlock {
    fn load(vb: &WeightsView, c: usize, groups: usize) -> Result<Self> {
        let resnet = |i: usize| {
            ResnetBlock2D::load(&vb.pp(format!("resnets.{i}")), c, c, None, groups, 1e-6)
        };
        Ok(Self {
            resnets: vec![resnet(0)?, resnet(1)?],
            attentions: vec![VaeAttention::load(&vb.pp("attentions.0"), c, groups)?],
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.resnets[0].forward(x, None);
        let x = self.attentions[0].forward(x);
        self.resnets[1].forward(x, None)
    }
}

/// `DownEncoderBlock2D`.
#[derive(Module, Debug)]
pub struct EncoderBlock {
    /// `resnets.N`.
    pub resnets: Vec<ResnetBlock2D>,
    /// `downsamplers.0.conv`: stride 2, padding 0 after a (0, 1, 0, 1) zero pad.
    pub downsamplers: Option<Conv2d>,
}

/// `UpDecoderBlock2D`.
#[derive(Module, Debug)]
pub struct DecoderBlock {
    /// `resnets.N`.
    pub resnets: Vec<ResnetBlock2D>,
    /// `upsamplers.0.conv` after nearest 2×.
    pub upsamplers: Option<Conv2d>,
}

/// The VAE encoder: image to the parameters of the latent Gaussian.
#[derive(Module, Debug)]
pub struct Encoder {
    /// `conv_in`.
    pub conv_in: Conv2d,
    /// `down_blocks.N`.
    pub down_blocks: Vec<EncoderBlock>,
    /// `mid_block`.
    pub mid_block: VaeMidBlock,
    /// `conv_norm_out`.
    pub conv_norm_out: GroupNorm,
    /// `conv_out`: to `2 × latent_channels` (mean, log-variance).
    pub conv_out: Conv2d,
}

/// The VAE decoder: latent to image.
#[derive(Module, Debug)]
pub struct Decoder {
    /// `conv_in`.
    pub conv_in: Conv2d,
    /// `mid_block`.
    pub mid_block: VaeMidBlock,
    /// `up_blocks.N`.
    pub up_blocks: Vec<DecoderBlock>,
    /// `conv_norm_out`.
    pub conv_norm_out: GroupNorm,
    /// `conv_out`.
    pub conv_out: Conv2d,
}

/// The latent distribution from [`AutoencoderKL::encode`].
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    /// `[B, latent, h, w]`.
    pub mean: Tensor<4>,
    /// `[B, latent, h, w]`, clamped to [-30, 20] as diffusers does.
    pub logvar: Tensor<4>,
}

impl DiagonalGaussian {
    /// `exp(logvar / 2)`.
    pub fn std(&self) -> Tensor<4> {
        (self.logvar.clone() * 0.5).exp()
    }

    /// `mean + std · noise` with injected standard-normal `noise` of the same shape.
    pub fn sample_with(&self, noise: Tensor<4>) -> Tensor<4> {
        self.mean.clone() + self.std() * noise
    }
}

/// diffusers' `AutoencoderKL` (the SD VAE).
#[derive(Module, Debug)]
pub struct AutoencoderKL {
    /// The encoder.
    pub encoder: Encoder,
    /// The decoder.
    pub decoder: Decoder,
    /// `quant_conv` (1×1).
    pub quant_conv: Conv2d,
    /// `post_quant_conv` (1×1).
    pub post_quant_conv: Conv2d,
    /// Latents are this times the encoder's mean.
    pub scaling_factor: f64,
    /// Image side / latent side.
    pub downsample_factor: usize,
}

impl AutoencoderKL {
    /// Load `config.json` and the weights (`diffusion_pytorch_model[.variant].safetensors`, or
    /// the `.bin` pickle) from `vae/`.
    pub fn from_dir(
        dir: &Path,
        device: &Device,
        dtype: DType,
        variant: Option<&str>,
    ) -> Result<(Self, VaeConfig)> {
        let cfg = VaeConfig::from_file(&dir.join("config.json"))?;
        let file =
            crate::model_files::weights_file(dir, crate::model_files::Component::Vae, variant)?;
        let weights = Weights::open_as(file, device, dtype)?;
        let vae = Self::load(&weights, &cfg)?;
        weights.finish(|_| false)?;
        Ok((vae, cfg))
    }

    /// Build from weights.
    pub fn load(weights: &Weights, cfg: &VaeConfig) -> Result<Self> {
        let vb = weights.pp("");
        let g = cfg.norm_num_groups;
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let lat = cfg.latent_channels;
        let resnet =
            |vb: &WeightsView, cin, cout| ResnetBlock2D::load(vb, cin, cout, None, g, 1e-6);

        let e = vb.pp("encoder");
        let mut down_blocks = Vec::new();
        let mut prev = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            let b = e.pp(format!("down_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    resnet(
                        &b.pp(format!("resnets.{j}")),
                        if j == 0 { prev } else { c },
                        c,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let downsamplers = if i + 1 < n {
                Some(Conv2d::load(&b.pp("downsamplers.0.conv"), c, c, 3, 2, 0)?)
            } else {
                None
            };
            down_blocks.push(EncoderBlock {
                resnets,
                downsamplers,
            });
            prev = c;
        }
        let encoder = Encoder {
            conv_in: Conv2d::load(&e.pp("conv_in"), cfg.in_channels, ch[0], 3, 1, 1)?,
            down_blocks,
            mid_block: VaeMidBlock::load(&e.pp("mid_block"), ch[n - 1], g)?,
            conv_norm_out: GroupNorm::load(&e.pp("conv_norm_out"), g, ch[n - 1], 1e-6)?,
            conv_out: Conv2d::load(&e.pp("conv_out"), ch[n - 1], 2 * lat, 3, 1, 1)?,
        };

        let d = vb.pp("decoder");
        let mut up_blocks = Vec::new();
        let mut prev = ch[n - 1];
        for i in 0..n {
            let c = ch[n - 1 - i];
            let b = d.pp(format!("up_blocks.{i}"));
            let resnets = (0..=cfg.layers_per_block)
                .map(|j| {
                    resnet(
                        &b.pp(format!("resnets.{j}")),
                        if j == 0 { prev } else { c },
                        c,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let upsamplers = if i + 1 < n {
                Some(Conv2d::load(&b.pp("upsamplers.0.conv"), c, c, 3, 1, 1)?)
            } else {
                None
            };
            up_blocks.push(DecoderBlock {
                resnets,
                upsamplers,
            });
            prev = c;
        }
        let decoder = Decoder {
            conv_in: Conv2d::load(&d.pp("conv_in"), lat, ch[n - 1], 3, 1, 1)?,
            mid_block: VaeMidBlock::load(&d.pp("mid_block"), ch[n - 1], g)?,
            up_blocks,
            conv_norm_out: GroupNorm::load(&d.pp("conv_norm_out"), g, ch[0], 1e-6)?,
            conv_out: Conv2d::load(&d.pp("conv_out"), ch[0], cfg.out_channels, 3, 1, 1)?,
        };

        Ok(Self {
            encoder,
            decoder,
            quant_conv: Conv2d::load(&vb.pp("quant_conv"), 2 * lat, 2 * lat, 1, 1, 0)?,
            post_quant_conv: Conv2d::load(&vb.pp("post_quant_conv"), lat, lat, 1, 1, 0)?,
            scaling_factor: cfg.scaling_factor,
            downsample_factor: cfg.downsample_factor(),
        })
    }

    /// The latent distribution of `image` (values in [-1, 1]).
    ///
    /// # Shapes
    /// `[B, 3, H, W]` with H, W multiples of the downsample factor → mean/logvar
    /// `[B, latent, H/f, W/f]`.
    pub fn encode(&self, image: Tensor<4>) -> Result<DiagonalGaussian> {
        let [_, c, h, w] = image.dims();
        let f = self.downsample_factor;
        let c_in = self.encoder.conv_in.weight.dims()[1];
        if c != c_in || h == 0 || w == 0 || h % f != 0 || w % f != 0 {
            return Err(Error::Shape {
                what: "VAE input image".into(),
                expected: format!("[B, {c_in}, H, W] with H and W positive multiples of {f}"),
                got: image.dims().to_vec(),
            });
        }
        // In the VAE's own dtype; the distribution comes back in the image's.
        let io_dtype = image.dtype();
        let image = image.cast(self.dtype());
        let e = &self.encoder;
        let mut x = e.conv_in.forward(image);
        for block in &e.down_blocks {
            for r in &block.resnets {
                x = r.forward(x, None);
            }
            if let Some(conv) = &block.downsamplers {
                x = conv.forward(x.pad([(0, 0), (0, 0), (0, 1), (0, 1)], PadMode::Constant(0.0)));
            }
        }
        x = e.mid_block.forward(x);
        x = e.conv_out.forward(e.conv_norm_out.forward_silu(x));
        let moments = self.quant_conv.forward(x);
        let lat = moments.dims()[1] / 2;
        let mut parts = moments.split(lat, 1);
        let logvar = parts.pop().unwrap_or_else(|| unreachable!("two halves"));
        let mean = parts.pop().unwrap_or_else(|| unreachable!("two halves"));
        Ok(DiagonalGaussian {
            mean: mean.cast(io_dtype),
            logvar: logvar.cast(io_dtype).clamp(-30.0, 20.0),
        })
    }

    /// Decode (unscaled) latents to an image in about [-1, 1].
    ///
    /// # Shapes
    /// `[B, latent, h, w]` → `[B, 3, h·f, w·f]`.
    pub fn decode(&self, latents: Tensor<4>) -> Result<Tensor<4>> {
        let lat = self.post_quant_conv.weight.dims()[0];
        let [b, c, h, w] = latents.dims();
        if c != lat || b == 0 || h == 0 || w == 0 {
            return Err(Error::Shape {
                what: "VAE latents".into(),
                expected: format!("[B, {lat}, h, w]"),
                got: latents.dims().to_vec(),
            });
        }
        let io_dtype = latents.dtype();
        let latents = latents.cast(self.dtype());
        let d = &self.decoder;
        let mut x = d.conv_in.forward(self.post_quant_conv.forward(latents));
        x = d.mid_block.forward(x);
        for block in &d.up_blocks {
            for r in &block.resnets {
                x = r.forward(x, None);
            }
            if let Some(conv) = &block.upsamplers {
                let [_, _, h, w] = x.dims();
                x = conv.forward(resize_nearest(x, 2 * h, 2 * w));
            }
        }
        Ok(d.conv_out
            .forward(d.conv_norm_out.forward_silu(x))
            .cast(io_dtype))
    }

    /// The dtype the weights are held (and the VAE computes) in.
    pub fn dtype(&self) -> burn::tensor::DType {
        self.post_quant_conv.weight.val().dtype()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::seeded_noise;
    use burn::tensor::{DType, Device};

    fn tiny() -> VaeConfig {
        VaeConfig {
            block_out_channels: vec![8, 16],
            layers_per_block: 1,
            norm_num_groups: 4,
            sample_size: Some(16),
            ..VaeConfig::sd()
        }
    }

    #[test]
    fn encode_and_decode_shapes() {
        let dev = Device::flex();
        let vae =
            AutoencoderKL::load(&Weights::random(&dev, DType::F32, 1, 0.05), &tiny()).unwrap();
        let image: Tensor<4> = seeded_noise(2, [2, 3, 16, 24], &dev);
        let dist = vae.encode(image).unwrap();
        assert_eq!(dist.mean.dims(), [2, 4, 8, 12]);
        assert_eq!(dist.logvar.dims(), [2, 4, 8, 12]);
        assert_eq!(vae.decode(dist.mean).unwrap().dims(), [2, 3, 16, 24]);
        // Sizes that are not multiples of the factor, and wrong channel counts, are refused.
        let odd: Tensor<4> = seeded_noise(3, [1, 3, 15, 16], &dev);
        assert!(matches!(vae.encode(odd), Err(Error::Shape { .. })));
        let lat: Tensor<4> = seeded_noise(4, [1, 3, 4, 4], &dev);
        assert!(matches!(vae.decode(lat), Err(Error::Shape { .. })));
    }
}
