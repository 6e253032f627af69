//! The attention *socket*: every attention call of the UNet goes through an
//! [`AttentionProcessor`].
//!
//! The UNet computes the projections `q = to_q(x)`, `k = to_k(c)`, `v = to_v(c)` (with `c = x`
//! for self-attention, the text embeddings for cross-attention), splits heads, and hands them to
//! the processor together with the [`AttentionSite`] (which layer, where, at what size) and the
//! [`StepContext`] (which step and timestep, which pass and model, how the batch is laid out).
//! The processor returns the attention output `[B, heads, Lq, d]`, which the UNet merges and
//! feeds to `to_out`. A processor can fail ([`attend`](AttentionProcessor::attend) returns a
//! [`Result`]), and hears the start and end of every UNet pass
//! ([`begin_pass`](AttentionProcessor::begin_pass), [`end_pass`](AttentionProcessor::end_pass)).
//!
//! [`DefaultAttention`] computes `softmax(q kᵀ/√d) v` with
//! [`scaled_dot_product_attention`](crate::nn::scaled_dot_product_attention) (layret's tiled
//! kernel on the flex CPU backend, burn's elsewhere). Processors are passed to the UNet's
//! forward as `&mut dyn AttentionProcessor`, never stored globally, so they can record state
//! and two pipelines can run side by side. `layret-attention` builds routing, observing,
//! recording and the swapping processors on this trait; docs/attention.md walks through
//! writing one.
//!
//! ```
//! use burn::tensor::Tensor;
//! use layret_core::Result;
//! use layret_core::processor::{AttentionProcessor, AttentionSite, StepContext, default_attention};
//!
//! /// Sharpens every self-attention softmax by a temperature.
//! struct Temperature(f64);
//!
//! impl AttentionProcessor for Temperature {
//!     fn attend(&mut self, site: &AttentionSite, _ctx: &StepContext,
//!               q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Result<Tensor<4>> {
//!         let q = if site.is_self() { q * (1.0 / self.0) } else { q };
//!         Ok(default_attention(q, k, v))
//!     }
//! }
//! ```

use std::ops::Range;

use burn::tensor::Tensor;

use crate::error::{Error, Result};

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
    /// Whether the model asks for attention scores in f32 even when it runs in half
    /// precision (diffusers' `upcast_attention`, set by SD 2.1).
    pub upcast: bool,
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

    /// Tokens of the feature map (`height × width`).
    pub fn tokens(&self) -> usize {
        self.height * self.width
    }
}

/// A branch of a batch: a group of rows that play one role in a pass. Typed, so a processor
/// asking for a branch the batch lacks gets [`Error::UnknownBranch`] instead of a silent
/// fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Branch {
    /// The only branch of a plain text-to-image pass.
    Main,
    /// The context (layout) branch of Layout-and-Retouch.
    Context,
    /// The reference branch (the inverted subject photo).
    Reference,
    /// The target branch: the image being made.
    Target,
    /// A user's own branches (e.g. several sources of a multi-reference processor).
    Source(u16),
}

impl std::fmt::Display for Branch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Branch::Main => f.write_str("main"),
            Branch::Context => f.write_str("context"),
            Branch::Reference => f.write_str("reference"),
            Branch::Target => f.write_str("target"),
            Branch::Source(i) => write!(f, "source {i}"),
        }
    }
}

/// Which CFG half of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Half {
    /// The unconditional rows (the first half of a CFG batch).
    Uncond,
    /// The conditional rows (the second half; the only one without CFG).
    Cond,
}

/// How the rows of a UNet batch are laid out: `halves × branches × samples`.
///
/// Row `r` of the batch belongs to CFG half `h` (0 = uncond, 1 = cond; one half when CFG is
/// off), branch `b` and sample `s` with `r = (h·branches + b)·samples + s`. A plain text-to-image
/// pass has one branch; a multi-branch pass (e.g. a target beside its sources) has several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLayout {
    branches: Vec<Branch>,
    samples: usize,
    cfg: bool,
}

impl BatchLayout {
    /// `branches` (in batch order, each once) of `samples` rows per half; `cfg` for
    /// `[uncond, cond]` halves.
    pub fn new(branches: Vec<Branch>, samples: usize, cfg: bool) -> Result<Self> {
        if branches.is_empty() || samples == 0 {
            return Err(Error::invalid(
                "batch layout",
                format!(
                    "{} branches of {samples} samples; needs at least one of each",
                    branches.len()
                ),
            ));
        }
        for (i, b) in branches.iter().enumerate() {
            if branches[..i].contains(b) {
                return Err(Error::invalid(
                    "batch layout",
                    format!("branch {b} appears twice"),
                ));
            }
        }
        Ok(Self {
            branches,
            samples: samples.max(1),
            cfg,
        })
    }

    /// One branch of `samples` rows per half (at least 1).
    pub fn single(branch: Branch, samples: usize, cfg: bool) -> Self {
        Self {
            branches: vec![branch],
            samples: samples.max(1),
            cfg,
        }
    }

    /// The branches, in batch order.
    pub fn branches(&self) -> &[Branch] {
        &self.branches
    }

    /// Samples per branch and half.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Whether the batch is `[uncond, cond]` halves for classifier-free guidance.
    pub fn cfg(&self) -> bool {
        self.cfg
    }

    /// Number of CFG halves (2 with CFG, else 1).
    pub fn halves(&self) -> usize {
        if self.cfg { 2 } else { 1 }
    }

    /// Total rows.
    pub fn batch_size(&self) -> usize {
        self.halves() * self.branches.len() * self.samples
    }

    /// Rows per half (`branches × samples`).
    pub fn rows_per_half(&self) -> usize {
        self.branches.len() * self.samples
    }

    /// Whether the batch has `branch`.
    pub fn has(&self, branch: Branch) -> bool {
        self.branches.contains(&branch)
    }

    /// Position of `branch` in the batch, or [`Error::UnknownBranch`].
    pub fn branch_index(&self, branch: Branch) -> Result<usize> {
        self.branches
            .iter()
            .position(|&b| b == branch)
            .ok_or_else(|| Error::UnknownBranch {
                branch: branch.to_string(),
                branches: self
                    .branches
                    .iter()
                    .map(Branch::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The half index of `half` (0 for [`Half::Cond`] without CFG).
    pub fn half_index(&self, half: Half) -> usize {
        match (half, self.cfg) {
            (Half::Uncond, true) => 0,
            (Half::Cond, true) => 1,
            (_, false) => 0,
        }
    }

    /// The halves of the batch, in order.
    pub fn half_list(&self) -> Vec<Half> {
        if self.cfg {
            vec![Half::Uncond, Half::Cond]
        } else {
            vec![Half::Cond]
        }
    }

    /// The rows of `branch` in CFG half `half`.
    pub fn rows(&self, half: Half, branch: Branch) -> Result<Range<usize>> {
        let b = self.branch_index(branch)?;
        let start = (self.half_index(half) * self.branches.len() + b) * self.samples;
        Ok(start..start + self.samples)
    }

    /// The rows of `branch` over every half, in batch order.
    pub fn branch_rows(&self, branch: Branch) -> Result<Vec<usize>> {
        let mut out = Vec::with_capacity(self.halves() * self.samples);
        for h in self.half_list() {
            out.extend(self.rows(h, branch)?);
        }
        Ok(out)
    }

    /// The rows of CFG half `half` (every branch).
    pub fn half_rows(&self, half: Half) -> Range<usize> {
        let start = self.half_index(half) * self.rows_per_half();
        start..start + self.rows_per_half()
    }
}

/// Which kind of UNet pass is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pass {
    /// A sampling step (text-to-image; Layout-and-Retouch's layout, context and target).
    Sample,
    /// A DDIM inversion step (the reference photo towards noise), no CFG.
    Invert,
    /// A pass over the inverted reference at a sampling timestep (recording its keys/values
    /// and maps), with CFG.
    Reference,
}

impl std::fmt::Display for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pass::Sample => "sample",
            Pass::Invert => "invert",
            Pass::Reference => "reference",
        })
    }
}

/// Which model of a vanilla/personalized pair runs a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelRole {
    /// The base model ε.
    Vanilla,
    /// The personalized model ε*.
    Personalized,
}

/// What a processor knows about the current UNet pass.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StepContext {
    /// Sampling iteration `k` (0 = noisiest; inversion counts down to 0 as it goes up in t).
    pub step: usize,
    /// The diffusion timestep `t_k` of this pass.
    pub timestep: f64,
    /// Which kind of pass.
    pub pass: Pass,
    /// Which model runs it.
    pub model: ModelRole,
    /// How the batch is laid out.
    pub layout: BatchLayout,
}

impl StepContext {
    /// A sampling pass of the vanilla model at step `step`, timestep `timestep`.
    pub fn new(step: usize, timestep: f64, layout: BatchLayout) -> Self {
        Self {
            step,
            timestep,
            pass: Pass::Sample,
            model: ModelRole::Vanilla,
            layout,
        }
    }

    /// A plain pass of `batch` rows (one [`Branch::Main`] branch, no CFG bookkeeping).
    pub fn plain(step: usize, timestep: f64, batch: usize) -> Self {
        Self::new(
            step,
            timestep,
            BatchLayout::single(Branch::Main, batch, false),
        )
    }

    /// This context for another kind of pass.
    pub fn with_pass(mut self, pass: Pass) -> Self {
        self.pass = pass;
        self
    }

    /// This context for another model.
    pub fn with_model(mut self, model: ModelRole) -> Self {
        self.model = model;
        self
    }
}

/// A plug in the attention socket: computes one attention call.
pub trait AttentionProcessor {
    /// Called once before a UNet pass's first attention call.
    fn begin_pass(&mut self, ctx: &StepContext) -> Result<()> {
        let _ = ctx;
        Ok(())
    }

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
    ) -> Result<Tensor<4>>;

    /// Called once after a UNet pass's last attention call.
    fn end_pass(&mut self, ctx: &StepContext) -> Result<()> {
        let _ = ctx;
        Ok(())
    }
}

/// `softmax(q kᵀ / √d) v` (see [`crate::nn::scaled_dot_product_attention`]).
///
/// # Shapes
/// `q` `[B, H, Lq, d]`, `k`/`v` `[B, H, Lk, d]` → `[B, H, Lq, d]`.
pub fn default_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    crate::nn::scaled_dot_product_attention(q, k, v, crate::nn::AttentionMask::None)
}

/// [`default_attention`] as the model wants it at `site`: with scores in f32 when the site
/// asks for it ([`AttentionSite::upcast`]) and the tensors are in half precision.
///
/// # Shapes
/// As [`default_attention`].
pub fn default_attention_at(
    site: &AttentionSite,
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
) -> Tensor<4> {
    let dtype = q.dtype();
    if site.upcast && dtype != burn::tensor::DType::F32 {
        let f = burn::tensor::DType::F32;
        default_attention(q.cast(f), k.cast(f), v.cast(f)).cast(dtype)
    } else {
        default_attention(q, k, v)
    }
}

/// The processor used when none is plugged in: [`default_attention_at`] everywhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultAttention;

impl AttentionProcessor for DefaultAttention {
    fn attend(
        &mut self,
        site: &AttentionSite,
        _ctx: &StepContext,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> Result<Tensor<4>> {
        Ok(default_attention_at(site, q, k, v))
    }
}

/// Threads the processor, the step context and the execution counter through a UNet pass.
pub(crate) struct AttentionHook<'a> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_rows_and_unknown_branches() {
        let l = BatchLayout::new(vec![Branch::Context, Branch::Target], 2, true).unwrap();
        assert_eq!(l.batch_size(), 8);
        assert_eq!(l.rows(Half::Uncond, Branch::Target).unwrap(), 2..4);
        assert_eq!(l.rows(Half::Cond, Branch::Context).unwrap(), 4..6);
        assert_eq!(l.branch_rows(Branch::Target).unwrap(), vec![2, 3, 6, 7]);
        assert_eq!(l.half_rows(Half::Cond), 4..8);
        let e = l.rows(Half::Cond, Branch::Reference).unwrap_err();
        assert!(
            e.to_string()
                .contains("branch reference is not in this batch (its branches: context, target)"),
            "{e}"
        );
        assert!(BatchLayout::new(vec![Branch::Main, Branch::Main], 1, false).is_err());
        assert!(BatchLayout::new(vec![], 1, false).is_err());
        let plain = BatchLayout::single(Branch::Main, 3, false);
        assert_eq!(plain.rows(Half::Cond, Branch::Main).unwrap(), 0..3);
        assert_eq!(plain.half_list(), vec![Half::Cond]);
    }
}
