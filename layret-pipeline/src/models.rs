//! The vanilla/personalized model pair and the classifier-free-guided pass every branch runs.

use burn::tensor::Tensor;
use layret_attention::{AttentionStore, SiteSelector, masks};
use layret_core::attention::{AttentionKind, AttentionProcessor, BatchLayout, StepContext};
use layret_core::personalization::{PersonalModel, Personalization};
use layret_core::stable_diffusion::StableDiffusion;
use layret_core::tokenizer::ClipTokenizer;
use layret_core::unet::UNet2DConditionModel;
use layret_core::{Error, Result};

/// Which model of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// ε: the base UNet and text encoder.
    Vanilla,
    /// ε*: the personalized model.
    Personal,
}

/// The vanilla model ε and the personalized model ε* (which shares every unchanged tensor
/// with the vanilla one).
pub struct ModelPair {
    /// The base model (also provides the VAE and scheduler).
    pub base: StableDiffusion,
    /// The personalized side.
    pub personal: PersonalModel,
    fingerprint: std::sync::OnceLock<u64>,
}

impl ModelPair {
    /// Personalize `base` with `p`.
    pub fn new(base: StableDiffusion, p: &Personalization) -> Result<Self> {
        Self::stacked(base, std::slice::from_ref(p))
    }

    /// Personalize `base` with every item of `stack`, in order (e.g. a textual-inversion token
    /// then a LoRA; see [`Personalization::apply_onto`]).
    pub fn stacked(base: StableDiffusion, stack: &[Personalization]) -> Result<Self> {
        if stack.is_empty() {
            return Err(Error::invalid(
                "personalization",
                "none given: Layout-and-Retouch needs a personalized model beside the base",
            ));
        }
        let personal = Personalization::apply_all(stack, &base)?;
        Ok(Self {
            base,
            personal,
            fingerprint: Default::default(),
        })
    }

    /// The content identity of the pair (the base model's and the personalization's
    /// fingerprints), for cache keys: reads every source file once, on the first call.
    pub fn fingerprint(&self) -> Result<u64> {
        if let Some(f) = self.fingerprint.get() {
            return Ok(*f);
        }
        let mut h = layret_core::fingerprint::Fingerprinter::new();
        h.update_str("layret-model-pair-v1");
        h.update_u64(self.base.fingerprint()?);
        h.update_u64(self.personal.fingerprint()?);
        let v = h.finish();
        Ok(*self.fingerprint.get_or_init(|| v))
    }

    /// The UNet of `which`.
    pub fn unet(&self, which: Which) -> &UNet2DConditionModel {
        match which {
            Which::Vanilla => &self.base.unet,
            Which::Personal => self.personal.unet(&self.base),
        }
    }

    /// The tokenizer of `which`.
    pub fn tokenizer(&self, which: Which) -> &ClipTokenizer {
        match which {
            Which::Vanilla => &self.base.tokenizer,
            Which::Personal => &self.personal.tokenizer,
        }
    }

    /// `last_hidden_state` of one prompt through `which`'s text encoder: `[1, 77, D]`.
    pub fn encode(&self, which: Which, prompt: &str) -> Result<Tensor<3>> {
        match which {
            Which::Vanilla => self.base.encode_prompts(&[prompt]),
            Which::Personal => self.personal.encode_prompts(&[prompt]),
        }
    }
}

/// The text conditioning of a branch at one step.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// Which model runs.
    pub which: Which,
    /// `[1, 77, D]` of the prompt.
    pub cond: Tensor<3>,
    /// `[1, 77, D]` of the unconditional prompt.
    pub uncond: Tensor<3>,
    /// Subject token positions in the prompt.
    pub tokens: Vec<usize>,
}

impl Conditioning {
    /// Encode `prompt` (and `negative`) with `which`, locating `phrase` in `prompt`.
    pub fn new(
        models: &ModelPair,
        which: Which,
        prompt: &str,
        negative: &str,
        phrase: &str,
    ) -> Result<Self> {
        Ok(Self {
            which,
            cond: models.encode(which, prompt)?,
            uncond: models.encode(which, negative)?,
            tokens: crate::prompts::subject_tokens(models.tokenizer(which), prompt, phrase)?,
        })
    }
}

/// One CFG pass of a branch: the batch is `[uncond × n, cond × n]`, the result
/// `ε_u + w·(ε_c − ε_u)`.
///
/// # Shapes
/// `latents`: `[n, 4, h, w]` → `[n, 4, h, w]`.
#[allow(clippy::too_many_arguments)]
pub fn cfg_pass(
    models: &ModelPair,
    c: &Conditioning,
    latents: Tensor<4>,
    timestep: f64,
    step: usize,
    guidance: f64,
    branch: &str,
    processor: &mut dyn AttentionProcessor,
) -> Result<Tensor<4>> {
    let n = latents.dims()[0];
    let context = Tensor::cat(
        vec![
            c.uncond.clone().repeat_dim(0, n),
            c.cond.clone().repeat_dim(0, n),
        ],
        0,
    );
    let input = Tensor::cat(vec![latents.clone(), latents], 0);
    let unet = models.unet(c.which);
    unet.check_inputs(&input, &context)?;
    let ctx = StepContext {
        step,
        timestep,
        layout: BatchLayout::single(branch, n, true),
    };
    let eps = unet.forward(input, timestep, &context, processor, &ctx);
    let mut halves = eps.chunk(2, 0);
    let (ec, eu) = match (halves.pop(), halves.pop()) {
        (Some(c), Some(u)) => (c, u),
        _ => return Err(Error::invalid("batch", "the UNet output has no CFG halves")),
    };
    Ok(eu.clone() + (ec - eu) * guidance)
}

/// The sites METHOD.md swaps: decoder self-attention at ≥ latent / `divisor`.
pub fn swapped_sites(divisor: usize) -> SiteSelector {
    SiteSelector::new()
        .kind(AttentionKind::SelfAttention)
        .decoder_at_least(divisor)
}

/// The cross-attention sites at the mask level.
pub fn mask_sites(hm: usize, wm: usize) -> SiteSelector {
    SiteSelector::new()
        .kind(AttentionKind::CrossAttention)
        .size(hm, wm)
}

/// METHOD.md's map of a branch at `step`: the cond-half cross-attention probabilities at the
/// mask level, averaged over heads then layers, summed over `tokens`, min-max normalized per
/// image: `[n, hm·wm]`.
pub fn subject_map(
    store: &AttentionStore,
    step: usize,
    (hm, wm): (usize, usize),
    tokens: &[usize],
) -> Result<Tensor<2>> {
    let records = store.at(step, hm, wm);
    let avg = masks::average_layers(&records).ok_or_else(|| {
        Error::invalid(
            "mask_factor",
            format!("the UNet has no cross-attention layer at the mask level {hm}×{wm}; choose another mask factor"),
        )
    })?;
    Ok(masks::min_max_normalize(masks::select_tokens(avg, tokens)))
}
