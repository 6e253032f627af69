//! diffusers' `DPMSolverMultistepScheduler` as DPM-Solver++ 2M (`algorithm_type`
//! dpmsolver++, `solver_order` 2, midpoint, `final_sigmas_type` zero; tools/reference/
//! samplers.md §3).

use burn::tensor::Tensor;

use super::Scheduler;
use super::config::{PredictionType, SchedulerConfig};
use super::sigmas::{
    TrainSigmas, Vp, check_order, check_steps, karras, multistep_timesteps, vp_x0,
};
use crate::error::Result;

/// DPM-Solver++ 2M: second-order multistep in the data prediction, first order at the first
/// and the last step. Keeps the previous step's `x0` between calls, so its steps must come
/// in order (from 0 after [`reset`](Scheduler::reset)).
#[derive(Debug, Clone)]
pub struct DpmSolverScheduler {
    prediction: PredictionType,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    previous: Option<(Tensor<4>, Vp)>,
    next: usize,
}

/// The timesteps and sigmas the DPM-Solver family shares (also UniPC's).
pub(crate) fn multistep_schedule(
    config: &SchedulerConfig,
    n: usize,
    use_karras: bool,
) -> Result<(Vec<f64>, Vec<f32>)> {
    check_steps(config, n)?;
    let train = TrainSigmas::new(&config.alphas_cumprod());
    let (timesteps, mut sigmas): (Vec<f64>, Vec<f32>) = if use_karras {
        let last = train.sigmas.len() - 1;
        let s = karras(train.sigmas[0] as f64, train.sigmas[last] as f64, n);
        let t = s
            .iter()
            .map(|&v| train.sigma_to_t(v).round_ties_even())
            .collect();
        (t, s.iter().map(|&v| v as f32).collect())
    } else {
        let t = multistep_timesteps(config, n);
        let s = t.iter().map(|&ts| train.interp(ts) as f32).collect();
        (t, s)
    };
    sigmas.push(0.0);
    Ok((timesteps, sigmas))
}

impl DpmSolverScheduler {
    /// For `steps` steps (`karras`: `use_karras_sigmas`).
    pub fn new(config: &SchedulerConfig, steps: usize, karras: bool) -> Result<Self> {
        let (timesteps, sigmas) = multistep_schedule(config, steps, karras)?;
        Ok(Self {
            prediction: config.prediction_type,
            timesteps,
            sigmas,
            previous: None,
            next: 0,
        })
    }

    /// The `S + 1` noise levels (the last 0).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

impl Scheduler for DpmSolverScheduler {
    fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    fn timestep(&self, step_index: usize) -> f64 {
        self.timesteps[step_index]
    }

    fn reset(&mut self) {
        self.previous = None;
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
        check_order("DPM-Solver++", self.next, step_index, n)?;
        let now = Vp::of(self.sigmas[step_index]);
        let x0 = vp_x0(self.prediction, model_output, sample.clone(), now);
        self.next += 1;
        let last = step_index + 1 == n;
        if last {
            // σ = 0: α = 1, s = 0, λ = ∞, so the update is x0 itself.
            self.previous = Some((x0.clone(), now));
            return Ok(x0);
        }
        let to = Vp::of(self.sigmas[step_index + 1]);
        let h = to.lambda - now.lambda;
        let ratio = to.sigma / now.sigma;
        let c = to.alpha * ((-h).exp() - 1.0);
        let out = match self.previous.take() {
            Some((x0_prev, prev)) if step_index > 0 => {
                let r0 = (now.lambda - prev.lambda) / h;
                let d1 = (x0.clone() - x0_prev) * (1.0 / r0);
                sample * ratio - x0.clone() * c - d1 * (0.5 * c)
            }
            _ => sample * ratio - x0.clone() * c,
        };
        self.previous = Some((x0, now));
        Ok(out)
    }
}
