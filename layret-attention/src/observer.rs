//! Observers: processors' quiet siblings, which see an attention call (its inputs and the
//! output the computing processor gave) without changing it. Several observers can share a
//! site with the processor that computes it (see [`Router::observe`](crate::Router::observe)).

use burn::tensor::Tensor;
use layret_core::Result;
use layret_core::processor::{AttentionSite, StepContext};

/// One attention call as an observer sees it.
///
/// # Shapes
/// `q` `[B, H, Lq, d]`, `k`/`v` `[B, H, Lk, d]`, `output` `[B, H, Lq, d]`.
#[derive(Debug, Clone, Copy)]
pub struct AttentionCall<'t> {
    /// The queries.
    pub q: &'t Tensor<4>,
    /// The keys.
    pub k: &'t Tensor<4>,
    /// The values.
    pub v: &'t Tensor<4>,
    /// What the computing processor returned.
    pub output: &'t Tensor<4>,
}

/// Sees attention calls without changing them (recording keys/values, statistics, maps).
pub trait AttentionObserver {
    /// Called once before a UNet pass's first attention call.
    fn begin_pass(&mut self, ctx: &StepContext) -> Result<()> {
        let _ = ctx;
        Ok(())
    }

    /// One call at `site`.
    fn observe(
        &mut self,
        site: &AttentionSite,
        ctx: &StepContext,
        call: AttentionCall,
    ) -> Result<()>;

    /// Called once after a UNet pass's last attention call.
    fn end_pass(&mut self, ctx: &StepContext) -> Result<()> {
        let _ = ctx;
        Ok(())
    }
}
