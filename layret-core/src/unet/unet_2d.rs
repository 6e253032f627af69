use std::path::Path;

use burn::module::Module;
use burn::tensor::{DType, Device, Tensor};

use super::blocks::{BlockSpec, DownBlock, MidBlock, UpBlock};
use super::config::{DownBlockType, UNetConfig, UpBlockType};
use super::embeddings::{TimestepEmbedding, timestep_embedding};
use crate::error::{Error, Result};
use crate::nn::{Conv2d, GroupNorm};
use crate::processor::{
    AttentionHook, AttentionKind, AttentionProcessor, AttentionSite, StepContext,
};
use crate::weights::Weights;

/// A mutable reference to one parameterized layer of the UNet (see
/// [`UNet2DConditionModel::for_each_module_mut`]).
pub enum ModuleMut<'a> {
    /// A linear layer.
    Linear(&'a mut crate::nn::Linear),
    /// A convolution.
    Conv(&'a mut Conv2d),
}

/// The block structure of a UNet: ResNets per down level and which levels have attention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UNetPlan {
    /// ResNets per down block (up blocks have one more).
    pub layers_per_block: usize,
    /// Per down level, whether it has transformers.
    pub down_attention: Vec<bool>,
    /// Per up level, whether it has transformers.
    pub up_attention: Vec<bool>,
}

/// The static description of one attention site (for listing; see [`UNet2DConditionModel::sites`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteInfo {
    /// diffusers module path.
    pub path: String,
    /// Self or cross.
    pub kind: AttentionKind,
    /// Execution index within a pass.
    pub index: usize,
    /// Feature-map height at the given latent size.
    pub height: usize,
    /// Feature-map width.
    pub width: usize,
    /// Heads.
    pub heads: usize,
    /// Dimension per head.
    pub head_dim: usize,
    /// Latent height the sizes are for.
    pub latent_height: usize,
    /// Latent width the sizes are for.
    pub latent_width: usize,
    /// `upcast_attention`.
    pub upcast: bool,
}

/// diffusers' `UNet2DConditionModel` for SD 1.x/2.x: predicts the noise (or v) of a latent at a
/// timestep, conditioned on text embeddings. Every attention call goes through the
/// [`AttentionProcessor`] passed to [`forward`](Self::forward).
#[derive(Module, Debug)]
pub struct UNet2DConditionModel {
    /// `time_embedding.linear_1/2`.
    pub time_embedding: TimestepEmbedding,
    /// `conv_in`.
    pub conv_in: Conv2d,
    /// `down_blocks.N`.
    pub down_blocks: Vec<DownBlock>,
    /// `mid_block`.
    pub mid_block: MidBlock,
    /// `up_blocks.N`.
    pub up_blocks: Vec<UpBlock>,
    /// `conv_norm_out`.
    pub conv_norm_out: GroupNorm,
    /// `conv_out`.
    pub conv_out: Conv2d,
    /// Width of the sinusoidal embedding (`block_out_channels[0]`).
    pub time_proj_dim: usize,
    /// `flip_sin_to_cos`.
    pub flip_sin_to_cos: bool,
    /// `freq_shift`.
    pub freq_shift: f64,
    /// `in_channels`.
    pub in_channels: usize,
    /// `cross_attention_dim`.
    pub context_dim: usize,
}

impl UNet2DConditionModel {
    /// Load `config.json` and the weights (`diffusion_pytorch_model[.variant].safetensors`, or
    /// the `.bin` pickle) from a `unet/` folder.
    pub fn from_dir(
        dir: &Path,
        device: &Device,
        dtype: DType,
        variant: Option<&str>,
    ) -> Result<(Self, UNetConfig)> {
        let cfg = UNetConfig::from_file(&dir.join("config.json"))?;
        let file =
            crate::model_files::weights_file(dir, crate::model_files::Component::Unet, variant)?;
        let weights = Weights::open_as(file, device, dtype)?;
        let unet = Self::load(&weights, &cfg)?;
        weights.finish(|_| false)?;
        Ok((unet, cfg))
    }

    /// Build from weights (a file, or [`Weights::random`] for benches).
    pub fn load(weights: &Weights, cfg: &UNetConfig) -> Result<Self> {
        let vb = weights.pp("");
        let levels = cfg.levels();
        let n = levels.len();
        let c0 = levels[0].channels;
        let temb = 4 * c0;
        let (groups, eps) = (cfg.norm_num_groups, cfg.norm_eps);
        fn spec<'p>(cfg: &UNetConfig, temb: usize, heads: usize, path: &'p str) -> BlockSpec<'p> {
            BlockSpec {
                temb,
                groups: cfg.norm_num_groups,
                eps: cfg.norm_eps,
                heads,
                context_dim: cfg.cross_attention_dim,
                linear_projection: cfg.use_linear_projection,
                path,
            }
        }

        let time_embedding = TimestepEmbedding::load(&vb.pp("time_embedding"), c0, temb)?;
        let conv_in = Conv2d::load(&vb.pp("conv_in"), cfg.in_channels, c0, 3, 1, 1)?;

        let mut down_blocks = Vec::new();
        let mut c_prev = c0;
        for (i, (level, kind)) in levels.iter().zip(cfg.down_types()).enumerate() {
            let path = format!("down_blocks.{i}");
            let s = spec(cfg, temb, level.heads, &path);
            down_blocks.push(DownBlock::load(
                &vb.pp(&path),
                &s,
                c_prev,
                level.channels,
                cfg.layers_per_block,
                kind == DownBlockType::CrossAttn,
                i + 1 < n,
            )?);
            c_prev = level.channels;
        }

        let last = &levels[n - 1];
        let mid_spec = spec(cfg, temb, last.heads, "mid_block");
        let mid_block = MidBlock::load(&vb.pp("mid_block"), &mid_spec, last.channels)?;

        let mut up_blocks = Vec::new();
        let rev: Vec<_> = levels.iter().rev().collect();
        let mut prev_out = last.channels;
        for (i, kind) in cfg.up_types().into_iter().enumerate() {
            let c_out = rev[i].channels;
            let c_skip_last = rev[(i + 1).min(n - 1)].channels;
            let path = format!("up_blocks.{i}");
            let s = spec(cfg, temb, rev[i].heads, &path);
            up_blocks.push(UpBlock::load(
                &vb.pp(&path),
                &s,
                prev_out,
                c_out,
                c_skip_last,
                cfg.layers_per_block,
                kind == UpBlockType::CrossAttn,
                i + 1 < n,
            )?);
            prev_out = c_out;
        }

        Ok(Self {
            time_embedding,
            conv_in,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(&vb.pp("conv_norm_out"), groups, c0, eps)?,
            conv_out: Conv2d::load(&vb.pp("conv_out"), c0, cfg.out_channels, 3, 1, 1)?,
            time_proj_dim: c0,
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            freq_shift: cfg.freq_shift,
            in_channels: cfg.in_channels,
            context_dim: cfg.cross_attention_dim,
        })
    }

    /// Check the inputs of [`forward`](Self::forward) and return an error instead of a panic.
    pub fn check_inputs(&self, sample: &Tensor<4>, context: &Tensor<3>) -> Result<()> {
        let [b, c, h, w] = sample.dims();
        if c != self.in_channels || b == 0 || h == 0 || w == 0 {
            return Err(Error::Shape {
                what: "UNet sample".into(),
                expected: format!("[B ≥ 1, {}, H ≥ 1, W ≥ 1]", self.in_channels),
                got: sample.dims().to_vec(),
            });
        }
        let [cb, cl, cd] = context.dims();
        if cb != b || cd != self.context_dim || cl == 0 {
            return Err(Error::Shape {
                what: "UNet encoder_hidden_states".into(),
                expected: format!("[{b}, L ≥ 1, {}]", self.context_dim),
                got: context.dims().to_vec(),
            });
        }
        Ok(())
    }

    /// Predict ε (or v) for `sample` at `timestep` given the text embeddings `context`, every
    /// attention call going to `processor` (told the pass's start and end).
    ///
    /// Inputs must be consistent (see [`check_inputs`](Self::check_inputs)); pipelines check
    /// them once before sampling. A processor's error ends the pass with that error.
    ///
    /// # Shapes
    /// - `sample`: `[B, in_channels, H, W]`, `context`: `[B, L, cross_attention_dim]`
    /// - returns `[B, out_channels, H, W]`
    pub fn forward(
        &self,
        sample: Tensor<4>,
        timestep: f64,
        context: &Tensor<3>,
        processor: &mut dyn AttentionProcessor,
        ctx: &StepContext,
    ) -> Result<Tensor<4>> {
        let [b, _, lh, lw] = sample.dims();
        let device = sample.device();
        let t = timestep_embedding(
            timestep,
            b,
            self.time_proj_dim,
            self.flip_sin_to_cos,
            self.freq_shift,
            &device,
        )
        .cast(sample.dtype());
        let temb = self.time_embedding.forward(t);
        processor.begin_pass(ctx)?;
        let mut hook = AttentionHook::new(processor, ctx, (lh, lw));

        let mut x = self.conv_in.forward(sample);
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            x = block.forward(x, &temb, context, &mut skips, &mut hook)?;
        }
        x = self.mid_block.forward(x, &temb, context, &mut hook)?;
        for block in &self.up_blocks {
            x = block.forward(x, &temb, context, &mut skips, &mut hook)?;
        }
        hook.processor.end_pass(ctx)?;
        Ok(self.conv_out.forward(self.conv_norm_out.forward_silu(x)))
    }

    /// Every Linear and Conv2d layer with its checkpoint path (`time_embedding.linear_1`,
    /// `down_blocks.0.resnets.1.conv1`, `…attn2.to_k`, `…ff.net.2`, `…proj_in`,
    /// `…downsamplers.0.conv`, …), in checkpoint order: what personalization (LoRA, LoCon,
    /// Custom Diffusion) can update.
    pub fn for_each_module_mut(&mut self, f: &mut dyn FnMut(&str, ModuleMut)) {
        use super::resnet::ResnetBlock2D;
        use super::transformer::{Projection, Transformer2D};
        fn resnet(r: &mut ResnetBlock2D, p: &str, f: &mut dyn FnMut(&str, ModuleMut)) {
            f(&format!("{p}.conv1"), ModuleMut::Conv(&mut r.conv1));
            if let Some(l) = &mut r.time_emb_proj {
                f(&format!("{p}.time_emb_proj"), ModuleMut::Linear(l));
            }
            f(&format!("{p}.conv2"), ModuleMut::Conv(&mut r.conv2));
            if let Some(c) = &mut r.conv_shortcut {
                f(&format!("{p}.conv_shortcut"), ModuleMut::Conv(c));
            }
        }
        fn projection(pr: &mut Projection, p: &str, f: &mut dyn FnMut(&str, ModuleMut)) {
            match pr {
                Projection::Linear(l) => f(p, ModuleMut::Linear(l)),
                Projection::Conv(c) => f(p, ModuleMut::Conv(c)),
            }
        }
        fn transformer(t: &mut Transformer2D, prefix: &str, f: &mut dyn FnMut(&str, ModuleMut)) {
            projection(&mut t.proj_in, &format!("{prefix}.proj_in"), f);
            for (i, b) in t.transformer_blocks.iter_mut().enumerate() {
                let p = format!("{prefix}.transformer_blocks.{i}");
                for (name, a) in [("attn1", &mut b.attn1), ("attn2", &mut b.attn2)] {
                    f(&format!("{p}.{name}.to_q"), ModuleMut::Linear(&mut a.to_q));
                    f(&format!("{p}.{name}.to_k"), ModuleMut::Linear(&mut a.to_k));
                    f(&format!("{p}.{name}.to_v"), ModuleMut::Linear(&mut a.to_v));
                    f(
                        &format!("{p}.{name}.to_out.0"),
                        ModuleMut::Linear(&mut a.to_out.linear),
                    );
                }
                f(
                    &format!("{p}.ff.net.0.proj"),
                    ModuleMut::Linear(&mut b.ff.geglu.proj),
                );
                f(&format!("{p}.ff.net.2"), ModuleMut::Linear(&mut b.ff.out));
            }
            projection(&mut t.proj_out, &format!("{prefix}.proj_out"), f);
        }
        f(
            "time_embedding.linear_1",
            ModuleMut::Linear(&mut self.time_embedding.linear_1),
        );
        f(
            "time_embedding.linear_2",
            ModuleMut::Linear(&mut self.time_embedding.linear_2),
        );
        f("conv_in", ModuleMut::Conv(&mut self.conv_in));
        for (i, block) in self.down_blocks.iter_mut().enumerate() {
            for (j, r) in block.resnets.iter_mut().enumerate() {
                resnet(r, &format!("down_blocks.{i}.resnets.{j}"), f);
            }
            for (j, t) in block.attentions.iter_mut().enumerate() {
                transformer(t, &format!("down_blocks.{i}.attentions.{j}"), f);
            }
            if let Some(d) = &mut block.downsamplers {
                f(
                    &format!("down_blocks.{i}.downsamplers.0.conv"),
                    ModuleMut::Conv(&mut d.conv),
                );
            }
        }
        for (j, r) in self.mid_block.resnets.iter_mut().enumerate() {
            resnet(r, &format!("mid_block.resnets.{j}"), f);
        }
        for (j, t) in self.mid_block.attentions.iter_mut().enumerate() {
            transformer(t, &format!("mid_block.attentions.{j}"), f);
        }
        for (i, block) in self.up_blocks.iter_mut().enumerate() {
            for (j, r) in block.resnets.iter_mut().enumerate() {
                resnet(r, &format!("up_blocks.{i}.resnets.{j}"), f);
            }
            for (j, t) in block.attentions.iter_mut().enumerate() {
                transformer(t, &format!("up_blocks.{i}.attentions.{j}"), f);
            }
            if let Some(u) = &mut block.upsamplers {
                f(
                    &format!("up_blocks.{i}.upsamplers.0.conv"),
                    ModuleMut::Conv(&mut u.conv),
                );
            }
        }
        f("conv_out", ModuleMut::Conv(&mut self.conv_out));
    }

    /// Every Linear layer with its checkpoint path (see
    /// [`for_each_module_mut`](Self::for_each_module_mut)).
    pub fn for_each_linear_mut(&mut self, f: &mut dyn FnMut(&str, &mut crate::nn::Linear)) {
        self.for_each_module_mut(&mut |p, m| {
            if let ModuleMut::Linear(l) = m {
                f(p, l)
            }
        });
    }

    /// The block plan of this UNet (levels, ResNets per level, which levels attend).
    pub(crate) fn plan(&self) -> UNetPlan {
        UNetPlan {
            layers_per_block: self.down_blocks.first().map_or(0, |b| b.resnets.len()),
            down_attention: self
                .down_blocks
                .iter()
                .map(|b| !b.attentions.is_empty())
                .collect(),
            up_attention: self
                .up_blocks
                .iter()
                .map(|b| !b.attentions.is_empty())
                .collect(),
        }
    }

    /// The original LDM (single-file) name of each module path of
    /// [`for_each_module_mut`](Self::for_each_module_mut), e.g. `down_blocks.0.resnets.0.conv1`
    /// → `input_blocks.1.0.in_layers.2` (kohya LoRA files may use either).
    pub fn ldm_module_names(&self) -> std::collections::HashMap<String, String> {
        use crate::weights::KeyMap;
        let map = crate::single_file::UnetMap::from_plan(&self.plan());
        let mut out = std::collections::HashMap::new();
        self.clone().for_each_module_mut(&mut |p, _| {
            if let Some(m) = map.map(&format!("{p}.weight")) {
                let key = m.key.trim_start_matches("model.diffusion_model.");
                out.insert(p.to_string(), key.trim_end_matches(".weight").to_string());
            }
        });
        out
    }

    /// Every attention site in execution order, with its size for a `height × width` latent.
    pub fn sites(&self, height: usize, width: usize) -> Vec<SiteInfo> {
        let mut out = Vec::new();
        let mut push = |attn: &super::transformer::Attention, h: usize, w: usize, c: usize| {
            out.push(SiteInfo {
                path: attn.path.clone(),
                kind: if attn.cross {
                    AttentionKind::CrossAttention
                } else {
                    AttentionKind::SelfAttention
                },
                index: out.len(),
                height: h,
                width: w,
                heads: attn.heads,
                head_dim: c / attn.heads,
                latent_height: height,
                latent_width: width,
                upcast: attn.upcast,
            });
        };
        let down = |s: usize| s.div_ceil(2);
        let mut sizes = vec![(height, width)];
        let (mut h, mut w) = (height, width);
        for block in &self.down_blocks {
            for t in &block.attentions {
                let c = t.norm.weight.dims()[0];
                for tb in &t.transformer_blocks {
                    push(&tb.attn1, h, w, c);
                    push(&tb.attn2, h, w, c);
                }
            }
            if block.downsamplers.is_some() {
                (h, w) = (down(h), down(w));
                sizes.push((h, w));
            }
        }
        for t in &self.mid_block.attentions {
            let c = t.norm.weight.dims()[0];
            for tb in &t.transformer_blocks {
                push(&tb.attn1, h, w, c);
                push(&tb.attn2, h, w, c);
            }
        }
        sizes.pop();
        for block in &self.up_blocks {
            for t in &block.attentions {
                let c = t.norm.weight.dims()[0];
                for tb in &t.transformer_blocks {
                    push(&tb.attn1, h, w, c);
                    push(&tb.attn2, h, w, c);
                }
            }
            if block.upsamplers.is_some() {
                (h, w) = sizes.pop().unwrap_or((2 * h, 2 * w));
            }
        }
        out
    }
}

/// Convenience for the sites' [`AttentionSite`] view.
impl SiteInfo {
    /// This site as the socket presents it.
    pub fn as_site(&self) -> AttentionSite<'_> {
        AttentionSite {
            path: &self.path,
            kind: self.kind,
            index: self.index,
            height: self.height,
            width: self.width,
            heads: self.heads,
            head_dim: self.head_dim,
            latent_height: self.latent_height,
            latent_width: self.latent_width,
            upcast: self.upcast,
        }
    }
}
