use burn::tensor::Tensor;

use super::Scheduler;
use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use crate::error::{Error, Result};

/// DDIM (Song et al. 2021) as diffusers' `DDIMScheduler`, with η and injected noise, plus the
/// DDIM inversion step that docs/method.md defines.
#[derive(Debug, Clone)]
pub struct DdimScheduler {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<usize>,
    /// `⌊T/N⌋`: the distance to the previous timestep.
    step_ratio: usize,
    eta: f64,
    /// For [`on_timesteps`](Self::on_timesteps): each timestep's previous one (the next
    /// smaller in the list, −1 below the smallest) instead of `t − ⌊T/N⌋`.
    previous: Option<Vec<i64>>,
}

/// Coefficients of one DDIM update `x' = a·x0 + b·ε (+ σ·noise)`.
struct Coefs {
    alpha_t: f32,
    alpha_prev: f32,
}

impl DdimScheduler {
    /// A scheduler for `steps` inference steps with `eta` (0 = deterministic DDIM).
    pub fn new(config: SchedulerConfig, steps: usize, eta: f64) -> Result<Self> {
        let t = config.num_train_timesteps;
        if steps == 0 || steps > t {
            return Err(Error::invalid(
                "steps",
                format!("{steps}; must be between 1 and the {t} training timesteps"),
            ));
        }
        if !(eta.is_finite() && eta >= 0.0) {
            return Err(Error::invalid(
                "eta",
                format!("{eta}; must be a finite value ≥ 0"),
            ));
        }
        let alphas_cumprod = config.alphas_cumprod();
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        let timesteps: Vec<usize> = match config.timestep_spacing {
            TimestepSpacing::Leading => {
                let r = t / steps;
                (0..steps)
                    .rev()
                    .map(|k| k * r + config.steps_offset)
                    .collect()
            }
            TimestepSpacing::Trailing => {
                let r = t as f64 / steps as f64;
                (0..steps)
                    .map(|k| (round_half_even(t as f64 - k as f64 * r) as usize).saturating_sub(1))
                    .collect()
            }
            TimestepSpacing::Linspace => {
                let last = (t - 1) as f64;
                (0..steps)
                    .rev()
                    .map(|k| {
                        let v = if steps == 1 {
                            0.0
                        } else {
                            last * k as f64 / (steps - 1) as f64
                        };
                        round_half_even(v) as usize
                    })
                    .collect()
            }
        };
        if let Some(&bad) = timesteps.iter().find(|&&ts| ts >= t) {
            return Err(Error::invalid(
                "steps_offset",
                format!("timestep {bad} is past the {t} training timesteps"),
            ));
        }
        Ok(Self {
            step_ratio: t / steps,
            config,
            alphas_cumprod,
            final_alpha_cumprod,
            timesteps,
            eta,
            previous: None,
        })
    }

    /// Deterministic DDIM on the given timesteps (strictly decreasing, below `T`), where the
    /// previous timestep of `t` is the next smaller one in the list (−1, i.e. ᾱ =
    /// `final_alpha_cumprod`, below the smallest). For the evenly spaced leading and trailing
    /// grids this is [`new`](Self::new) exactly; it lets the reference be inverted onto another
    /// sampler's timesteps.
    pub fn on_timesteps(config: SchedulerConfig, timesteps: Vec<usize>) -> Result<Self> {
        let t = config.num_train_timesteps;
        let ok =
            !timesteps.is_empty() && timesteps.windows(2).all(|w| w[0] > w[1]) && timesteps[0] < t;
        if !ok {
            return Err(Error::invalid(
                "timesteps",
                format!("{timesteps:?}; must be strictly decreasing and below {t}"),
            ));
        }
        let mut ddim = Self::new(config, timesteps.len(), 0.0)?;
        let mut previous: Vec<i64> = timesteps.iter().skip(1).map(|&p| p as i64).collect();
        previous.push(-1);
        ddim.timesteps = timesteps;
        ddim.previous = Some(previous);
        Ok(ddim)
    }

    /// The timesteps, in sampling order (noisiest first).
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// One DDIM update from sampling step `step_index` to the next (the [`Scheduler`] step,
    /// callable through a shared reference: DDIM keeps no history).
    ///
    /// # Shapes
    /// `model_output`, `sample`, `noise`: `[B, C, h, w]` → `[B, C, h, w]`.
    pub fn step(
        &self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Result<Tensor<4>> {
        let Some(&t) = self.timesteps.get(step_index) else {
            return Err(Error::invalid(
                "step_index",
                format!(
                    "{step_index}; the schedule has {} steps",
                    self.timesteps.len()
                ),
            ));
        };
        let c = self.coefs(t);
        let (x0, eps) = self.predict(model_output, sample, c.alpha_t);
        let beta_t = 1.0 - c.alpha_t;
        let beta_prev = 1.0 - c.alpha_prev;
        let variance = (beta_prev / beta_t) * (1.0 - c.alpha_t / c.alpha_prev);
        let std = self.eta as f32 * variance.sqrt();
        let dir = eps * (1.0 - c.alpha_prev - std * std).sqrt();
        let prev = x0 * c.alpha_prev.sqrt() + dir;
        if self.eta > 0.0 {
            let Some(noise) = noise else {
                return Err(Error::invalid(
                    "noise",
                    "DDIM with eta > 0 needs variance noise for every step",
                ));
            };
            Ok(prev + noise * std)
        } else {
            Ok(prev)
        }
    }

    /// ᾱ_t for every training timestep.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// The scheduler config.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// `⌊T/N⌋`.
    pub fn step_ratio(&self) -> usize {
        self.step_ratio
    }

    /// ᾱ(t), with ᾱ = final_alpha_cumprod for t < 0.
    pub fn alpha_bar(&self, t: i64) -> f32 {
        if t < 0 {
            self.final_alpha_cumprod
        } else {
            self.alphas_cumprod[(t as usize).min(self.alphas_cumprod.len() - 1)]
        }
    }

    /// `(x0, ε)` predicted from the model output at noise level ᾱ = `alpha`.
    fn predict(
        &self,
        model_output: Tensor<4>,
        sample: Tensor<4>,
        alpha: f32,
    ) -> (Tensor<4>, Tensor<4>) {
        let (sa, sb) = (alpha.sqrt(), (1.0 - alpha).sqrt());
        let (x0, eps) = match self.config.prediction_type {
            PredictionType::Epsilon => ((sample - model_output.clone() * sb) / sa, model_output),
            PredictionType::VPrediction => (
                sample.clone() * sa - model_output.clone() * sb,
                model_output * sa + sample * sb,
            ),
            PredictionType::Sample => {
                let eps = (sample - model_output.clone() * sa) / sb;
                (model_output, eps)
            }
        };
        let x0 = if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            x0.clamp(-r, r)
        } else {
            x0
        };
        (x0, eps)
    }

    fn coefs(&self, t: usize) -> Coefs {
        let prev = match &self.previous {
            Some(p) => self
                .timesteps
                .iter()
                .position(|&x| x == t)
                .map(|i| p[i])
                .unwrap_or(t as i64 - self.step_ratio as i64),
            None => t as i64 - self.step_ratio as i64,
        };
        Coefs {
            alpha_t: self.alpha_bar(t as i64),
            alpha_prev: self.alpha_bar(prev),
        }
    }

    /// One DDIM inversion update at timestep `t` (docs/method.md): the latent is at noise level
    /// `t⁻ = t − ⌊T/N⌋` and moves to `t`:
    /// `x0 = (x − √(1−ᾱ(t⁻))·ε)/√ᾱ(t⁻)`, `x = √ᾱ(t)·x0 + √(1−ᾱ(t))·ε`, with v-predictions
    /// converted at ᾱ(t⁻) as diffusers' `DDIMInverseScheduler` does.
    ///
    /// # Shapes
    /// `model_output`, `sample`: `[B, C, h, w]` → `[B, C, h, w]`.
    pub fn inversion_step(
        &self,
        model_output: Tensor<4>,
        t: usize,
        sample: Tensor<4>,
    ) -> Tensor<4> {
        let c = self.coefs(t);
        let (x0, eps) = self.predict(model_output, sample, c.alpha_prev);
        x0 * c.alpha_t.sqrt() + eps * (1.0 - c.alpha_t).sqrt()
    }

    /// The inversion timesteps in the order they are visited: the sampling timesteps
    /// ascending (1, 21, …, 981 for N = 50).
    pub fn inversion_timesteps(&self) -> Vec<usize> {
        self.timesteps.iter().rev().copied().collect()
    }
}

/// numpy's `round` (half to even), used by the `linspace` spacing.
fn round_half_even(v: f64) -> f64 {
    let r = v.round();
    if (v - v.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - v.signum()
    } else {
        r
    }
}

impl Scheduler for DdimScheduler {
    fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    fn timestep(&self, step_index: usize) -> f64 {
        self.timesteps[step_index] as f64
    }

    fn needs_noise(&self) -> bool {
        self.eta > 0.0
    }

    fn step(
        &mut self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        noise: Option<Tensor<4>>,
    ) -> Result<Tensor<4>> {
        DdimScheduler::step(self, model_output, step_index, sample, noise)
    }
}
