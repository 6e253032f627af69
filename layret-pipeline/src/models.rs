//! The vanilla/personalized model pair, and the one recording pass every branch of the method
//! runs (a classifier-free-guided UNet pass that also records the swapped sites' keys/values
//! and the branch's subject map).

use burn::tensor::Tensor;
use layret_attention::{
    AttentionStore, KvPolicy, KvRecorder, KvStore, MultiSourceSwap, Router, SiteSelector, masks,
};
use layret_core::personalization::{PersonalModel, Personalization};
use layret_core::processor::{AttentionKind, BatchLayout, Branch, ModelRole, Pass};
use layret_core::sampling::{BatchText, Denoiser, GuidedPass};
use layret_core::stable_diffusion::StableDiffusion;
use layret_core::tokenizer::ClipTokenizer;
use layret_core::unet::UNet2DConditionModel;
use layret_core::{Error, Result};

/// The vanilla model ε and the personalized model ε* (which shares every unchanged tensor
/// with the vanilla one). `Send + Sync`: one pair can serve requests from several threads.
pub struct ModelPair {
    base: StableDiffusion,
    personal: PersonalModel,
    fingerprint: u64,
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
        Self::from_parts(base, personal)
    }

    /// A pair from a base and a personalized model built beside it.
    pub fn from_parts(base: StableDiffusion, personal: PersonalModel) -> Result<Self> {
        let mut h = layret_core::fingerprint::Fingerprinter::new();
        h.update_str("layret-model-pair-v1");
        h.update_u64(base.fingerprint()?);
        h.update_u64(personal.fingerprint()?);
        Ok(Self {
            base,
            personal,
            fingerprint: h.finish(),
        })
    }

    /// The base model (also provides the VAE and scheduler).
    pub fn base(&self) -> &StableDiffusion {
        &self.base
    }

    /// The personalized side.
    pub fn personal(&self) -> &PersonalModel {
        &self.personal
    }

    /// The content identity of the pair (the base model's and the personalization's
    /// fingerprints, taken when they were loaded), for cache keys.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The tokenizer, text encoder and UNet of `role`.
    pub fn denoiser(&self, role: ModelRole) -> Denoiser<'_> {
        match role {
            ModelRole::Vanilla => self.base.denoiser(),
            ModelRole::Personalized => self.personal.denoiser(&self.base),
        }
    }

    /// The UNet of `role`.
    pub fn unet(&self, role: ModelRole) -> &UNet2DConditionModel {
        self.denoiser(role).unet()
    }

    /// The tokenizer of `role`.
    pub fn tokenizer(&self, role: ModelRole) -> &ClipTokenizer {
        self.denoiser(role).tokenizer()
    }
}

/// The text conditioning of a branch at one step: which model, its prompt and negative prompt
/// encoded, and where the subject's tokens are.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// Which model runs.
    pub role: ModelRole,
    /// `[1, 77, D]` of the prompt.
    pub cond: Tensor<3>,
    /// `[1, 77, D]` of the unconditional prompt.
    pub uncond: Tensor<3>,
    /// Subject token positions in the prompt.
    pub tokens: Vec<usize>,
}

impl Conditioning {
    /// Encode `prompt` (and `negative`) with `role`'s model, locating `phrase` in `prompt`.
    pub fn new(
        models: &ModelPair,
        role: ModelRole,
        prompt: &str,
        negative: &str,
        phrase: &str,
    ) -> Result<Self> {
        let d = models.denoiser(role);
        Ok(Self {
            role,
            cond: d.encode(&[prompt])?,
            uncond: d.encode(&[negative])?,
            tokens: crate::prompts::subject_tokens(d.tokenizer(), prompt, phrase)?,
        })
    }
}

/// The sites docs/method.md swaps: decoder self-attention at ≥ latent / `divisor`.
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

/// docs/method.md's map of a branch at `step`: the cond-half cross-attention probabilities at
/// the mask level, averaged over heads then layers, summed over `tokens`, min-max normalized
/// per image: `[n, hm·wm]`.
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

/// One guided pass of one branch of the method: which branch and pass, at which step, with
/// which conditioning, and what to record.
pub(crate) struct BranchPass<'a> {
    pub branch: Branch,
    pub kind: Pass,
    pub step: usize,
    pub timestep: f64,
    pub guidance: f64,
    pub conditioning: &'a Conditioning,
    /// The mask level `(hm, wm)` whose cross-attention gives the subject map.
    pub mask: (usize, usize),
    /// The swapped layers' divisor (docs/method.md's "≥ latent/2").
    pub swap_divisor: usize,
}

/// What a [`recording_pass`] gives.
pub(crate) struct Recorded {
    /// The guided noise prediction, `[n, 4, h, w]`.
    pub eps: Tensor<4>,
    /// The swapped sites' keys/values (`[2n, H, L, d]` each), when asked for.
    pub kv: Option<KvStore>,
    /// The branch's subject map, `[n, hm·wm]`.
    pub map: Tensor<2>,
}

/// The one CFG pass of every branch (context, reference, target): `ε_u + w·(ε_c − ε_u)` on
/// `[uncond × n; cond × n]`, recording the subject map at the mask level, the swapped sites'
/// keys/values under `kv` (none when `None` or [`KvPolicy::Recompute`]), with `swap` (the
/// target's processor) required at the swapped sites, layered over the user's `hooks`.
pub(crate) fn recording_pass(
    models: &ModelPair,
    pass: &BranchPass,
    latents: Tensor<4>,
    kv: Option<KvPolicy>,
    swap: Option<&mut MultiSourceSwap>,
    hooks: &mut Router,
) -> Result<Recorded> {
    let n = latents.dims()[0];
    let c = pass.conditioning;
    let mut store = AttentionStore::new(true);
    let mut kv = kv.filter(|p| *p != KvPolicy::Recompute).map(KvStore::new);
    let eps = {
        let mut recorder = kv.as_mut().map(KvRecorder::new);
        let mut router = Router::new();
        if let Some(r) = recorder.as_mut() {
            router.observe(swapped_sites(pass.swap_divisor), r);
        }
        if let Some(s) = swap {
            router.require(swapped_sites(pass.swap_divisor), s);
        }
        router.route(mask_sites(pass.mask.0, pass.mask.1), &mut store);
        router.over(hooks);
        let guided = GuidedPass {
            step: pass.step,
            timestep: pass.timestep,
            kind: pass.kind,
            layout: BatchLayout::single(pass.branch, n, true),
            guidance: pass.guidance,
        };
        let text = BatchText::repeated(c.cond.clone(), c.uncond.clone(), n);
        models
            .denoiser(c.role)
            .guided_eps(&guided, latents, &text, &mut router)?
    };
    if kv.as_ref().is_some_and(KvStore::is_empty) {
        return Err(Error::invalid(
            "swap_divisor",
            format!(
                "{}: no decoder self-attention layer is at least latent/{} (nothing to swap)",
                pass.swap_divisor, pass.swap_divisor
            ),
        ));
    }
    let map = subject_map(&store, pass.step, pass.mask, &c.tokens)?;
    Ok(Recorded { eps, kv, map })
}
