//! Samplers: the [`Scheduler`] trait and DDIM (with DDIM inversion), read from
//! `scheduler/scheduler_config.json`.

mod config;
mod ddim;

use burn::tensor::Tensor;

pub use config::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};
pub use ddim::DdimScheduler;

use crate::error::Result;

/// A sampler over a fixed list of timesteps (set when it is built).
pub trait Scheduler {
    /// The timesteps, in sampling order (noisiest first).
    fn timesteps(&self) -> &[usize];

    /// Whether [`step`](Self::step) needs injected noise (stochastic samplers).
    fn needs_noise(&self) -> bool {
        false
    }

    /// The sample before the first step is `noise × init_noise_sigma`.
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// One update from sampling step `step_index` to the next.
    ///
    /// # Shapes
    /// `model_output`, `sample`, `noise`: `[B, C, h, w]` → `[B, C, h, w]`.
    fn step(
        &self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Result<Tensor<4>>;
}
