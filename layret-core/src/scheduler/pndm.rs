//! diffusers' `PNDMScheduler` (pseudo linear multistep; tools/reference/samplers.md §5): SD
//! 1.x's own `scheduler_config.json` names it, with `skip_prk_steps` true.

use burn::tensor::Tensor;

use super::Scheduler;
use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::sigmas::{check_order, check_steps, linspace, trailing_arange};
use crate::error::{Error, Result};

/// PNDM: PLMS (Adams–Bashforth on ε, orders 1 → 4) after a Heun-like first step, or after
/// three Runge–Kutta steps when `skip_prk_steps` is false. Makes `N + 1` (`N + 9` with PRK)
/// model evaluations for `N` steps. Keeps ε history between calls, so steps must come in
/// order (from 0 after [`reset`](Scheduler::reset)).
#[derive(Debug, Clone)]
pub struct PndmScheduler {
    prediction: PredictionType,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    ratio: i64,
    /// Evaluations of the Runge–Kutta phase (0 or 12).
    prk_steps: usize,
    timesteps: Vec<i64>,
    ets: Vec<Tensor<4>>,
    /// The running Runge–Kutta sum, or the first PLMS step's ε.
    acc: Option<Tensor<4>>,
    /// The sample the current RK block (or the first PLMS interval) started from.
    start: Option<Tensor<4>>,
    next: usize,
}

impl PndmScheduler {
    /// For `steps` steps; `skip_prk_steps` as the config's field (SD checkpoints: true; the
    /// class default is false).
    pub fn new(config: &SchedulerConfig, steps: usize, skip_prk_steps: bool) -> Result<Self> {
        check_steps(config, steps)?;
        let n = steps;
        if !skip_prk_steps && n < 4 {
            return Err(Error::invalid(
                "steps",
                format!("{n}; PNDM with Runge–Kutta steps needs at least 4"),
            ));
        }
        if config.prediction_type == PredictionType::Sample {
            return Err(Error::invalid(
                "prediction_type",
                "sample; PNDM supports epsilon and v_prediction",
            ));
        }
        let t = config.num_train_timesteps;
        let ratio = (t / n) as i64;
        // The base grid, ascending.
        let base: Vec<i64> = match config.timestep_spacing {
            TimestepSpacing::Leading => (0..n as i64)
                .map(|j| j * ratio + config.steps_offset as i64)
                .collect(),
            TimestepSpacing::Linspace => linspace(0.0, (t - 1) as f64, n)
                .into_iter()
                .map(|v| v.round_ties_even() as i64)
                .collect(),
            TimestepSpacing::Trailing => {
                let mut v: Vec<i64> = trailing_arange(t, n)
                    .into_iter()
                    .map(|x| x.round_ties_even() as i64 - 1)
                    .collect();
                v.reverse();
                v
            }
        };
        let b = |j: usize| base[j];
        let timesteps: Vec<i64> = if skip_prk_steps {
            let mut ts = vec![b(n - 1)];
            if n >= 2 {
                ts.push(b(n - 2));
            }
            ts.extend((0..n - 1).rev().map(b));
            ts
        } else {
            let r2 = ratio / 2;
            let mut ts = vec![b(n - 1)];
            for j in [n - 2, n - 3, n - 4] {
                ts.extend([b(j) + r2, b(j) + r2, b(j), b(j)]);
            }
            ts.truncate(12);
            ts.extend((0..=n - 4).rev().map(b));
            ts
        };
        let alphas_cumprod = config.alphas_cumprod();
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(Self {
            prediction: config.prediction_type,
            alphas_cumprod,
            final_alpha_cumprod,
            ratio,
            prk_steps: if skip_prk_steps { 0 } else { 12 },
            timesteps,
            ets: Vec::new(),
            acc: None,
            start: None,
            next: 0,
        })
    }

    fn alpha(&self, t: i64) -> f32 {
        if t >= 0 {
            self.alphas_cumprod[(t as usize).min(self.alphas_cumprod.len() - 1)]
        } else {
            self.final_alpha_cumprod
        }
    }

    /// diffusers' `_get_prev_sample`: from `x` at `t` to `tp` with noise estimate `eps`.
    fn prev_sample(&self, x: Tensor<4>, t: i64, tp: i64, eps: Tensor<4>) -> Tensor<4> {
        let (a_t, a_p) = (self.alpha(t), self.alpha(tp));
        let (b_t, b_p) = (1.0 - a_t, 1.0 - a_p);
        let eps = match self.prediction {
            PredictionType::VPrediction => eps * a_t.sqrt() + x.clone() * b_t.sqrt(),
            _ => eps,
        };
        let coeff = (a_p / a_t).sqrt();
        let denom = a_t * b_p.sqrt() + ((a_t * b_t) * a_p).sqrt();
        x * coeff - (eps * (a_p - a_t)) / denom
    }

    fn prk_step(&mut self, e: Tensor<4>, c: usize, x: Tensor<4>) -> Tensor<4> {
        let r2 = self.ratio / 2;
        let t = self.timesteps[c];
        let tp = t - if c % 2 == 1 { 0 } else { r2 };
        let t0 = self.timesteps[4 * (c / 4)];
        let eps = match c % 4 {
            0 => {
                self.acc = Some(e.clone() * (1.0f32 / 6.0));
                self.ets.push(e.clone());
                self.start = Some(x);
                e
            }
            1 | 2 => {
                let acc = self.acc.take().map(|a| a + e.clone() * (1.0f32 / 3.0));
                self.acc = acc;
                e
            }
            _ => {
                let acc = self.acc.take();
                match acc {
                    Some(a) => a + e * (1.0f32 / 6.0),
                    None => e,
                }
            }
        };
        let start = self.start.clone().unwrap_or_else(|| eps.clone());
        self.prev_sample(start, t0, tp, eps)
    }

    fn plms_step(&mut self, e: Tensor<4>, c: usize, x: Tensor<4>) -> Tensor<4> {
        let first = self.prk_steps == 0 && c == 0;
        let second = self.prk_steps == 0 && c == 1;
        let (mut t, mut tp) = (self.timesteps[c], self.timesteps[c] - self.ratio);
        if second {
            (t, tp) = (t + self.ratio, t);
        } else {
            self.ets.push(e.clone());
            if self.ets.len() > 4 {
                self.ets.remove(0);
            }
        }
        let mut x = x;
        let k = self.ets.len();
        let eps = if first {
            self.acc = Some(e.clone());
            self.start = Some(x.clone());
            e
        } else if second {
            let e0 = self.acc.take().unwrap_or_else(|| e.clone());
            if let Some(s) = self.start.take() {
                x = s;
            }
            (e + e0) / 2.0
        } else if k == 1 {
            self.ets[0].clone()
        } else if k == 2 {
            (self.ets[1].clone() * 3.0 - self.ets[0].clone()) / 2.0
        } else if k == 3 {
            ((self.ets[2].clone() * 23.0 - self.ets[1].clone() * 16.0) + self.ets[0].clone() * 5.0)
                / 12.0
        } else {
            (((self.ets[3].clone() * 55.0 - self.ets[2].clone() * 59.0)
                + self.ets[1].clone() * 37.0)
                - self.ets[0].clone() * 9.0)
                * (1.0f32 / 24.0)
        };
        self.prev_sample(x, t, tp, eps)
    }
}

impl Scheduler for PndmScheduler {
    fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    fn timestep(&self, step_index: usize) -> f64 {
        self.timesteps[step_index] as f64
    }

    fn reset(&mut self) {
        self.ets.clear();
        self.acc = None;
        self.start = None;
        self.next = 0;
    }

    fn step(
        &mut self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        _noise: Option<Tensor<4>>,
    ) -> Result<Tensor<4>> {
        check_order("PNDM", self.next, step_index, self.timesteps.len())?;
        self.next += 1;
        Ok(if step_index < self.prk_steps {
            self.prk_step(model_output, step_index, sample)
        } else {
            self.plms_step(model_output, step_index, sample)
        })
    }
}
