//! The two stage traits and what passes between them.

use burn::tensor::Tensor;
use layret_attention::KvStore;
use layret_core::Result;
use layret_core::stable_diffusion::Progress;

use crate::models::ModelPair;
use crate::prompts::SubjectPrompts;
use crate::settings::MethodSettings;

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
    /// The swapped sites' keys/values per step (`None`: the retouch stage recomputes them).
    pub kv: Option<KvStore>,
    /// `λ1`.
    pub lambda1: usize,
}

/// Stage 1: produce the context (layout) trajectory.
pub trait LayoutStage {
    /// Run the stage for `request` on `models`, reporting progress.
    fn layout(
        &mut self,
        models: &ModelPair,
        request: &LayoutRequest,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<LayoutResult>;
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
    /// [-1, 1]).
    fn retouch(
        &mut self,
        models: &ModelPair,
        layout: &LayoutResult,
        reference: &Tensor<4>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<RetouchResult>;
}
