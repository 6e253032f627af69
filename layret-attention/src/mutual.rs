//! MasaCtrl-style mutual self-attention.

use burn::tensor::Tensor;
use layret_core::attention::{AttentionProcessor, AttentionSite, StepContext, default_attention};

use crate::kv::take_rows;

/// From step `start_step` on, the target branch's queries attend to the source branch's keys
/// and values (per CFG half); the source branch and earlier steps use plain attention. The
/// batch must carry both branches ([`BatchLayout`](layret_core::attention::BatchLayout)).
/// Route it to the layers to share (MasaCtrl: decoder self-attention).
#[derive(Debug, Clone)]
pub struct MutualSelfAttention {
    source: String,
    target: String,
    start_step: usize,
}

impl MutualSelfAttention {
    /// Target branch `target` reads branch `source` from step `start_step` on.
    pub fn new(source: &str, target: &str, start_step: usize) -> Self {
        Self {
            source: source.to_string(),
            target: target.to_string(),
            start_step,
        }
    }
}

impl AttentionProcessor for MutualSelfAttention {
    fn attend(
        &mut self,
        _site: &AttentionSite,
        ctx: &StepContext,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> Tensor<4> {
        let layout = &ctx.layout;
        let (Some(src), Some(tgt)) = (layout.branch(&self.source), layout.branch(&self.target))
        else {
            return default_attention(q, k, v);
        };
        if ctx.step < self.start_step {
            return default_attention(q, k, v);
        }
        // Each row reads its own keys, except target rows, which read their source row.
        let mut map: Vec<usize> = (0..layout.batch_size()).collect();
        for h in 0..layout.halves() {
            for (t, s) in layout.rows(h, tgt).zip(layout.rows(h, src)) {
                map[t] = s;
            }
        }
        default_attention(q, take_rows(k, &map), take_rows(v, &map))
    }
}
