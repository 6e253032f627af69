//! Every knob of METHOD.md, with its default.

use layret_attention::{KvPolicy, SwapMode};
use layret_core::{Error, Result};

/// Adaptive latent blending (METHOD.md "Adaptive mask blending").
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

/// The method's settings; [`Default`] gives METHOD.md's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodSettings {
    /// DDIM steps `N` (50).
    pub steps: usize,
    /// Guidance `w` (7.5).
    pub guidance: f64,
    /// The unconditional prompt (""); METHOD.md's negative-prompt knob.
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
    /// How stage 1's context keys/values are kept for replay.
    pub kv_policy: KvPolicy,
    /// Replay the context branch from stage 1 (default) instead of recomputing it.
    pub replay: bool,
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
            replay: true,
        }
    }
}

/// METHOD.md's "round": half away from zero.
pub fn round_half_away(x: f64) -> usize {
    x.round().max(0.0) as usize
}

impl MethodSettings {
    /// `λ1`: the number of vanilla steps.
    pub fn lambda1(&self) -> usize {
        round_half_away(self.layout_fraction * self.steps as f64).min(self.steps)
    }

    /// The first blended step.
    pub fn blend_start(&self) -> usize {
        self.blend_start
            .unwrap_or_else(|| round_half_away(0.2 * self.steps as f64))
    }

    /// Whether the context branch is replayed (replay on and K/V kept).
    pub fn replays(&self) -> bool {
        self.replay && self.kv_policy != KvPolicy::DontKeep
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
        Ok(())
    }
}
