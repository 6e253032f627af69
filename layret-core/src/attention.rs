//! The attention *socket*: every attention call of the UNet goes through an
//! [`AttentionProcessor`].
//!
//! The UNet computes the projections `q = to_q(x)`, `k = to_k(c)`, `v = to_v(c)` (with `c = x`
//! for self-attention, the text embeddings for cross-attention), splits heads, and hands them to
//! the processor together with the [`AttentionSite`] (which layer, where, at what size) and the
//! [`StepContext`] (which sampling step, how the batch is laid out). The processor returns the
//! attention output `[B, heads, Lq, d]`, which the UNet merges and feeds to `to_out`.
//!
//! [`DefaultAttention`] is burn's fused `attention` (softmax(q kᵀ/√d) v). Processors are passed
//! to the UNet's forward as `&mut dyn AttentionProcessor`, never stored globally, so they can
//! record state and two pipelines can run side by side. `layret-attention` builds routing,
//! recording and the swapping processors on this trait.
//!
//! ```
//! use burn::tensor::Tensor;
//! use layret_core::attention::{AttentionProcessor, AttentionSite, StepContext, default_attention};
//!
//! /// Sharpens every self-attention softmax by a temperature.
//! struct Temperature(f64);
//!
//! impl AttentionProcessor for Temperature {
//!     fn attend(&mut self, site: &AttentionSite, _ctx: &StepContext,
//!               q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
//!         if site.is_self() { default_attention(q * (1.0 / self.0), k, v) }
//!         else { default_attention(q, k, v) }
//!     }
//! }
//! ```

use std::ops::Range;

use burn::tensor::Tensor;

/// Self-attention (`attn1`) or cross-attention to the text (`attn2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttentionKind {
    /// Queries, keys and values from the image tokens (`attn1`).
    SelfAttention,
    /// Queries from the image, keys/values from the text embeddings (`attn2`).
    CrossAttention,
}

/// Which part of the UNet an attention site is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockPosition {
    /// `down_blocks.N` (encoder).
    Down(usize),
    /// `mid_block`.
    Mid,
    /// `up_blocks.N` (decoder).
    Up(usize),
}

/// One attention call of the UNet: its stable identity and its geometry in this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionSite<'a> {
    /// The diffusers module path, e.g. `up_blocks.3.attentions.1.transformer_blocks.0.attn1`.
    pub path: &'a str,
    /// Self or cross.
    pub kind: AttentionKind,
    /// Index of this call in execution order within one UNet pass (0-based).
    pub index: usize,
    /// Height of the feature map (tokens = height × width).
    pub height: usize,
    /// Width of the feature map.
    pub width: usize,
    /// Number of heads.
    pub heads: usize,
    /// Dimension per head.
    pub head_dim: usize,
    /// Height of the UNet's input latent in this pass.
    pub latent_height: usize,
    /// Width of the UNet's input latent in this pass.
    pub latent_width: usize,
}

impl AttentionSite<'_> {
    /// Whether this is a self-attention (`attn1`) site.
    pub fn is_self(&self) -> bool {
        self.kind == AttentionKind::SelfAttention
    }

    /// Down / mid / up block of this site, read from its path.
    pub fn block(&self) -> Option<BlockPosition> {
        let mut parts = self.path.split('.');
        match parts.next()? {
            "mid_block" => Some(BlockPosition::Mid),
            "down_blocks" => parts.next()?.parse().ok().map(BlockPosition::Down),
            "up_blocks" => parts.next()?.parse().ok().map(BlockPosition::Up),
            _ => None,
        }
    }
}

/// How the rows of a UNet batch are laid out: `halves × branches × samples`.
///
/// Row `r` of the batch belongs to CFG half `h` (0 = uncond, 1 = cond; one half when CFG is
/// off), branch `b` and sample `s` with `r = (h·branches + b)·samples + s`. A plain text-to-image
/// pass has one branch; the retouch stage runs e.g. context, reference and target branches in
/// one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLayout {
    /// Branch names, in batch order (e.g. `["target"]` or `["context", "reference", "target"]`).
    pub branches: Vec<String>,
    /// Samples per branch and half.
    pub samples: usize,
    /// Whether the batch is `[uncond, cond]` halves for classifier-free guidance.
    pub cfg: bool,
}

impl BatchLayout {
    /// One branch named `name` with `samples` rows per half.
    pub fn single(name: &str, samples: usize, cfg: bool) -> Self {
        Self {
            branches: vec![name.to_string()],
            samples,
            cfg,
        }
    }

    /// Number of CFG halves (2 with CFG, else 1).
    pub fn halves(&self) -> usize {
        if self.cfg { 2 } else { 1 }
    }

    /// Total rows.
    pub fn batch_size(&self) -> usize {
        self.halves() * self.branches.len() * self.samples
    }

    /// Index of the branch called `name`.
    pub fn branch(&self, name: &str) -> Option<usize> {
        self.branches.iter().position(|b| b == name)
    }

    /// The rows of `branch` in CFG half `half`.
    pub fn rows(&self, half: usize, branch: usize) -> Range<usize> {
        let start = (half * self.branches.len() + branch) * self.samples;
        start..start + self.samples
    }
}

/// What a processor knows about the current UNet pass.
#[derive(Debug, Clone, PartialEq)]
pub struct StepContext {
    /// Sampling iteration `k` (0 = noisiest).
    pub step: usize,
    /// The diffusion timestep `t_k` of this pass.
    pub timestep: f64,
    /// How the batch is laid out.
    pub layout: BatchLayout,
}

impl StepContext {
    /// A context for a plain pass of `batch` rows (one branch, no CFG bookkeeping).
    pub fn plain(step: usize, timestep: f64, batch: usize) -> Self {
        Self {
            step,
            timestep,
            layout: BatchLayout::single("main", batch, false),
        }
    }
}

/// A plug in the attention socket: computes one attention call.
pub trait AttentionProcessor {
    /// Return the attention output for `q`, `k`, `v`.
    ///
    /// # Shapes
    /// - `q`: `[B, heads, Lq, d]`, `k`, `v`: `[B, heads, Lk, d]`
    /// - returns `[B, heads, Lq, d]` (before `to_out`)
    fn attend(
        &mut self,
        site: &AttentionSite,
        ctx: &StepContext,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> Tensor<4>;
}

/// `softmax(q kᵀ / √d) v` with a fused kernel: layret's tiled kernel on the flex CPU backend
/// for long sequences ([`crate::nn::attention`]), burn's everywhere else.
///
/// # Shapes
/// `q` `[B, H, Lq, d]`, `k`/`v` `[B, H, Lk, d]` → `[B, H, Lq, d]`.
pub fn default_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    crate::nn::attention(q, k, v, None)
}

/// The processor used when none is plugged in: [`default_attention`] everywhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultAttention;

impl AttentionProcessor for DefaultAttention {
    fn attend(
        &mut self,
        _site: &AttentionSite,
        _ctx: &StepContext,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> Tensor<4> {
        default_attention(q, k, v)
    }
}

/// Threads the processor, the step context and the execution counter through a UNet pass.
pub struct AttentionHook<'a> {
    /// The processor every call goes to.
    pub processor: &'a mut dyn AttentionProcessor,
    /// The current step.
    pub ctx: &'a StepContext,
    /// Index the next call gets.
    pub next_index: usize,
    /// `(height, width)` of the UNet's input latent.
    pub latent: (usize, usize),
}

impl<'a> AttentionHook<'a> {
    /// A hook at the start of a pass over a `latent` = `(height, width)` input.
    pub fn new(
        processor: &'a mut dyn AttentionProcessor,
        ctx: &'a StepContext,
        latent: (usize, usize),
    ) -> Self {
        Self {
            processor,
            ctx,
            next_index: 0,
            latent,
        }
    }
}
