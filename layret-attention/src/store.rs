//! Recording cross-attention probabilities.

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use layret_core::Result;
use layret_core::processor::{AttentionProcessor, AttentionSite, Half, StepContext};

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

impl AttentionRecord {
    /// The probabilities on the host as an array `[rows, heads, Lq, Lk]`.
    pub fn probs_array(&self) -> Result<layret_core::array::ndarray::Array4<f32>> {
        layret_core::array::tensor_to_array4(self.probs.clone(), "attention probabilities")
    }
}

/// A processor that computes attention explicitly (probabilities, then `· v`) and records the
/// probabilities of the chosen CFG half, optionally averaged over heads. Route only the sites
/// you need to it: every other site keeps layret's tiled attention kernel.
#[derive(Debug, Clone)]
pub struct AttentionStore {
    average_heads: bool,
    /// `None`: every row.
    half: Option<Half>,
    records: Vec<AttentionRecord>,
}

impl AttentionStore {
    /// A store of the cond half; `average_heads` averages over heads before storing.
    pub fn new(average_heads: bool) -> Self {
        Self {
            average_heads,
            half: Some(Half::Cond),
            records: Vec::new(),
        }
    }

    /// Record `half` instead of the cond half.
    pub fn with_half(mut self, half: Half) -> Self {
        self.half = Some(half);
        self
    }

    /// Record every row (both halves).
    pub fn all_rows(mut self) -> Self {
        self.half = None;
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
    ) -> Result<Tensor<4>> {
        let scale = 1.0 / (site.head_dim as f64).sqrt();
        // Probabilities (what masks are made of) in f32 whatever the model's dtype.
        let dtype = v.dtype();
        let f = burn::tensor::DType::F32;
        // q·kᵀ summed in f32 and rounded to the model's dtype, as a half-precision matmul
        // does on every backend (flex's own f16 matmul would sum in f16: too coarse for maps).
        let s = q.cast(f).matmul(k.swap_dims(2, 3).cast(f));
        let s = if dtype == f { s } else { s.cast(dtype).cast(f) };
        let probs = softmax(s * scale, 3);
        let out = probs.clone().cast(dtype).matmul(v);
        crate::rows::check_batch(&probs, &ctx.layout, "attention probabilities")?;
        let rows = match self.half {
            None => 0..probs.dims()[0],
            Some(h) => ctx.layout.half_rows(h),
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
        Ok(out)
    }
}
