//! Recording cross-attention probabilities.

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use layret_core::attention::{AttentionProcessor, AttentionSite, StepContext};

/// Which CFG half to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    /// The unconditional rows.
    Uncond,
    /// The conditional rows (the default: masks come from them).
    Cond,
    /// All rows.
    Both,
}

/// The attention probabilities of one site at one step.
#[derive(Debug, Clone)]
pub struct AttentionRecord {
    /// The site's diffusers path.
    pub path: String,
    /// The sampling step.
    pub step: usize,
    /// Feature-map height.
    pub height: usize,
    /// Feature-map width.
    pub width: usize,
    /// `softmax(q kᵀ/√d)` of the recorded rows: `[rows, heads (1 if averaged), Lq, Lk]`.
    pub probs: Tensor<4>,
}

/// A processor that computes attention explicitly (probabilities, then `· v`) and records the
/// probabilities of the chosen CFG half, optionally averaged over heads. Route only the sites
/// you need to it: every other site keeps the fused kernel.
#[derive(Debug, Clone)]
pub struct AttentionStore {
    average_heads: bool,
    half: Half,
    records: Vec<AttentionRecord>,
}

impl AttentionStore {
    /// A store of the cond half; `average_heads` averages over heads before storing.
    pub fn new(average_heads: bool) -> Self {
        Self {
            average_heads,
            half: Half::Cond,
            records: Vec::new(),
        }
    }

    /// Record `half` instead of the cond half.
    pub fn with_half(mut self, half: Half) -> Self {
        self.half = half;
        self
    }

    /// Everything recorded so far, in call order.
    pub fn records(&self) -> &[AttentionRecord] {
        &self.records
    }

    /// The record of `path` at `step`.
    pub fn get(&self, path: &str, step: usize) -> Option<&AttentionRecord> {
        self.records
            .iter()
            .find(|r| r.path == path && r.step == step)
    }

    /// The records of `step` whose map is `height × width`.
    pub fn at(&self, step: usize, height: usize, width: usize) -> Vec<&AttentionRecord> {
        self.records
            .iter()
            .filter(|r| r.step == step && r.height == height && r.width == width)
            .collect()
    }

    /// Remove and return all records.
    pub fn take(&mut self) -> Vec<AttentionRecord> {
        std::mem::take(&mut self.records)
    }
}

impl AttentionProcessor for AttentionStore {
    fn attend(
        &mut self,
        site: &AttentionSite,
        ctx: &StepContext,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> Tensor<4> {
        let scale = 1.0 / (site.head_dim as f64).sqrt();
        let probs = softmax(q.matmul(k.swap_dims(2, 3)) * scale, 3);
        let out = probs.clone().matmul(v);
        let b = probs.dims()[0];
        let rows = match (self.half, ctx.layout.cfg) {
            (Half::Both, _) | (_, false) => 0..b,
            (Half::Uncond, true) => 0..b / 2,
            (Half::Cond, true) => b / 2..b,
        };
        let kept = probs.slice([rows]);
        let kept = if self.average_heads {
            kept.mean_dim(1)
        } else {
            kept
        };
        self.records.push(AttentionRecord {
            path: site.path.to_string(),
            step: ctx.step,
            height: site.height,
            width: site.width,
            probs: kept,
        });
        out
    }
}
