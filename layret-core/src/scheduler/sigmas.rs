//! What the sigma-based samplers share: the training sigmas, diffusers' timestep spacings,
//! Karras sigmas and the sigma → timestep map, computed as diffusers (numpy float64 for the
//! schedule, float32 for what the model sees). See tools/reference/samplers.md §0.

use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use crate::error::{Error, Result};

/// The training noise levels of a config.
#[derive(Debug, Clone)]
pub(crate) struct TrainSigmas {
    /// `σ_j = sqrt((1 − ᾱ_j) / ᾱ_j)` in f32.
    pub sigmas: Vec<f32>,
    /// `ln σ_j` in f32.
    pub log_sigmas: Vec<f32>,
}

impl TrainSigmas {
    pub fn new(ac: &[f32]) -> Self {
        let sigmas: Vec<f32> = ac.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect();
        let log_sigmas = sigmas.iter().map(|s| s.ln()).collect();
        Self { sigmas, log_sigmas }
    }

    /// numpy's `interp(t, arange(T), σ)`: exact at integers, clamped at the ends.
    pub fn interp(&self, t: f64) -> f64 {
        let n = self.sigmas.len();
        if t <= 0.0 {
            return self.sigmas[0] as f64;
        }
        if t >= (n - 1) as f64 {
            return self.sigmas[n - 1] as f64;
        }
        let j = t.floor() as usize;
        let (a, b) = (self.sigmas[j] as f64, self.sigmas[j + 1] as f64);
        if t == j as f64 {
            return a;
        }
        a + (b - a) * (t - j as f64)
    }

    /// diffusers' `_sigma_to_t`: the (fractional) timestep of noise level `sigma`.
    pub fn sigma_to_t(&self, sigma: f64) -> f64 {
        let l = sigma.max(1e-10).ln();
        let n = self.log_sigmas.len();
        let mut low = 0;
        for (j, &ls) in self.log_sigmas.iter().enumerate() {
            if (ls as f64) <= l {
                low = j;
            }
        }
        let low = low.min(n - 2);
        let (a, b) = (self.log_sigmas[low] as f64, self.log_sigmas[low + 1] as f64);
        let w = ((a - l) / (a - b)).clamp(0.0, 1.0);
        (1.0 - w) * low as f64 + w * (low + 1) as f64
    }
}

/// `np.linspace(a, b, n)` in float64.
pub(crate) fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![a];
    }
    let step = (b - a) / (n - 1) as f64;
    (0..n)
        .map(|j| if j == n - 1 { b } else { a + j as f64 * step })
        .collect()
}

/// `np.arange(T, 0, -T/N)` (float step): diffusers' trailing grid, descending.
pub(crate) fn trailing_arange(t: usize, n: usize) -> Vec<f64> {
    let tf = t as f64;
    let r = tf / n as f64;
    let len = ((0.0 - tf) / (-r)).ceil() as usize;
    let d = (tf - r) - tf;
    (0..len).map(|i| tf + i as f64 * d).collect()
}

/// Karras et al.'s sigmas (ρ = 7) from `max` down to `min`, `n` of them.
pub(crate) fn karras(min: f64, max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let (lo, hi) = (min.powf(1.0 / rho), max.powf(1.0 / rho));
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (hi + r * (lo - hi)).powi(7))
        .collect()
}

/// Steps must be at least 1 and at most the training timesteps.
pub(crate) fn check_steps(config: &SchedulerConfig, steps: usize) -> Result<()> {
    let t = config.num_train_timesteps;
    if steps == 0 || steps > t {
        return Err(Error::invalid(
            "steps",
            format!("{steps}; must be between 1 and the {t} training timesteps"),
        ));
    }
    Ok(())
}

/// The integer timesteps of the DPM-Solver family (DPM++, UniPC): leading and linspace
/// build `N + 1` points and drop the smallest.
pub(crate) fn multistep_timesteps(config: &SchedulerConfig, n: usize) -> Vec<f64> {
    let t = config.num_train_timesteps;
    match config.timestep_spacing {
        TimestepSpacing::Leading => {
            let r = t / (n + 1);
            (0..n)
                .map(|k| ((n - k) * r + config.steps_offset) as f64)
                .collect()
        }
        TimestepSpacing::Linspace => {
            let lin = linspace(0.0, (t - 1) as f64, n + 1);
            (0..n).map(|k| lin[n - k].round_ties_even()).collect()
        }
        TimestepSpacing::Trailing => trailing_arange(t, n)
            .into_iter()
            .map(|v| v.round_ties_even() - 1.0)
            .collect(),
    }
}

/// The VP view of a VE noise level: `α = 1/√(σ²+1)`, `s = σ·α`, `λ = ln α − ln s` (f32, as
/// diffusers' 0-d tensors; at σ = 0, `λ = +∞`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Vp {
    pub alpha: f32,
    pub sigma: f32,
    pub lambda: f32,
}

impl Vp {
    pub fn of(sigma: f32) -> Self {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        let s = sigma * alpha;
        Self {
            alpha,
            sigma: s,
            lambda: alpha.ln() - s.ln(),
        }
    }
}

/// The data prediction `x0` of the DPM-Solver family (VP parametrization) at `vp`.
pub(crate) fn vp_x0(
    prediction: PredictionType,
    model_output: burn::tensor::Tensor<4>,
    sample: burn::tensor::Tensor<4>,
    vp: Vp,
) -> burn::tensor::Tensor<4> {
    match prediction {
        PredictionType::Epsilon => (sample - model_output * vp.sigma) / vp.alpha,
        PredictionType::VPrediction => sample * vp.alpha - model_output * vp.sigma,
        PredictionType::Sample => model_output,
    }
}

/// Checks `step_index` is the step a multistep sampler expects next.
pub(crate) fn check_order(name: &str, expected: usize, got: usize, total: usize) -> Result<()> {
    if got != expected {
        return Err(Error::invalid(
            "step_index",
            format!(
                "{got}; {name} keeps history between steps and expects step {expected} of {total} next (call reset() to start over)"
            ),
        ));
    }
    Ok(())
}
