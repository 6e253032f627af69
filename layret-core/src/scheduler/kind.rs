//! Choosing a sampler by name, as the command line and metadata spell it.

use super::{
    DdimScheduler, DpmSolverScheduler, EulerScheduler, PndmScheduler, Scheduler, SchedulerConfig,
    UniPcScheduler,
};
use crate::error::{Error, Result};

/// The samplers layret has, by the names users know them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    /// The one the model's `scheduler_config.json` names (`_class_name`); DDIM when it names
    /// none or one layret does not have.
    Auto,
    /// `DDIMScheduler` (the default; the only one Layout-and-Retouch's inversion uses).
    Ddim,
    /// `DPMSolverMultistepScheduler`, DPM-Solver++ 2M (A1111's "DPM++ 2M").
    DpmPp2m,
    /// `EulerDiscreteScheduler`.
    Euler,
    /// `EulerAncestralDiscreteScheduler` (A1111's "Euler a"; stochastic).
    EulerAncestral,
    /// `UniPCMultistepScheduler` (bh2, order 2).
    UniPc,
    /// `PNDMScheduler` (SD 1.x's own config).
    Pndm,
}

/// Options beside the sampler and the step count.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SamplerOptions {
    /// Karras sigmas (DPM++ 2M, Euler, UniPC); or'ed with the config's `use_karras_sigmas`.
    pub karras: bool,
    /// DDIM η (0 = deterministic).
    pub eta: f64,
}

impl SamplerKind {
    /// Every concrete sampler, in `--help` order.
    pub const ALL: [SamplerKind; 6] = [
        SamplerKind::Ddim,
        SamplerKind::DpmPp2m,
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::UniPc,
        SamplerKind::Pndm,
    ];

    /// The command-line name (`ddim`, `dpmpp-2m`, `euler`, `euler-a`, `unipc`, `pndm`, `auto`).
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Auto => "auto",
            SamplerKind::Ddim => "ddim",
            SamplerKind::DpmPp2m => "dpmpp-2m",
            SamplerKind::Euler => "euler",
            SamplerKind::EulerAncestral => "euler-a",
            SamplerKind::UniPc => "unipc",
            SamplerKind::Pndm => "pndm",
        }
    }

    /// The diffusers class of a `_class_name`, if layret has it.
    pub fn from_class_name(class: &str) -> Option<Self> {
        Some(match class {
            "DDIMScheduler" => SamplerKind::Ddim,
            "DPMSolverMultistepScheduler" => SamplerKind::DpmPp2m,
            "EulerDiscreteScheduler" => SamplerKind::Euler,
            "EulerAncestralDiscreteScheduler" => SamplerKind::EulerAncestral,
            "UniPCMultistepScheduler" => SamplerKind::UniPc,
            "PNDMScheduler" => SamplerKind::Pndm,
            _ => return None,
        })
    }

    /// [`Auto`](Self::Auto) resolved against `config`; others unchanged.
    pub fn resolve(self, config: &SchedulerConfig) -> Self {
        match self {
            SamplerKind::Auto => config
                .class_name
                .as_deref()
                .and_then(Self::from_class_name)
                .unwrap_or(SamplerKind::Ddim),
            k => k,
        }
    }

    /// The name AUTOMATIC1111 shows (the `Sampler:` field of the PNG `parameters`).
    pub fn display_name(self, karras: bool) -> String {
        let base = match self {
            SamplerKind::Auto | SamplerKind::Ddim => "DDIM",
            SamplerKind::DpmPp2m => "DPM++ 2M",
            SamplerKind::Euler => "Euler",
            SamplerKind::EulerAncestral => "Euler a",
            SamplerKind::UniPc => "UniPC",
            SamplerKind::Pndm => "PLMS",
        };
        if karras {
            format!("{base} Karras")
        } else {
            base.to_string()
        }
    }

    /// Whether this sampler has a Karras-sigmas variant.
    pub fn supports_karras(self) -> bool {
        matches!(
            self,
            SamplerKind::DpmPp2m | SamplerKind::Euler | SamplerKind::UniPc
        )
    }

    /// Build the sampler for `steps` steps of `config` (`Auto` resolved first).
    pub fn build(
        self,
        config: &SchedulerConfig,
        steps: usize,
        options: SamplerOptions,
    ) -> Result<Box<dyn Scheduler + Send>> {
        let kind = self.resolve(config);
        let karras = options.karras || (config.use_karras_sigmas && kind.supports_karras());
        if options.karras && !kind.supports_karras() {
            return Err(Error::invalid(
                "karras",
                format!(
                    "{} has no Karras sigmas; they exist for dpmpp-2m, euler and unipc",
                    kind.name()
                ),
            ));
        }
        if options.eta != 0.0 && kind != SamplerKind::Ddim {
            return Err(Error::invalid(
                "eta",
                format!(
                    "{}; only DDIM takes eta (sampler {})",
                    options.eta,
                    kind.name()
                ),
            ));
        }
        Ok(match kind {
            SamplerKind::Auto | SamplerKind::Ddim => {
                Box::new(DdimScheduler::new(config.clone(), steps, options.eta)?)
            }
            SamplerKind::DpmPp2m => Box::new(DpmSolverScheduler::new(config, steps, karras)?),
            SamplerKind::Euler => Box::new(EulerScheduler::new(config, steps, karras)?),
            SamplerKind::EulerAncestral => Box::new(EulerScheduler::ancestral(config, steps)?),
            SamplerKind::UniPc => Box::new(UniPcScheduler::new(config, steps, karras)?),
            SamplerKind::Pndm => {
                Box::new(PndmScheduler::new(config, steps, config.skip_prk_steps)?)
            }
        })
    }
}

impl std::fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "auto" {
            return Ok(SamplerKind::Auto);
        }
        SamplerKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "scheduler",
                    format!(
                        "{s:?}; expected auto, {}",
                        SamplerKind::ALL.map(|k| k.name()).join(", ")
                    ),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_auto_reads_the_class() {
        for k in SamplerKind::ALL {
            assert_eq!(k.name().parse::<SamplerKind>().unwrap(), k);
        }
        assert!("dpm++".parse::<SamplerKind>().is_err());
        let mut cfg = SchedulerConfig::sd();
        assert_eq!(SamplerKind::Auto.resolve(&cfg), SamplerKind::Ddim);
        cfg.class_name = Some("PNDMScheduler".into());
        assert_eq!(SamplerKind::Auto.resolve(&cfg), SamplerKind::Pndm);
        cfg.class_name = Some("LMSDiscreteScheduler".into());
        assert_eq!(SamplerKind::Auto.resolve(&cfg), SamplerKind::Ddim);
        assert!(
            SamplerKind::Pndm
                .build(
                    &cfg,
                    10,
                    SamplerOptions {
                        karras: true,
                        eta: 0.0
                    }
                )
                .is_err()
        );
        assert_eq!(
            SamplerKind::Pndm
                .build(&cfg, 10, SamplerOptions::default())
                .unwrap()
                .num_steps(),
            11
        );
    }
}
