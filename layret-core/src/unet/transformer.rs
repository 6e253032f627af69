use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::gelu;

use crate::error::Result;
use crate::nn::{Conv2d, GroupNorm, LayerNorm, Linear};
use crate::processor::{AttentionHook, AttentionKind, AttentionSite};
use crate::weights::WeightsView;

/// `to_out`: diffusers keeps the projection at index 0 of a list (`to_out.0`).
#[derive(Module, Debug)]
pub struct ToOut {
    /// `inner → query_dim`.
    pub linear: Linear,
}

/// diffusers' `Attention` inside a transformer block; the attention itself is computed by the
/// processor plugged into the socket.
#[derive(Module, Debug)]
pub struct Attention {
    /// `query_dim → inner`, no bias.
    pub to_q: Linear,
    /// `context_dim → inner`, no bias.
    pub to_k: Linear,
    /// `context_dim → inner`, no bias.
    pub to_v: Linear,
    /// `inner → query_dim`, with bias.
    pub to_out: ToOut,
    /// Number of heads.
    pub heads: usize,
    /// The diffusers path of this layer (the site id).
    pub path: String,
    /// Self (`attn1`) or cross (`attn2`).
    pub cross: bool,
    /// Scores in f32 under half precision (`upcast_attention`).
    pub upcast: bool,
}

impl Attention {
    /// Load `to_q`, `to_k`, `to_v`, `to_out.0`; `context_dim` is `None` for self-attention.
    /// The site path is the UNet's to set ([`UNet2DConditionModel::load`](super::UNet2DConditionModel::load)
    /// names every attention from its walk of the tree).
    pub fn load(
        vb: &WeightsView,
        query_dim: usize,
        context_dim: Option<usize>,
        heads: usize,
    ) -> Result<Self> {
        let kv_dim = context_dim.unwrap_or(query_dim);
        Ok(Self {
            to_q: Linear::load(&vb.pp("to_q"), query_dim, query_dim, false)?,
            to_k: Linear::load(&vb.pp("to_k"), kv_dim, query_dim, false)?,
            to_v: Linear::load(&vb.pp("to_v"), kv_dim, query_dim, false)?,
            to_out: ToOut {
                linear: Linear::load(&vb.pp("to_out.0"), query_dim, query_dim, true)?,
            },
            heads,
            path: String::new(),
            cross: context_dim.is_some(),
            upcast: false,
        })
    }

    /// # Shapes
    /// - `x`: `[B, HW, C]`; `context`: `[B, L, D]` for cross-attention
    /// - returns `[B, HW, C]`
    pub(crate) fn forward(
        &self,
        x: Tensor<3>,
        context: Option<&Tensor<3>>,
        (height, width): (usize, usize),
        hook: &mut AttentionHook,
    ) -> Result<Tensor<3>> {
        let [b, lq, c] = x.dims();
        let d = c / self.heads;
        let kv_src = context.cloned().unwrap_or_else(|| x.clone());
        let lk = kv_src.dims()[1];
        let q = self
            .to_q
            .forward(x)
            .reshape([b, lq, self.heads, d])
            .swap_dims(1, 2);
        let k = self
            .to_k
            .forward(kv_src.clone())
            .reshape([b, lk, self.heads, d])
            .swap_dims(1, 2);
        let v = self
            .to_v
            .forward(kv_src)
            .reshape([b, lk, self.heads, d])
            .swap_dims(1, 2);
        let site = AttentionSite {
            path: &self.path,
            kind: if self.cross {
                AttentionKind::CrossAttention
            } else {
                AttentionKind::SelfAttention
            },
            index: hook.next_index,
            height,
            width,
            heads: self.heads,
            head_dim: d,
            latent_height: hook.latent.0,
            latent_width: hook.latent.1,
            upcast: self.upcast,
        };
        hook.next_index += 1;
        let o = hook.processor.attend(&site, hook.ctx, q, k, v)?;
        if o.dims() != [b, self.heads, lq, d] {
            return Err(crate::Error::Shape {
                what: format!("attention processor output at {}", self.path),
                expected: format!("[{b}, {}, {lq}, {d}]", self.heads),
                got: o.dims().to_vec(),
            });
        }
        Ok(self
            .to_out
            .linear
            .forward(o.swap_dims(1, 2).reshape([b, lq, c])))
    }
}

/// `ff.net.0`: GEGLU's projection to twice the hidden width.
#[derive(Module, Debug)]
pub struct GeGlu {
    /// `dim → 2·inner`.
    pub proj: Linear,
}

/// diffusers' `FeedForward` with GEGLU: `net.2(h · gelu(gate))`, `[h, gate] = net.0.proj(x)`.
#[derive(Module, Debug)]
pub struct FeedForward {
    /// `net.0`.
    pub geglu: GeGlu,
    /// `net.2`: `inner → dim`.
    pub out: Linear,
}

impl FeedForward {
    /// Load `net.0.proj` and `net.2` (inner width `4·dim`).
    pub fn load(vb: &WeightsView, dim: usize) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            geglu: GeGlu {
                proj: Linear::load(&vb.pp("net.0.proj"), dim, 2 * inner, true)?,
            },
            out: Linear::load(&vb.pp("net.2"), inner, dim, true)?,
        })
    }

    /// # Shapes
    /// `[B, L, dim]` → `[B, L, dim]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let hg = self.geglu.proj.forward(x);
        // flex f32: one fused pass (see `nn::geglu`); flex bf16 through it in f32.
        if let Some(y) = crate::nn::geglu(&hg) {
            return self.out.forward(y);
        }
        let dtype = hg.dtype();
        if dtype == burn::tensor::DType::BF16
            && hg.device() == burn::tensor::Device::flex()
            && let Some(y) = crate::nn::geglu(&hg.clone().cast(burn::tensor::DType::F32))
        {
            return self.out.forward(y.cast(dtype));
        }
        let mut parts = hg.chunk(2, 2);
        let gate = parts
            .pop()
            .unwrap_or_else(|| unreachable!("chunk(2) gives two parts"));
        let h = parts
            .pop()
            .unwrap_or_else(|| unreachable!("chunk(2) gives two parts"));
        self.out.forward(h * gelu(gate))
    }
}

/// diffusers' `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward,
/// each pre-LayerNorm with a residual.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock {
    /// Before `attn1`.
    pub norm1: LayerNorm,
    /// Self-attention.
    pub attn1: Attention,
    /// Before `attn2`.
    pub norm2: LayerNorm,
    /// Cross-attention to the text.
    pub attn2: Attention,
    /// Before `ff`.
    pub norm3: LayerNorm,
    /// Feed-forward.
    pub ff: FeedForward,
}

impl BasicTransformerBlock {
    /// Load the block at the view's prefix.
    pub fn load(vb: &WeightsView, dim: usize, heads: usize, context_dim: usize) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm::load(&vb.pp("norm1"), dim, 1e-5)?,
            attn1: Attention::load(&vb.pp("attn1"), dim, None, heads)?,
            norm2: LayerNorm::load(&vb.pp("norm2"), dim, 1e-5)?,
            attn2: Attention::load(&vb.pp("attn2"), dim, Some(context_dim), heads)?,
            norm3: LayerNorm::load(&vb.pp("norm3"), dim, 1e-5)?,
            ff: FeedForward::load(&vb.pp("ff"), dim)?,
        })
    }

    /// # Shapes
    /// `x` `[B, HW, C]`, `context` `[B, L, D]` → `[B, HW, C]`.
    pub(crate) fn forward(
        &self,
        x: Tensor<3>,
        context: &Tensor<3>,
        hw: (usize, usize),
        hook: &mut AttentionHook,
    ) -> Result<Tensor<3>> {
        let x = x.clone() + self.attn1.forward(self.norm1.forward(x), None, hw, hook)?;
        let x = x.clone()
            + self
                .attn2
                .forward(self.norm2.forward(x), Some(context), hw, hook)?;
        Ok(x.clone() + self.ff.forward(self.norm3.forward(x)))
    }
}

/// `proj_in`/`proj_out`: a 1×1 convolution (SD 1.x) or a Linear (SD 2.x).
#[derive(Module, Debug)]
pub enum Projection {
    /// 1×1 convolution on `[B, C, H, W]`.
    Conv(Conv2d),
    /// Linear on `[B, HW, C]`.
    Linear(Linear),
}

impl Projection {
    fn load(vb: &WeightsView, c: usize, linear: bool) -> Result<Self> {
        Ok(if linear {
            Projection::Linear(Linear::load(vb, c, c, true)?)
        } else {
            Projection::Conv(Conv2d::load(vb, c, c, 1, 1, 0)?)
        })
    }
}

/// What a [`Transformer2D`] is built with (besides its channel count).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TransformerSpec {
    /// Attention heads.
    pub heads: usize,
    /// Width of the text embeddings.
    pub context_dim: usize,
    /// GroupNorm groups of its input norm.
    pub groups: usize,
    /// Linear (SD 2.x) rather than 1×1-convolution projections.
    pub linear_projection: bool,
    /// `upcast_attention`.
    pub upcast: bool,
}

/// diffusers' `Transformer2DModel` (one transformer block, as in SD 1.x/2.x).
#[derive(Module, Debug)]
pub struct Transformer2D {
    /// GroupNorm (eps 1e-6) on the input.
    pub norm: GroupNorm,
    /// Into the transformer width.
    pub proj_in: Projection,
    /// The blocks (`transformer_blocks.N`).
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    /// Back to the feature map.
    pub proj_out: Projection,
}

impl Transformer2D {
    /// Load the model at the view's prefix with `c` channels.
    pub(crate) fn load(vb: &WeightsView, c: usize, spec: &TransformerSpec) -> Result<Self> {
        let mut block = BasicTransformerBlock::load(
            &vb.pp("transformer_blocks.0"),
            c,
            spec.heads,
            spec.context_dim,
        )?;
        block.attn1.upcast = spec.upcast;
        block.attn2.upcast = spec.upcast;
        Ok(Self {
            norm: GroupNorm::load(&vb.pp("norm"), spec.groups, c, 1e-6)?,
            proj_in: Projection::load(&vb.pp("proj_in"), c, spec.linear_projection)?,
            transformer_blocks: vec![block],
            proj_out: Projection::load(&vb.pp("proj_out"), c, spec.linear_projection)?,
        })
    }

    /// # Shapes
    /// `x` `[B, C, H, W]`, `context` `[B, L, D]` → `[B, C, H, W]`.
    pub(crate) fn forward(
        &self,
        x: Tensor<4>,
        context: &Tensor<3>,
        hook: &mut AttentionHook,
    ) -> Result<Tensor<4>> {
        let [b, c, h, w] = x.dims();
        let residual = x.clone();
        let x = self.norm.forward(x);
        let to_tokens = |x: Tensor<4>| x.reshape([b, c, h * w]).swap_dims(1, 2);
        let mut t = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(x)),
            Projection::Linear(lin) => lin.forward(to_tokens(x)),
        };
        for block in &self.transformer_blocks {
            t = block.forward(t, context, (h, w), hook)?;
        }
        let to_map = |t: Tensor<3>| t.swap_dims(1, 2).reshape([b, c, h, w]);
        let x = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(to_map(t)),
            Projection::Linear(lin) => to_map(lin.forward(t)),
        };
        Ok(x + residual)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::seeded_noise;
    use crate::processor::{AttentionProcessor, StepContext, default_attention};
    use crate::weights::Weights;
    use burn::tensor::{DType, Device};

    /// Records the sites it is called at.
    struct Sites(Vec<(String, AttentionKind, usize, usize, usize, usize, bool)>);

    impl AttentionProcessor for Sites {
        fn attend(
            &mut self,
            s: &AttentionSite,
            _: &StepContext,
            q: Tensor<4>,
            k: Tensor<4>,
            v: Tensor<4>,
        ) -> Result<Tensor<4>> {
            assert_eq!(q.dims()[1..], [s.heads, s.height * s.width, s.head_dim]);
            let p = (
                s.path.to_string(),
                s.kind,
                s.height,
                s.width,
                s.heads,
                s.head_dim,
            );
            self.0.push((p.0, p.1, p.2, p.3, p.4, p.5, s.upcast));
            Ok(default_attention(q, k, v))
        }
    }

    #[test]
    fn transformer_keeps_the_map_and_names_its_sites() {
        let dev = Device::flex();
        let w = Weights::random(&dev, DType::F32, 1, 0.1);
        for linear in [false, true] {
            let spec = TransformerSpec {
                heads: 2,
                context_dim: 6,
                groups: 4,
                linear_projection: linear,
                upcast: linear,
            };
            let mut t = Transformer2D::load(&w.pp("t"), 16, &spec).unwrap();
            t.transformer_blocks[0].attn1.path = "t.attn1".into();
            t.transformer_blocks[0].attn2.path = "t.attn2".into();
            let x: Tensor<4> = seeded_noise(2, [3, 16, 3, 5], &dev);
            let context: Tensor<3> = seeded_noise(3, [3, 7, 6], &dev);
            let mut sites = Sites(Vec::new());
            let ctx = StepContext::plain(0, 1.0, 3);
            let mut hook = AttentionHook::new(&mut sites, &ctx, (3, 5));
            let y = t.forward(x, &context, &mut hook).unwrap();
            assert_eq!(y.dims(), [3, 16, 3, 5]);
            use AttentionKind::{CrossAttention as X, SelfAttention as S};
            assert_eq!(
                sites.0,
                [
                    ("t.attn1".into(), S, 3, 5, 2, 8, linear),
                    ("t.attn2".into(), X, 3, 5, 2, 8, linear)
                ]
            );
        }
    }
}
