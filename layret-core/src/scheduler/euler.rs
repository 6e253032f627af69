//! diffusers' `EulerDiscreteScheduler` and `EulerAncestralDiscreteScheduler` (Karras et al.'s
//! VE formulation; tools/reference/samplers.md §1–2).

use burn::tensor::Tensor;

use super::Scheduler;
use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::sigmas::{TrainSigmas, check_steps, karras, linspace, trailing_arange};
use crate::error::{Error, Result};

/// Euler (deterministic, `s_churn = 0`) or Euler ancestral over σ-spaced timesteps.
///
/// The UNet gets `scale_model_input(x) = x / √(σ² + 1)` at (possibly fractional) timesteps;
/// the initial latents are `noise · init_noise_sigma`.
#[derive(Debug, Clone)]
pub struct EulerScheduler {
    prediction: PredictionType,
    timesteps: Vec<f64>,
    /// `S + 1` noise levels, the last 0.
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    ancestral: bool,
}

impl EulerScheduler {
    /// `EulerDiscreteScheduler` for `steps` steps (`karras`: `use_karras_sigmas`).
    pub fn new(config: &SchedulerConfig, steps: usize, karras: bool) -> Result<Self> {
        Self::build(config, steps, karras, false)
    }

    /// `EulerAncestralDiscreteScheduler` for `steps` steps: fresh noise at every step
    /// ([`Scheduler::needs_noise`]).
    pub fn ancestral(config: &SchedulerConfig, steps: usize) -> Result<Self> {
        Self::build(config, steps, false, true)
    }

    fn build(
        config: &SchedulerConfig,
        n: usize,
        use_karras: bool,
        ancestral: bool,
    ) -> Result<Self> {
        check_steps(config, n)?;
        if config.prediction_type == PredictionType::Sample {
            return Err(Error::invalid(
                "prediction_type",
                "sample; the Euler samplers support epsilon and v_prediction",
            ));
        }
        let train = TrainSigmas::new(&config.alphas_cumprod());
        let t = config.num_train_timesteps;
        let mut timesteps: Vec<f64> = match config.timestep_spacing {
            TimestepSpacing::Leading => {
                let r = t / n;
                (0..n)
                    .map(|k| ((n - 1 - k) * r) as f32 as f64 + config.steps_offset as f64)
                    .collect()
            }
            TimestepSpacing::Trailing => trailing_arange(t, n)
                .into_iter()
                .map(|v| v.round_ties_even() as f32 as f64 - 1.0)
                .collect(),
            TimestepSpacing::Linspace => {
                let lin = linspace(0.0, (t - 1) as f64, n);
                lin.iter().rev().map(|&v| v as f32 as f64).collect()
            }
        };
        let mut sigmas_f64: Vec<f64> = timesteps.iter().map(|&ts| train.interp(ts)).collect();
        if use_karras {
            let (max, min) = (sigmas_f64[0], sigmas_f64[sigmas_f64.len() - 1]);
            sigmas_f64 = karras(min, max, n);
            timesteps = sigmas_f64
                .iter()
                .map(|&s| train.sigma_to_t(s) as f32 as f64)
                .collect();
        }
        let mut sigmas: Vec<f32> = sigmas_f64.iter().map(|&s| s as f32).collect();
        sigmas.push(0.0);
        let max = sigmas.iter().copied().fold(0.0f32, f32::max);
        let init_noise_sigma = match config.timestep_spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        };
        Ok(Self {
            prediction: config.prediction_type,
            timesteps,
            sigmas,
            init_noise_sigma,
            ancestral,
        })
    }

    /// The `S + 1` noise levels (the last 0).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Scheduler for EulerScheduler {
    fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    fn timestep(&self, step_index: usize) -> f64 {
        self.timesteps[step_index]
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma as f64
    }

    fn needs_noise(&self) -> bool {
        self.ancestral
    }

    fn scale_model_input(&self, sample: Tensor<4>, step_index: usize) -> Tensor<4> {
        let s = self.sigmas[step_index.min(self.sigmas.len() - 1)];
        sample / (s * s + 1.0).sqrt()
    }

    fn step(
        &mut self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Result<Tensor<4>> {
        let n = self.timesteps.len();
        if step_index >= n {
            return Err(Error::invalid(
                "step_index",
                format!("{step_index}; the schedule has {n} steps"),
            ));
        }
        let (s, next) = (self.sigmas[step_index], self.sigmas[step_index + 1]);
        let x0 = match self.prediction {
            PredictionType::VPrediction => {
                model_output * (-s / (s * s + 1.0).sqrt()) + sample.clone() / (s * s + 1.0)
            }
            _ => sample.clone() - model_output * s,
        };
        let d = (sample.clone() - x0) / s;
        if !self.ancestral {
            return Ok(sample + d * (next - s));
        }
        let Some(noise) = noise else {
            return Err(Error::invalid(
                "noise",
                "Euler ancestral needs fresh noise for every step",
            ));
        };
        let up = ((next * next) * (s * s - next * next) / (s * s)).sqrt();
        let down = (next * next - up * up).sqrt();
        Ok((sample + d * (down - s)) + noise * up)
    }
}
