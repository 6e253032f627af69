//! Every knob of docs/method.md, with its default.

use layret_attention::{KvPolicy, SwapMode};
use layret_core::scheduler::SamplerKind;
use layret_core::{Error, Result};

/// Adaptive latent blending (docs/method.md "Adaptive mask blending").
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Blend {
    /// Otsu threshold per image (default).
    Otsu,
    /// No blending.
    Off,
    /// A fixed threshold `τ_b` on the normalized target map (subject = value ≥ τ_b).
    Fixed(f64),
}

impl std::str::FromStr for Blend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "otsu" => Ok(Blend::Otsu),
            "off" => Ok(Blend::Off),
            v => v
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(Blend::Fixed)
                .ok_or_else(|| {
                    Error::invalid("blend", format!("{v:?}; expected otsu, off or a number"))
                }),
        }
    }
}

impl std::fmt::Display for Blend {
    /// `otsu`, `off` or the threshold: what [`FromStr`](std::str::FromStr) reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Blend::Otsu => f.write_str("otsu"),
            Blend::Off => f.write_str("off"),
            Blend::Fixed(t) => write!(f, "{t}"),
        }
    }
}

/// The method's settings; [`Default`] gives docs/method.md's defaults. Build it from
/// [`Default`] with the `with_*` methods (or set fields on a default):
///
/// ```
/// use layret_pipeline::{Blend, MethodSettings};
/// let s = MethodSettings::default().with_steps(30).with_blend(Blend::Fixed(0.4));
/// assert_eq!((s.steps, s.swap_start), (30, 4));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MethodSettings {
    /// DDIM steps `N` (50).
    pub steps: usize,
    /// Guidance `w` (7.5).
    pub guidance: f64,
    /// The unconditional prompt (""); docs/method.md's negative-prompt knob.
    pub negative_prompt: String,
    /// `λ1 = round(layout_fraction · N)` vanilla steps (0.2).
    pub layout_fraction: f64,
    /// Structure-lock length `S` (4).
    pub swap_start: usize,
    /// Mask binarization threshold `τ` (0.1).
    pub mask_threshold: f64,
    /// Mask level = latent / factor (4).
    pub mask_factor: usize,
    /// Swapped layers: decoder self-attention at ≥ latent / this (2).
    pub swap_divisor: usize,
    /// Latent blending (Otsu).
    pub blend: Blend,
    /// First step blended; `None` = `round(0.2 · N)`.
    pub blend_start: Option<usize>,
    /// Split (default) or concat.
    pub mode: SwapMode,
    /// The reference prompt is this + `P` ("a photo of ").
    pub reference_prefix: String,
    /// How the context branch reaches stage 2: its keys/values kept from stage 1 in f32
    /// (default; exact) or f16 (also the reference's storage), or recomputed.
    pub kv_policy: KvPolicy,
    /// Experimental: the sampler of the context and target branches. The default,
    /// [`SamplerKind::Ddim`], is docs/method.md's; another one (DPM++ 2M, UniPC, Euler, Euler
    /// ancestral) steps both branches with its own update on its own timesteps, and the
    /// reference is DDIM-inverted onto those timesteps (docs/samplers.md says what that
    /// changes). PNDM, whose timesteps repeat, is refused.
    pub sampler: SamplerKind,
    /// Karras sigmas for [`sampler`](Self::sampler).
    pub karras: bool,
}

impl Default for MethodSettings {
    fn default() -> Self {
        Self {
            steps: 50,
            guidance: 7.5,
            negative_prompt: String::new(),
            layout_fraction: 0.2,
            swap_start: 4,
            mask_threshold: 0.1,
            mask_factor: 4,
            swap_divisor: 2,
            blend: Blend::Otsu,
            blend_start: None,
            mode: SwapMode::Split,
            reference_prefix: "a photo of ".into(),
            kv_policy: KvPolicy::KeepF32,
            sampler: SamplerKind::Ddim,
            karras: false,
        }
    }
}

/// docs/method.md's "round": half away from zero.
pub fn round_half_away(x: f64) -> usize {
    x.round().max(0.0) as usize
}

impl MethodSettings {
    /// With the experimental branch sampler `sampler` (and Karras sigmas if `karras`).
    pub fn with_sampler(mut self, sampler: SamplerKind, karras: bool) -> Self {
        self.sampler = sampler;
        self.karras = karras;
        self
    }

    /// Whether the branches use docs/method.md's DDIM (the default).
    pub fn uses_ddim(&self) -> bool {
        self.sampler == SamplerKind::Ddim && !self.karras
    }

    /// With `N` steps.
    pub fn with_steps(mut self, steps: usize) -> Self {
        self.steps = steps;
        self
    }

    /// With guidance `w`.
    pub fn with_guidance(mut self, guidance: f64) -> Self {
        self.guidance = guidance;
        self
    }

    /// With the negative prompt (the unconditional half).
    pub fn with_negative_prompt(mut self, negative: impl Into<String>) -> Self {
        self.negative_prompt = negative.into();
        self
    }

    /// With `λ1 = round(fraction · N)`.
    pub fn with_layout_fraction(mut self, fraction: f64) -> Self {
        self.layout_fraction = fraction;
        self
    }

    /// With structure lock `S`.
    pub fn with_swap_start(mut self, swap_start: usize) -> Self {
        self.swap_start = swap_start;
        self
    }

    /// With mask threshold `τ`.
    pub fn with_mask_threshold(mut self, tau: f64) -> Self {
        self.mask_threshold = tau;
        self
    }

    /// With mask level latent / `factor`.
    pub fn with_mask_factor(mut self, factor: usize) -> Self {
        self.mask_factor = factor;
        self
    }

    /// With swapped layers at ≥ latent / `divisor`.
    pub fn with_swap_divisor(mut self, divisor: usize) -> Self {
        self.swap_divisor = divisor;
        self
    }

    /// With latent blending `blend`.
    pub fn with_blend(mut self, blend: Blend) -> Self {
        self.blend = blend;
        self
    }

    /// With blending from step `start` (`None`: round(0.2·N)).
    pub fn with_blend_start(mut self, start: Option<usize>) -> Self {
        self.blend_start = start;
        self
    }

    /// With swap mode `mode`.
    pub fn with_mode(mut self, mode: SwapMode) -> Self {
        self.mode = mode;
        self
    }

    /// With the reference prompt prefix.
    pub fn with_reference_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.reference_prefix = prefix.into();
        self
    }

    /// With the key/value policy.
    pub fn with_kv_policy(mut self, policy: KvPolicy) -> Self {
        self.kv_policy = policy;
        self
    }

    /// `λ1`: the number of vanilla steps.
    pub fn lambda1(&self) -> usize {
        round_half_away(self.layout_fraction * self.steps as f64).min(self.steps)
    }

    /// The first blended step.
    pub fn blend_start(&self) -> usize {
        self.blend_start
            .unwrap_or_else(|| round_half_away(0.2 * self.steps as f64))
    }

    /// Whether the context branch is replayed (its keys/values kept) rather than recomputed.
    pub fn replays(&self) -> bool {
        self.kv_policy != KvPolicy::Recompute
    }

    /// The mask level `(H/f, W/f)` of an `h × w` latent (f = the mask factor), or an error if
    /// f does not divide both.
    pub fn mask_level(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let f = self.mask_factor;
        if f == 0 || !h.is_multiple_of(f) || !w.is_multiple_of(f) {
            return Err(Error::invalid(
                "mask_factor",
                format!("the latent {h}×{w} is not divisible by the mask factor {f}"),
            ));
        }
        Ok((h / f, w / f))
    }

    /// Check every knob.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::invalid("steps", "0; must be at least 1"));
        }
        if !self.guidance.is_finite() {
            return Err(Error::invalid(
                "guidance",
                format!("{}; must be finite", self.guidance),
            ));
        }
        if !(0.0..=1.0).contains(&self.layout_fraction) {
            return Err(Error::invalid(
                "layout_fraction",
                format!("{}; must be in [0, 1]", self.layout_fraction),
            ));
        }
        if !(self.mask_threshold.is_finite()) {
            return Err(Error::invalid(
                "mask_threshold",
                format!("{}; must be finite", self.mask_threshold),
            ));
        }
        if self.mask_factor == 0 || self.swap_divisor == 0 {
            return Err(Error::invalid(
                "mask_factor/swap_divisor",
                "must be positive",
            ));
        }
        if self.sampler == SamplerKind::Pndm {
            return Err(Error::invalid(
                "sampler",
                "pndm; its timesteps repeat (N + 1 evaluations for N steps), so the reference cannot be inverted onto them: use ddim, dpmpp-2m, unipc, euler or euler-a",
            ));
        }
        Ok(())
    }
}

impl MethodSettings {
    /// Every setting, one `key value` line each, floats as their bit patterns: stable across
    /// releases (a versioned line format, not `Debug` output), so it can go into cache and
    /// resume keys. Two settings give the same text exactly when they make the same images.
    pub fn key_text(&self) -> String {
        format!(
            "steps {}\nguidance {:016x}\nnegative {:?}\nlayout_fraction {:016x}\nswap_start {}\nmask_threshold {:016x}\nmask_factor {}\nswap_divisor {}\nblend {}\nblend_start {}\nmode {}\nreference_prefix {:?}\nkv {}\nreplay {}\n",
            self.steps,
            self.guidance.to_bits(),
            self.negative_prompt,
            self.layout_fraction.to_bits(),
            self.swap_start,
            self.mask_threshold.to_bits(),
            self.mask_factor,
            self.swap_divisor,
            match self.blend {
                Blend::Fixed(t) => format!("{:016x}", t.to_bits()),
                b => b.to_string(),
            },
            self.blend_start(),
            self.mode,
            self.reference_prefix,
            self.kv_policy.name(),
            self.kv_policy != KvPolicy::Recompute
        ) + &if self.uses_ddim() {
            String::new()
        } else {
            format!("sampler {}\nkarras {}\n", self.sampler, self.karras)
        }
    }

    /// The Layout-and-Retouch knobs in one line (`layout_fraction=0.2 swap_start=4 …`), for
    /// image metadata.
    pub fn summary(&self) -> String {
        format!(
            "layout-and-retouch layout_fraction={} swap_start={} mask_threshold={} mask_factor={} blend={} mode={}",
            self.layout_fraction,
            self.swap_start,
            self.mask_threshold,
            self.mask_factor,
            self.blend,
            self.mode
        ) + &if self.uses_ddim() {
            String::new()
        } else {
            format!(
                " sampler={}{}",
                self.sampler,
                if self.karras { " karras" } else { "" }
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blend_reads_back_what_it_writes() {
        for b in [
            Blend::Otsu,
            Blend::Off,
            Blend::Fixed(0.4),
            Blend::Fixed(-1e-3),
        ] {
            assert_eq!(b.to_string().parse::<Blend>().unwrap(), b);
        }
        assert!("nan".parse::<Blend>().is_err());
        assert!("sometimes".parse::<Blend>().is_err());
    }

    #[test]
    fn key_text_changes_with_every_setting() {
        let base = MethodSettings::default();
        let changed = [
            base.clone().with_steps(49),
            base.clone().with_guidance(7.0),
            base.clone().with_negative_prompt("blurry"),
            base.clone().with_layout_fraction(0.3),
            base.clone().with_swap_start(3),
            base.clone().with_mask_threshold(0.2),
            base.clone().with_mask_factor(2),
            base.clone().with_blend(Blend::Off),
            base.clone().with_blend_start(Some(3)),
            base.clone().with_mode(SwapMode::Concat),
            base.clone().with_kv_policy(KvPolicy::KeepF16),
            base.clone().with_swap_divisor(4),
            base.clone().with_reference_prefix("a picture of "),
            base.clone().with_sampler(SamplerKind::Euler, false),
            base.clone().with_sampler(SamplerKind::DpmPp2m, true),
        ];
        let mut texts: Vec<String> = changed.iter().map(|s| s.key_text()).collect();
        texts.push(base.key_text());
        let n = texts.len();
        texts.sort();
        texts.dedup();
        assert_eq!(texts.len(), n, "two settings share a key text");
        // Stable: the same settings give the same text.
        assert_eq!(base.key_text(), MethodSettings::default().key_text());
        assert!(base.summary().contains("blend=otsu mode=split"));
    }
}
