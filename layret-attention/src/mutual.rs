//! MasaCtrl-style mutual self-attention.

use burn::tensor::Tensor;
use layret_core::Result;
use layret_core::processor::{
    AttentionProcessor, AttentionSite, Branch, StepContext, default_attention_at,
};

use crate::rows::{check_batch, take_rows};

/// From step `start_step` on, the target branch's queries attend to the source branch's keys
/// and values (per CFG half); the source branch and earlier steps use plain attention. The
/// batch must carry both branches (else [`Error::UnknownBranch`](layret_core::Error::UnknownBranch)).
/// Route it to the layers to share (MasaCtrl: decoder self-attention).
#[derive(Debug, Clone)]
pub struct MutualSelfAttention {
    source: Branch,
    target: Branch,
    start_step: usize,
}

impl MutualSelfAttention {
    /// Target branch `target` reads branch `source` from step `start_step` on.
    pub fn new(source: Branch, target: Branch, start_step: usize) -> Self {
        Self {
            source,
            target,
            start_step,
        }
    }
}

impl AttentionProcessor for MutualSelfAttention {
    fn attend(
        &mut self,
        site: &AttentionSite,
        ctx: &StepContext,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> Result<Tensor<4>> {
        let layout = &ctx.layout;
        check_batch(&q, layout, "queries")?;
        // Both branches must be there from the first step on (a typo fails at once).
        let (src, tgt) = (
            layout.branch_rows(self.source)?,
            layout.branch_rows(self.target)?,
        );
        if ctx.step < self.start_step {
            return Ok(default_attention_at(site, q, k, v));
        }
        // Each row reads its own keys, except target rows, which read their source row.
        let mut map: Vec<usize> = (0..layout.batch_size()).collect();
        for (t, s) in tgt.into_iter().zip(src) {
            map[t] = s;
        }
        Ok(default_attention_at(
            site,
            q,
            take_rows(k, &map),
            take_rows(v, &map),
        ))
    }
}
