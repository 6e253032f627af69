//! Samplers: the [`Scheduler`] trait, DDIM (with DDIM inversion) and the samplers users of
//! diffusers reach for — DPM-Solver++ 2M, Euler, Euler ancestral, UniPC, PNDM — each matching
//! the diffusers class of the same name on the settings of `scheduler/scheduler_config.json`.
//! [`SamplerKind`] picks one by name.

mod config;
mod ddim;
mod dpm_solver;
mod euler;
mod kind;
mod pndm;
mod sigmas;
mod unipc;

use burn::tensor::Tensor;

pub use config::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
pub use ddim::DdimScheduler;
pub use dpm_solver::DpmSolverScheduler;
pub use euler::EulerScheduler;
pub use kind::{SamplerKind, SamplerOptions};
pub use pndm::PndmScheduler;
pub use unipc::UniPcScheduler;

use crate::error::Result;

/// A sampler over a fixed list of timesteps (set when it is built).
///
/// A sampling loop: `reset()`, latents `= noise · init_noise_sigma()`, then for each
/// `k < num_steps()`: the model sees `scale_model_input(x, k)` at `timestep(k)`, and
/// `x = step(output, k, x, noise)`. Multistep samplers keep history between steps, so `step` must
/// be called for `k = 0, 1, …` in order (out of order is an error, not a wrong image).
pub trait Scheduler {
    /// Model evaluations of one run.
    fn num_steps(&self) -> usize;

    /// The timestep the model sees at evaluation `step_index` (fractional for some σ
    /// schedules, e.g. Euler with Karras sigmas). Panics past [`num_steps`](Self::num_steps).
    fn timestep(&self, step_index: usize) -> f64;

    /// Forget any history of a previous run.
    fn reset(&mut self) {}

    /// Whether [`step`](Self::step) needs injected noise (stochastic samplers).
    fn needs_noise(&self) -> bool {
        false
    }

    /// The sample before the first step is `noise × init_noise_sigma`.
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// The model's input at `step_index` (the σ samplers divide by `√(σ² + 1)`).
    ///
    /// # Shapes
    /// `[B, C, h, w]` → `[B, C, h, w]`.
    fn scale_model_input(&self, sample: Tensor<4>, step_index: usize) -> Tensor<4> {
        let _ = step_index;
        sample
    }

    /// One update from sampling step `step_index` to the next.
    ///
    /// # Shapes
    /// `model_output`, `sample`, `noise`: `[B, C, h, w]` → `[B, C, h, w]`.
    fn step(
        &mut self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Result<Tensor<4>>;
}
