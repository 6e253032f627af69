//! The two stage traits and what passes between them.

use std::ops::ControlFlow;

use burn::tensor::Tensor;
use layret_attention::{KvStore, Router};
use layret_core::progress::StageProgress;
use layret_core::{Error, Result};

use crate::hooks::PassHooks;
use crate::models::ModelPair;
use crate::prompts::SubjectPrompts;
use crate::settings::MethodSettings;

/// A progress callback: answers [`ControlFlow::Break`] to stop at the next step boundary.
pub type ProgressFn<'a> = dyn FnMut(StageProgress) -> ControlFlow<()> + 'a;

/// Where a layout stage hands each finished step: the step, and the layout's hooks (lent, so
/// a retouch stage that recomputes the context branch runs it with the same hooks).
pub type StepSink<'a> = dyn FnMut(ContextStep, &mut Router) -> Result<()> + 'a;

/// What a layout stage is asked for: one prompt, `K` samples.
#[derive(Debug, Clone)]
pub struct LayoutRequest {
    /// The prompts (`y_p`, `y_c`, `y_r`, `P`, `C`).
    pub prompts: SubjectPrompts,
    /// Initial noise `z_0`, `[K, 4, h, w]`.
    pub noise: Tensor<4>,
    /// The method's settings.
    pub settings: MethodSettings,
}

/// A layout stage's result: the context trajectory and what the retouch stage needs to replay
/// the context branch.
#[derive(Debug, Clone)]
pub struct LayoutResult {
    /// The request it answers.
    pub request: LayoutRequest,
    /// `z^c_k` for k = 0..=N (`trajectory[N]` is the clean context latent), each `[K, 4, h, w]`.
    pub trajectory: Vec<Tensor<4>>,
    /// The context branch's subject maps per step, `[K, hm·wm]` (empty if not recorded).
    pub maps: Vec<Tensor<2>>,
    /// The swapped sites' keys/values of every step (`None`: not kept — handed to the retouch
    /// stage step by step, or to be recomputed).
    pub kv: Option<KvStore>,
    /// `λ1`.
    pub lambda1: usize,
}

/// What the context branch did at one step `k`, handed to the retouch stage as soon as it is
/// done, so that nothing of it has to stay in memory for the later steps.
#[derive(Debug, Clone)]
pub struct ContextStep {
    /// The sampling iteration.
    pub k: usize,
    /// `z^c_k`, the latent the step ran on, `[K, 4, h, w]`.
    pub latent: Tensor<4>,
    /// `z^c_{k+1}`, its result.
    pub next: Tensor<4>,
    /// The context's subject map of this step, `[K, hm·wm]` (`None` when not recorded: the
    /// retouch stage then recomputes the branch).
    pub map: Option<Tensor<2>>,
    /// The swapped sites' keys/values of this step (`[2K, H, L, d]` each), or `None` when the
    /// layout does not record them (the retouch stage then recomputes the branch).
    pub kv: Option<KvStore>,
}

impl LayoutResult {
    /// Step `k` of this result, as [`LayoutStage::layout_steps`] hands it over.
    pub fn step(&self, k: usize) -> Result<ContextStep> {
        let missing = |what: &str| Error::invalid("layout", format!("no {what} at step {k}"));
        Ok(ContextStep {
            k,
            latent: self
                .trajectory
                .get(k)
                .cloned()
                .ok_or_else(|| missing("latent"))?,
            next: self
                .trajectory
                .get(k + 1)
                .cloned()
                .ok_or_else(|| missing("next latent"))?,
            map: match self.maps.len() {
                0 => None,
                _ => Some(self.maps.get(k).cloned().ok_or_else(|| missing("map"))?),
            },
            kv: self.kv.as_ref().map(|kv| kv.at_step(k)),
        })
    }

    /// The number of steps `N`.
    pub fn steps(&self) -> usize {
        self.trajectory.len().saturating_sub(1)
    }
}

/// Stage 1: produce the context (layout) trajectory.
pub trait LayoutStage {
    /// Run the stage for `request` on `models` with the user's `hooks` on its passes,
    /// reporting progress.
    fn layout(
        &mut self,
        models: &ModelPair,
        request: &LayoutRequest,
        hooks: &mut Router,
        progress: &mut ProgressFn,
    ) -> Result<LayoutResult>;

    /// Run the stage step by step, handing each step to `sink` as soon as it is done (so a
    /// retouch stage can consume it and memory does not grow with the step count). The
    /// default runs [`layout`](Self::layout) and then hands over its steps; a stage that can
    /// work step by step overrides it and leaves `kv` out of the result it returns.
    fn layout_steps(
        &mut self,
        models: &ModelPair,
        request: &LayoutRequest,
        hooks: &mut Router,
        sink: &mut StepSink,
        progress: &mut ProgressFn,
    ) -> Result<LayoutResult> {
        let result = self.layout(models, request, hooks, progress)?;
        for k in 0..result.steps() {
            sink(result.step(k)?, hooks)?;
        }
        Ok(result)
    }
}

/// The final latents of a retouch stage, and the masks of its last step.
#[derive(Debug, Clone)]
pub struct RetouchResult {
    /// `z^t_N`, `[K, 4, h, w]`.
    pub latents: Tensor<4>,
    /// Binary masks at the mask level from the last step, for inspection:
    /// (target `M_t`, context `M_c`, reference `M_r`, blend `M̃` at latent size), each
    /// `[K, 1, h', w']`.
    pub masks: Option<StepMasks>,
}

/// The masks one step used.
#[derive(Debug, Clone)]
pub struct StepMasks {
    /// `M_t`.
    pub target: Tensor<4>,
    /// `M_c`.
    pub context: Tensor<4>,
    /// `M_r`.
    pub reference: Tensor<4>,
    /// `M̃` (latent size), if blending ran.
    pub blend: Option<Tensor<4>>,
}

/// Stage 2: turn a layout into the final latents using a reference of the subject.
pub trait RetouchStage {
    /// Run the stage on `layout` with the reference image `reference` (`[1, 3, H, W]` in
    /// [-1, 1]) and the user's `hooks` (its reference, target and — when it recomputes the
    /// context branch — layout passes).
    fn retouch(
        &mut self,
        models: &ModelPair,
        layout: &LayoutResult,
        reference: &Tensor<4>,
        hooks: &mut PassHooks,
        progress: &mut ProgressFn,
    ) -> Result<RetouchResult>;

    /// Whether the stage already holds the reference of `key` (so a request's progress total
    /// leaves out its computation). The default: no cache.
    fn has_reference(&self, key: &crate::reference::ReferenceKey) -> bool {
        let _ = key;
        false
    }

    /// Run `layout` and this stage together for `request`. The default runs the layout to
    /// the end, then [`retouch`](Self::retouch); a stage that can consume the context step by
    /// step overrides it with [`LayoutStage::layout_steps`], in lockstep (identical outputs,
    /// memory flat in the step count).
    fn retouch_with(
        &mut self,
        models: &ModelPair,
        request: &LayoutRequest,
        layout: &mut dyn LayoutStage,
        reference: &Tensor<4>,
        hooks: &mut PassHooks,
        progress: &mut ProgressFn,
    ) -> Result<(LayoutResult, RetouchResult)> {
        let result = layout.layout(models, request, &mut hooks.layout, progress)?;
        let retouched = self.retouch(models, &result, reference, hooks, progress)?;
        Ok((result, retouched))
    }
}
