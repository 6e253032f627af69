//! diffusers' `UniPCMultistepScheduler` (bh2, order 2, `predict_x0`, corrector on; tools/
//! reference/samplers.md §4): a predictor–corrector multistep sampler on the DPM-Solver
//! timesteps.

use burn::tensor::Tensor;

use super::Scheduler;
use super::config::{PredictionType, SchedulerConfig};
use super::dpm_solver::multistep_schedule;
use super::sigmas::{Vp, check_order, vp_x0};
use crate::error::Result;

/// UniPC-bh2 of order 2. Keeps the last two data predictions and the last predictor's
/// input between calls, so steps must come in order (from 0 after
/// [`reset`](Scheduler::reset)).
#[derive(Debug, Clone)]
pub struct UniPcScheduler {
    prediction: PredictionType,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    /// `(m_j, vp_j)` of the last two steps, oldest first.
    history: Vec<(Tensor<4>, Vp)>,
    /// The sample the previous predictor started from, and its order.
    last: Option<(Tensor<4>, usize)>,
    next: usize,
}

impl UniPcScheduler {
    /// For `steps` steps (`karras`: `use_karras_sigmas`).
    pub fn new(config: &SchedulerConfig, steps: usize, karras: bool) -> Result<Self> {
        let (timesteps, sigmas) = multistep_schedule(config, steps, karras)?;
        Ok(Self {
            prediction: config.prediction_type,
            timesteps,
            sigmas,
            history: Vec::new(),
            last: None,
            next: 0,
        })
    }
}

/// `[ρ0, ρ1]` solving `[[1, 1], [r, 1]] ρ = [b1, b2]` as LAPACK's partial pivoting does.
fn solve2(r: f32, b1: f32, b2: f32) -> (f32, f32) {
    if r.abs() > 1.0 {
        let l = 1.0 / r;
        let u = 1.0 - l;
        let y = b1 - l * b2;
        let rho1 = y * (1.0 / u);
        ((b2 - rho1) * (1.0 / r), rho1)
    } else {
        let u = 1.0 - r;
        let y = b2 - r * b1;
        let rho1 = y * (1.0 / u);
        (b1 - rho1, rho1)
    }
}

impl Scheduler for UniPcScheduler {
    fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    fn timestep(&self, step_index: usize) -> f64 {
        self.timesteps[step_index]
    }

    fn reset(&mut self) {
        self.history.clear();
        self.last = None;
        self.next = 0;
    }

    fn step(
        &mut self,
        model_output: Tensor<4>,
        step_index: usize,
        sample: Tensor<4>,
        _noise: Option<Tensor<4>>,
    ) -> Result<Tensor<4>> {
        let n = self.timesteps.len();
        check_order("UniPC", self.next, step_index, n)?;
        self.next += 1;
        let now = Vp::of(self.sigmas[step_index]);
        // 1. The data prediction from the incoming (uncorrected) sample.
        let m = vp_x0(self.prediction, model_output, sample.clone(), now);
        // 2. Corrector: refine the sample with the new prediction.
        let corrected = match (self.last.take(), self.history.last()) {
            (Some((x_prev, order)), Some((m_prev, prev))) => {
                let h = now.lambda - prev.lambda;
                let hh = -h;
                let phi = hh.exp_m1();
                let b = phi;
                let base = x_prev * (now.sigma / prev.sigma) - m_prev.clone() * (now.alpha * phi);
                let dm = m.clone() - m_prev.clone();
                if order >= 2 && self.history.len() >= 2 {
                    let (m_prev2, prev2) = &self.history[self.history.len() - 2];
                    let r = (prev2.lambda - prev.lambda) / h;
                    let d1 = (m_prev2.clone() - m_prev.clone()) / r;
                    let b1 = (phi / hh - 1.0) / b;
                    let b2 = ((phi / hh - 1.0) / hh - 0.5) * 2.0 / b;
                    let (rho0, rho1) = solve2(r, b1, b2);
                    base - (d1 * rho0 + dm * rho1) * (now.alpha * b)
                } else {
                    base - (dm * 0.5) * (now.alpha * b)
                }
            }
            _ => sample,
        };
        self.history.push((m.clone(), now));
        if self.history.len() > 2 {
            self.history.remove(0);
        }
        // 3. Predictor to the next noise level.
        let order = 2.min(n - step_index).min(step_index + 1);
        if step_index + 1 == n {
            // σ = 0: s = 0, λ = ∞, expm1(−∞) = −1, so the result is the data prediction.
            self.last = Some((corrected, order));
            return Ok(m);
        }
        let to = Vp::of(self.sigmas[step_index + 1]);
        let h = to.lambda - now.lambda;
        let hh = -h;
        let phi = hh.exp_m1();
        let b = phi;
        let base = corrected.clone() * (to.sigma / now.sigma) - m.clone() * (to.alpha * phi);
        let out = if order >= 2 && self.history.len() >= 2 {
            let (m_prev, prev) = &self.history[0];
            let r = (prev.lambda - now.lambda) / h;
            let d1 = (m_prev.clone() - m) / r;
            base - (d1 * 0.5) * (to.alpha * b)
        } else {
            base
        };
        self.last = Some((corrected, order));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solve2_solves() {
        for (r, b1, b2) in [
            (-0.8f32, 0.3f32, -0.2f32),
            (-2.5, 0.1, 0.4),
            (0.5, 1.0, 2.0),
        ] {
            let (x, y) = solve2(r, b1, b2);
            assert!((x + y - b1).abs() < 1e-6);
            assert!((r * x + y - b2).abs() < 1e-6);
        }
    }
}
