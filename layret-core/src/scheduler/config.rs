use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::config_file::read_json;
use crate::error::{Error, Result};

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The noise ε (SD 1.x, SD 2.x base).
    Epsilon,
    /// The velocity v (SD 2.x 768-v).
    VPrediction,
    /// The clean sample x₀.
    Sample,
}

/// How inference timesteps are spread over the training steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// `k·⌊T/N⌋ + steps_offset`, descending (SD's default).
    Leading,
    /// `round(T − k·T/N) − 1`.
    Trailing,
    /// `round(linspace(0, T−1, N))`, descending.
    Linspace,
}

/// The β schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// `linspace(β₀, β₁, T)`.
    Linear,
    /// `linspace(√β₀, √β₁, T)²` (SD).
    ScaledLinear,
    /// The cosine schedule of Nichol & Dhariwal (`squaredcos_cap_v2`).
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// `scheduler/scheduler_config.json`: the fields DDIM-family samplers read.
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    /// Training steps `T` (1000).
    #[serde(default = "thousand")]
    pub num_train_timesteps: usize,
    /// β at t = 0.
    #[serde(default = "beta_start")]
    pub beta_start: f64,
    /// β at t = T − 1.
    #[serde(default = "beta_end")]
    pub beta_end: f64,
    /// The β schedule.
    #[serde(default = "linear_schedule")]
    pub beta_schedule: BetaSchedule,
    /// Added to leading timesteps (1 for SD).
    #[serde(default)]
    pub steps_offset: usize,
    /// ᾱ for t < 0 is 1 (else ᾱ₀).
    #[serde(default = "yes")]
    pub set_alpha_to_one: bool,
    /// What the model predicts.
    #[serde(default = "epsilon")]
    pub prediction_type: PredictionType,
    /// Timestep spacing.
    #[serde(default = "leading")]
    pub timestep_spacing: TimestepSpacing,
    /// Clamp predicted x₀ to ±`clip_sample_range`.
    #[serde(default)]
    pub clip_sample: bool,
    /// The clamp range.
    #[serde(default = "one")]
    pub clip_sample_range: f64,
    /// Rescale betas to zero terminal SNR.
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    /// Dynamic thresholding (unsupported: must be false).
    #[serde(default)]
    pub thresholding: bool,
    /// Explicit betas (unsupported: must be null).
    #[serde(default)]
    pub trained_betas: Option<Value>,
    /// The diffusers class the file was written for (`_class_name`, e.g. `PNDMScheduler`):
    /// what [`SamplerKind::Auto`](super::SamplerKind) picks.
    #[serde(default, rename = "_class_name")]
    pub class_name: Option<String>,
    /// PNDM: skip the Runge–Kutta warm-up (SD checkpoints: true; the class default false).
    #[serde(default)]
    pub skip_prk_steps: bool,
    /// DPM-Solver/Euler/UniPC: Karras sigmas.
    #[serde(default)]
    pub use_karras_sigmas: bool,
}

fn thousand() -> usize {
    1000
}
fn beta_start() -> f64 {
    0.0001
}
fn beta_end() -> f64 {
    0.02
}
fn linear_schedule() -> BetaSchedule {
    BetaSchedule::Linear
}
fn yes() -> bool {
    true
}
fn epsilon() -> PredictionType {
    PredictionType::Epsilon
}
fn leading() -> TimestepSpacing {
    TimestepSpacing::Leading
}
fn one() -> f64 {
    1.0
}

impl SchedulerConfig {
    /// SD 1.x's DDIM settings (scaled-linear β from 0.00085 to 0.012, leading, offset 1).
    pub fn sd() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            steps_offset: 1,
            set_alpha_to_one: false,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Leading,
            clip_sample: false,
            clip_sample_range: 1.0,
            rescale_betas_zero_snr: false,
            thresholding: false,
            trained_betas: None,
            class_name: None,
            skip_prk_steps: true,
            use_karras_sigmas: false,
        }
    }

    /// Read and validate `scheduler_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: Self = read_json(path, "scheduler config")?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Check the settings; `path` is named in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let unsupported = |key: &str, value: String, supported: &str| Error::UnsupportedConfig {
            file: path.to_path_buf(),
            key: key.into(),
            value,
            supported: supported.into(),
        };
        if self.thresholding {
            return Err(unsupported(
                "thresholding",
                "true".into(),
                "supported: false",
            ));
        }
        if matches!(&self.trained_betas, Some(v) if !v.is_null()) {
            return Err(unsupported(
                "trained_betas",
                "a list".into(),
                "supported: null",
            ));
        }
        if self.num_train_timesteps < 2 {
            return Err(unsupported(
                "num_train_timesteps",
                self.num_train_timesteps.to_string(),
                "must be at least 2",
            ));
        }
        let ok = |b: f64| b.is_finite() && b > 0.0 && b < 1.0;
        if !ok(self.beta_start) || !ok(self.beta_end) {
            return Err(unsupported(
                "beta_start/beta_end",
                format!("{}/{}", self.beta_start, self.beta_end),
                "both must be in (0, 1)",
            ));
        }
        Ok(())
    }

    /// A stable fingerprint of every setting that changes a schedule (for cache keys): the
    /// ᾱ table itself and the fields that pick timesteps and interpret the model output.
    pub fn fingerprint(&self) -> u64 {
        let mut h = crate::fingerprint::Fingerprinter::new();
        h.update_str("scheduler-v1");
        for a in self.alphas_cumprod() {
            h.update(&a.to_bits().to_le_bytes());
        }
        h.update_u64(self.steps_offset as u64);
        h.update_u64(self.set_alpha_to_one as u64);
        h.update_str(match self.prediction_type {
            PredictionType::Epsilon => "epsilon",
            PredictionType::VPrediction => "v_prediction",
            PredictionType::Sample => "sample",
        });
        h.update_str(match self.timestep_spacing {
            TimestepSpacing::Leading => "leading",
            TimestepSpacing::Trailing => "trailing",
            TimestepSpacing::Linspace => "linspace",
        });
        h.update_u64(self.clip_sample as u64);
        h.update_u64(self.clip_sample_range.to_bits());
        h.finish()
    }

    /// ᾱ_t for t = 0..T, in f32 exactly as diffusers computes it.
    pub fn alphas_cumprod(&self) -> Vec<f32> {
        let t = self.num_train_timesteps;
        let linspace = |a: f32, b: f32| -> Vec<f32> {
            // torch.linspace in f32: the first half from the start, the second from the end.
            let step = (b - a) / (t as f32 - 1.0);
            (0..t)
                .map(|i| {
                    if i < t / 2 {
                        a + step * i as f32
                    } else {
                        b - step * (t - 1 - i) as f32
                    }
                })
                .collect()
        };
        let mut betas: Vec<f32> = match self.beta_schedule {
            BetaSchedule::Linear => linspace(self.beta_start as f32, self.beta_end as f32),
            BetaSchedule::ScaledLinear => linspace(
                (self.beta_start as f32).sqrt(),
                (self.beta_end as f32).sqrt(),
            )
            .into_iter()
            .map(|b| b * b)
            .collect(),
            BetaSchedule::SquaredcosCapV2 => {
                let alpha_bar = |x: f64| {
                    ((x + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                        .cos()
                        .powi(2)
                };
                (0..t)
                    .map(|i| {
                        let t1 = i as f64 / t as f64;
                        let t2 = (i + 1) as f64 / t as f64;
                        (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                    })
                    .collect()
            }
        };
        if self.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let mut acc = 1.0f32;
        betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect()
    }
}

/// diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023), in f32.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f32;
    let mut sqrt_bar: Vec<f32> = betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            acc.sqrt()
        })
        .collect();
    let (first, last) = (sqrt_bar[0], sqrt_bar[sqrt_bar.len() - 1]);
    for v in &mut sqrt_bar {
        *v = (*v - last) * first / (first - last);
    }
    let bar: Vec<f32> = sqrt_bar.iter().map(|v| v * v).collect();
    let mut alphas = vec![bar[0]];
    alphas.extend(bar.windows(2).map(|w| w[1] / w[0]));
    alphas.iter().map(|a| 1.0 - a).collect()
}
