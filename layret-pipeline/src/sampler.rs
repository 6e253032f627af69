//! The sampler of the context and target branches: docs/method.md's DDIM, or (experimental,
//! [`MethodSettings::sampler`]) another one with the reference inverted onto its timesteps.

use layret_core::scheduler::{DdimScheduler, SamplerKind, SamplerOptions, Scheduler};
use layret_core::{Error, Result};

use crate::models::ModelPair;
use crate::settings::MethodSettings;

/// The branches' sampler and the DDIM on the same timesteps (the reference's inversion and
/// the timesteps every branch sees at step k).
pub(crate) struct BranchSampler {
    /// Steps the context and target branches.
    pub sampler: Box<dyn Scheduler + Send>,
    /// DDIM on the sampler's timesteps.
    pub ddim: DdimScheduler,
}

impl BranchSampler {
    /// The timestep of step `k`.
    pub fn timestep(&self, k: usize) -> Option<usize> {
        self.ddim.timesteps().get(k).copied()
    }
}

/// The sampler `s` asks for, on the base model's scheduler config. With the default
/// ([`MethodSettings::uses_ddim`]) this is plain DDIM, exactly as docs/method.md.
pub(crate) fn branch_sampler(models: &ModelPair, s: &MethodSettings) -> Result<BranchSampler> {
    let base = models.base();
    let config = base.scheduler_config();
    let kind = s.sampler.resolve(config);
    if s.uses_ddim() || (kind == SamplerKind::Ddim && !s.karras) {
        return Ok(BranchSampler {
            sampler: Box::new(base.ddim(s.steps, 0.0)?),
            ddim: base.ddim(s.steps, 0.0)?,
        });
    }
    if matches!(kind, SamplerKind::Pndm | SamplerKind::EulerAncestral) {
        return Err(Error::invalid(
            "sampler",
            format!(
                "{kind}; Layout-and-Retouch's branches take ddim, dpmpp-2m, unipc or euler ({})",
                if kind == SamplerKind::Pndm {
                    "PNDM's timesteps repeat, so the reference cannot be inverted onto them"
                } else {
                    "an ancestral sampler would need the same fresh noise in the context and target branches"
                }
            ),
        ));
    }
    let sampler = kind.build(
        config,
        s.steps,
        SamplerOptions {
            karras: s.karras,
            eta: 0.0,
        },
    )?;
    let ts: Vec<f64> = (0..sampler.num_steps())
        .map(|k| sampler.timestep(k))
        .collect();
    let integer = ts.iter().all(|t| t.fract() == 0.0 && *t >= 0.0);
    if sampler.num_steps() != s.steps || !integer {
        return Err(Error::invalid(
            "sampler",
            format!(
                "{kind}{} at {} steps has timesteps {ts:?}; the reference inversion needs N whole, strictly decreasing ones (Euler with Karras sigmas or linspace spacing has fractional ones)",
                if s.karras { " with Karras sigmas" } else { "" },
                s.steps
            ),
        ));
    }
    let ddim =
        DdimScheduler::on_timesteps(config.clone(), ts.iter().map(|&t| t as usize).collect())
            .map_err(|e| Error::invalid("sampler", format!("{kind}: {e}")))?;
    Ok(BranchSampler { sampler, ddim })
}
