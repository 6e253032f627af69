use std::path::Path;

use burn::module::Module;
use burn::tensor::{DType, Device, Tensor};

use super::blocks::{BlockSpec, DownBlock, DownBlockPlan, MidBlock, UpBlock, UpBlockPlan};
use super::config::UNetConfig;
use super::embeddings::{TimestepEmbedding, Timesteps};
use super::transformer::{Attention, Projection, TransformerSpec};
use crate::error::{Error, Result};
use crate::nn::{Conv2d, GroupNorm};
use crate::processor::{
    AttentionHook, AttentionKind, AttentionProcessor, AttentionSite, StepContext,
};
use crate::weights::Weights;

/// The one description of the UNet's tree: every parameterized layer and attention in
/// execution order, with its checkpoint path and (for attention) the feature-map size of a
/// `latent`-sized input — the sizes `forward` produces (`⌈h/2⌉` per downsampler, back up to
/// each skip's size). The immutable walk reports attention sites, the mutable one every
/// Linear/Conv2d and attention module.
macro_rules! walk {
    ($unet:expr, $v:expr, $latent:expr, $($m:tt)?) => {{
        let unet = & $($m)? *$unet;
        let (mut h, mut w) = $latent;
        let mut sizes = vec![(h, w)];
        walk!(@lin $v, "time_embedding.linear_1", & $($m)? unet.time_embedding.linear_1, $($m)?);
        walk!(@lin $v, "time_embedding.linear_2", & $($m)? unet.time_embedding.linear_2, $($m)?);
        walk!(@conv $v, "conv_in", & $($m)? unet.conv_in, $($m)?);
        for (i, block) in (& $($m)? unet.down_blocks).into_iter().enumerate() {
            let p = format!("down_blocks.{i}");
            for j in 0..block.resnets.len() {
                walk!(@resnet $v, &format!("{p}.resnets.{j}"), & $($m)? block.resnets[j], $($m)?);
                if j < block.attentions.len() {
                    walk!(@transformer $v, &format!("{p}.attentions.{j}"), & $($m)? block.attentions[j], (h, w), $($m)?);
                }
            }
            if let Some(d) = & $($m)? block.downsamplers {
                walk!(@conv $v, &format!("{p}.downsamplers.0.conv"), & $($m)? d.conv, $($m)?);
                (h, w) = (h.div_ceil(2), w.div_ceil(2));
                sizes.push((h, w));
            }
        }
        {
            let mb = & $($m)? unet.mid_block;
            walk!(@resnet $v, "mid_block.resnets.0", & $($m)? mb.resnets[0], $($m)?);
            for j in 0..mb.attentions.len() {
                walk!(@transformer $v, &format!("mid_block.attentions.{j}"), & $($m)? mb.attentions[j], (h, w), $($m)?);
                walk!(@resnet $v, &format!("mid_block.resnets.{}", j + 1), & $($m)? mb.resnets[j + 1], $($m)?);
            }
        }
        sizes.pop();
        for (i, block) in (& $($m)? unet.up_blocks).into_iter().enumerate() {
            let p = format!("up_blocks.{i}");
            for j in 0..block.resnets.len() {
                walk!(@resnet $v, &format!("{p}.resnets.{j}"), & $($m)? block.resnets[j], $($m)?);
                if j < block.attentions.len() {
                    walk!(@transformer $v, &format!("{p}.attentions.{j}"), & $($m)? block.attentions[j], (h, w), $($m)?);
                }
            }
            if let Some(u) = & $($m)? block.upsamplers {
                walk!(@conv $v, &format!("{p}.upsamplers.0.conv"), & $($m)? u.conv, $($m)?);
                (h, w) = sizes.pop().unwrap_or((2 * h, 2 * w));
            }
        }
        walk!(@conv $v, "conv_out", & $($m)? unet.conv_out, $($m)?);
    }};
    // Layers: only the mutable walk reports them.
    (@lin $v:expr, $p:expr, $l:expr, mut) => {{ $v.linear($p, $l) }};
    (@lin $v:expr, $p:expr, $l:expr, ) => {{ let _ = ($p, $l); }};
    (@conv $v:expr, $p:expr, $c:expr, mut) => {{ $v.conv($p, $c) }};
    (@conv $v:expr, $p:expr, $c:expr, ) => {{ let _ = ($p, $c); }};
    (@proj $v:expr, $p:expr, $pr:expr, $($m:tt)?) => {
        match $pr {
            Projection::Linear(l) => walk!(@lin $v, $p, l, $($m)?),
            Projection::Conv(c) => walk!(@conv $v, $p, c, $($m)?),
        }
    };
    (@attn $v:expr, $p:expr, $a:expr, $hw:expr, $c:expr, mut) => {{
        let _ = ($hw, $c);
        let a = $a;
        $v.linear(&format!("{}.to_q", $p), &mut a.to_q);
        $v.linear(&format!("{}.to_k", $p), &mut a.to_k);
        $v.linear(&format!("{}.to_v", $p), &mut a.to_v);
        $v.linear(&format!("{}.to_out.0", $p), &mut a.to_out.linear);
        $v.attention($p, a);
    }};
    (@attn $v:expr, $p:expr, $a:expr, $hw:expr, $c:expr, ) => {{ let _ = $p; $v.attention($a, $hw, $c) }};
    (@resnet $v:expr, $p:expr, $r:expr, $($m:tt)?) => {{
        let r = $r;
        let p: &str = $p;
        walk!(@conv $v, &format!("{p}.conv1"), & $($m)? r.conv1, $($m)?);
        if let Some(l) = & $($m)? r.time_emb_proj {
            walk!(@lin $v, &format!("{p}.time_emb_proj"), l, $($m)?);
        }
        walk!(@conv $v, &format!("{p}.conv2"), & $($m)? r.conv2, $($m)?);
        if let Some(c) = & $($m)? r.conv_shortcut {
            walk!(@conv $v, &format!("{p}.conv_shortcut"), c, $($m)?);
        }
    }};
    (@transformer $v:expr, $p:expr, $t:expr, $hw:expr, $($m:tt)?) => {{
        let t = $t;
        let p: &str = $p;
        let channels = t.norm.weight.dims()[0];
        walk!(@proj $v, &format!("{p}.proj_in"), & $($m)? t.proj_in, $($m)?);
        for (i, b) in (& $($m)? t.transformer_blocks).into_iter().enumerate() {
            let bp = format!("{p}.transformer_blocks.{i}");
            walk!(@attn $v, &format!("{bp}.attn1"), & $($m)? b.attn1, $hw, channels, $($m)?);
            walk!(@attn $v, &format!("{bp}.attn2"), & $($m)? b.attn2, $hw, channels, $($m)?);
            walk!(@lin $v, &format!("{bp}.ff.net.0.proj"), & $($m)? b.ff.geglu.proj, $($m)?);
            walk!(@lin $v, &format!("{bp}.ff.net.2"), & $($m)? b.ff.out, $($m)?);
        }
        walk!(@proj $v, &format!("{p}.proj_out"), & $($m)? t.proj_out, $($m)?);
    }};
}

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
    /// `time_proj`: the sinusoidal embedding, of width `block_out_channels[0]`.
    pub time_proj: Timesteps,
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
        let spec = |heads: usize| BlockSpec {
            temb,
            eps: cfg.norm_eps,
            transformer: TransformerSpec {
                heads,
                context_dim: cfg.cross_attention_dim,
                groups: cfg.norm_num_groups,
                linear_projection: cfg.use_linear_projection,
                upcast: cfg.upcast_attention,
            },
        };

        let time_embedding = TimestepEmbedding::load(&vb.pp("time_embedding"), c0, temb)?;
        let conv_in = Conv2d::load(&vb.pp("conv_in"), cfg.in_channels, c0, 3, 1, 1)?;

        let mut down_blocks = Vec::new();
        let mut c_prev = c0;
        for (i, (level, &kind)) in levels.iter().zip(&cfg.down_blocks).enumerate() {
            let plan = DownBlockPlan {
                in_channels: c_prev,
                out_channels: level.channels,
                layers: cfg.layers_per_block,
                kind,
                downsample: i + 1 < n,
            };
            down_blocks.push(DownBlock::load(
                &vb.pp(format!("down_blocks.{i}")),
                &spec(level.heads),
                &plan,
            )?);
            c_prev = level.channels;
        }

        let last = &levels[n - 1];
        let mid_block = MidBlock::load(&vb.pp("mid_block"), &spec(last.heads), last.channels)?;

        let mut up_blocks = Vec::new();
        let rev: Vec<_> = levels.iter().rev().collect();
        let mut prev_out = last.channels;
        for (i, &kind) in cfg.up_blocks.iter().enumerate() {
            let plan = UpBlockPlan {
                prev_channels: prev_out,
                out_channels: rev[i].channels,
                last_skip_channels: rev[(i + 1).min(n - 1)].channels,
                layers: cfg.layers_per_block,
                kind,
                upsample: i + 1 < n,
            };
            up_blocks.push(UpBlock::load(
                &vb.pp(format!("up_blocks.{i}")),
                &spec(rev[i].heads),
                &plan,
            )?);
            prev_out = plan.out_channels;
        }

        let mut unet = Self {
            time_embedding,
            conv_in,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(
                &vb.pp("conv_norm_out"),
                cfg.norm_num_groups,
                c0,
                cfg.norm_eps,
            )?,
            conv_out: Conv2d::load(&vb.pp("conv_out"), c0, cfg.out_channels, 3, 1, 1)?,
            time_proj: Timesteps::new(c0, cfg.flip_sin_to_cos, cfg.freq_shift, vb.device()),
            in_channels: cfg.in_channels,
            context_dim: cfg.cross_attention_dim,
        };
        // Every attention is named by its place in the tree (the walk below), the same names
        // the checkpoint's keys and the module visitors use.
        unet.walk_mut((1, 1), &mut NamePaths);
        Ok(unet)
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
        // The model runs in its weights' dtype; latents and the result stay in the caller's
        // (f32 for the schedulers), cast once at each end.
        let io_dtype = sample.dtype();
        let dtype = self.dtype();
        let sample = sample.cast(dtype);
        let context = &context.clone().cast(dtype);
        let t = self.time_proj.forward(timestep, b).cast(dtype);
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
        Ok(self
            .conv_out
            .forward(self.conv_norm_out.forward_silu(x))
            .cast(io_dtype))
    }

    /// The dtype the weights are held (and the model computes) in.
    pub fn dtype(&self) -> burn::tensor::DType {
        self.conv_in.weight.val().dtype()
    }

    /// Every Linear and Conv2d layer with its checkpoint path (`time_embedding.linear_1`,
    /// `down_blocks.0.resnets.1.conv1`, `…attn2.to_k`, `…ff.net.2`, `…proj_in`,
    /// `…downsamplers.0.conv`, …), in execution order: what personalization (LoRA, LoCon,
    /// Custom Diffusion) can update.
    pub fn for_each_module_mut(&mut self, f: &mut dyn FnMut(&str, ModuleMut)) {
        struct Modules<'f>(&'f mut dyn FnMut(&str, ModuleMut));
        impl VisitMut for Modules<'_> {
            fn linear(&mut self, path: &str, l: &mut crate::nn::Linear) {
                (self.0)(path, ModuleMut::Linear(l));
            }
            fn conv(&mut self, path: &str, c: &mut Conv2d) {
                (self.0)(path, ModuleMut::Conv(c));
            }
        }
        self.walk_mut((1, 1), &mut Modules(f));
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

    /// Every attention site in execution order, with its size for a `height × width` latent
    /// (what [`forward`](Self::forward) hands the processor at that size).
    pub fn sites(&self, height: usize, width: usize) -> Vec<AttentionSite<'_>> {
        struct Sites<'u> {
            out: Vec<AttentionSite<'u>>,
            latent: (usize, usize),
        }
        impl<'u> Visit<'u> for Sites<'u> {
            fn attention(&mut self, a: &'u Attention, (h, w): (usize, usize), channels: usize) {
                self.out.push(AttentionSite {
                    path: &a.path,
                    kind: if a.cross {
                        AttentionKind::CrossAttention
                    } else {
                        AttentionKind::SelfAttention
                    },
                    index: self.out.len(),
                    height: h,
                    width: w,
                    heads: a.heads,
                    head_dim: channels / a.heads,
                    latent_height: self.latent.0,
                    latent_width: self.latent.1,
                    upcast: a.upcast,
                });
            }
        }
        let mut v = Sites {
            out: Vec::new(),
            latent: (height, width),
        };
        self.walk((height, width), &mut v);
        v.out
    }

    /// Visit the tree in execution order (see [`walk!`]).
    fn walk<'u>(&'u self, latent: (usize, usize), v: &mut dyn Visit<'u>) {
        walk!(self, v, latent,);
    }

    /// Visit the tree in execution order, mutably.
    fn walk_mut(&mut self, latent: (usize, usize), v: &mut dyn VisitMut) {
        walk!(self, v, latent, mut);
    }
}

/// Names every attention module by its path in the tree.
struct NamePaths;

impl VisitMut for NamePaths {
    fn attention(&mut self, path: &str, a: &mut Attention) {
        a.path = path.to_string();
    }
}

/// What [`UNet2DConditionModel::walk`] calls, in execution order.
trait Visit<'u> {
    /// An attention module on a `(h, w)` map of `channels` channels.
    fn attention(&mut self, a: &'u Attention, hw: (usize, usize), channels: usize) {
        let _ = (a, hw, channels);
    }
}

/// What [`UNet2DConditionModel::walk_mut`] calls, in execution order, with each module's
/// checkpoint path.
trait VisitMut {
    /// A Linear layer.
    fn linear(&mut self, path: &str, l: &mut crate::nn::Linear) {
        let _ = (path, l);
    }
    /// A convolution.
    fn conv(&mut self, path: &str, c: &mut Conv2d) {
        let _ = (path, c);
    }
    /// An attention module (`…attn1`, `…attn2`).
    fn attention(&mut self, path: &str, a: &mut Attention) {
        let _ = (path, a);
    }
}
