//! Personalization inputs: textual inversion, DreamBooth, Custom Diffusion and LoRA, turned
//! into the *personalized model* ε* that sits beside the vanilla model ε.
//!
//! | kind | what is loaded | extra memory beside the vanilla model |
//! |---|---|---|
//! | textual inversion | token vector(s) | a text encoder whose token embedding has n more rows (the rest shared); no extra UNet |
//! | DreamBooth | a second model folder's UNet and/or text encoder | a second UNet (and text encoder) unless byte-identical to the base; VAE and tokenizer shared |
//! | Custom Diffusion | cross-attention `to_k`/`to_v` (and `to_q`/`to_out`) + modifier token | only the replaced projections (~2% of the UNet for SD 1.5's k/v) |
//! | LoRA | low-rank updates, merged | only the updated layers |
//!
//! Model copies share every unchanged tensor with the base (burn tensors are reference
//! counted), so "a copy of the UNet" costs only what was replaced.

mod custom_diffusion;
mod dreambooth;
mod lora;
mod textual_inversion;

use std::path::{Path, PathBuf};

pub use custom_diffusion::apply_custom_diffusion;
pub use dreambooth::load_dreambooth;
pub use lora::{Lora, LoraLayer, LoraTarget};
pub use textual_inversion::TextualInversion;

use crate::clip::ClipTextEncoder;
use crate::error::{Error, Result};
use crate::stable_diffusion::StableDiffusion;
use crate::tokenizer::ClipTokenizer;
use crate::unet::UNet2DConditionModel;

/// What personalizes the model, and where its files are.
#[derive(Debug, Clone, PartialEq)]
pub enum Personalization {
    /// A learned embedding file; `token` names the placeholder (needed for A1111 files).
    TextualInversion {
        /// The embedding file.
        path: PathBuf,
        /// The placeholder token, if the file does not name it (or to rename it).
        token: Option<String>,
    },
    /// A fine-tuned model: a diffusers folder, or a single-file checkpoint (`model.ckpt`,
    /// `.safetensors`) of the base's architecture.
    DreamBooth {
        /// The folder or file.
        dir: PathBuf,
    },
    /// Custom Diffusion attention weights; the other `.safetensors` files beside it are its
    /// modifier-token embeddings (e.g. `<new1>.safetensors`) and are loaded too.
    CustomDiffusion {
        /// `pytorch_custom_diffusion_weights.safetensors`.
        path: PathBuf,
    },
    /// A LoRA file, merged with `scale`.
    Lora {
        /// The file.
        path: PathBuf,
        /// The LoRA scale.
        scale: f64,
    },
}

impl Personalization {
    /// Parse `KIND:PATH` with KIND one of `ti`, `dreambooth`, `custom-diffusion`, `lora`
    /// (`ti:PATH#TOKEN` names the token; `lora:PATH@SCALE` sets the scale, default 1).
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = |m: &str| Error::invalid("personalization", format!("{spec:?}: {m}"));
        let (kind, rest) = spec.split_once(':').ok_or_else(|| {
            bad("expected KIND:PATH with KIND ti, dreambooth, custom-diffusion or lora")
        })?;
        if rest.is_empty() {
            return Err(bad("the path is empty"));
        }
        Ok(match kind {
            "ti" | "textual-inversion" => match rest.rsplit_once('#') {
                Some((p, t)) if !t.is_empty() => Personalization::TextualInversion {
                    path: p.into(),
                    token: Some(t.to_string()),
                },
                _ => Personalization::TextualInversion {
                    path: rest.into(),
                    token: None,
                },
            },
            "dreambooth" => Personalization::DreamBooth { dir: rest.into() },
            "custom-diffusion" | "cd" => Personalization::CustomDiffusion { path: rest.into() },
            "lora" => match rest.rsplit_once('@') {
                Some((p, s)) => Personalization::Lora {
                    path: p.into(),
                    scale: s
                        .parse()
                        .ok()
                        .filter(|v: &f64| v.is_finite())
                        .ok_or_else(|| bad("the scale after @ is not a number"))?,
                },
                None => Personalization::Lora {
                    path: rest.into(),
                    scale: 1.0,
                },
            },
            other => {
                return Err(bad(&format!(
                    "unknown kind {other:?}; expected ti, dreambooth, custom-diffusion or lora"
                )));
            }
        })
    }

    /// Short name of the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Personalization::TextualInversion { .. } => "ti",
            Personalization::DreamBooth { .. } => "dreambooth",
            Personalization::CustomDiffusion { .. } => "custom-diffusion",
            Personalization::Lora { .. } => "lora",
        }
    }

    /// Build the personalized model ε* beside `base` (the vanilla model).
    pub fn apply(&self, base: &StableDiffusion) -> Result<PersonalModel> {
        self.apply_onto(base, PersonalModel::of_base(base))
    }

    /// Apply on top of `current` (the result of earlier personalizations of `base`): a
    /// textual-inversion token added to its tokenizer and text encoder, a LoRA or Custom
    /// Diffusion merged into its UNet (and text encoder). A DreamBooth model replaces the
    /// UNet and text encoder, so it must come first.
    pub fn apply_onto(
        &self,
        base: &StableDiffusion,
        current: PersonalModel,
    ) -> Result<PersonalModel> {
        let device = &base.device;
        let PersonalModel {
            mut tokenizer,
            text_encoder,
            unet,
            mut sources,
            label,
            content: _,
        } = current;
        let stacked = |l: &str| {
            if label.is_empty() {
                l.to_string()
            } else {
                format!("{label} | {l}")
            }
        };
        match self {
            Personalization::TextualInversion { path, token } => {
                let ti = TextualInversion::load(path, token.as_deref(), device)?;
                let text_encoder = ti.apply(&mut tokenizer, &text_encoder)?;
                sources.push(path.clone());
                PersonalModel {
                    tokenizer,
                    text_encoder,
                    unet,
                    sources,
                    label: stacked(&format!("ti token={}", ti.token)),
                    content: 0,
                }
                .sealed()
            }
            Personalization::DreamBooth { dir } => {
                if !sources.is_empty() {
                    return Err(Error::invalid(
                        "personalization",
                        format!(
                            "dreambooth:{} replaces the UNet and text encoder, so it must come first in a stack (before {label})",
                            dir.display()
                        ),
                    ));
                }
                load_dreambooth(base, dir)?.sealed()
            }
            Personalization::CustomDiffusion { path } => {
                let merged = apply_custom_diffusion(unet.as_ref().unwrap_or(&base.unet), path)?;
                let mut text_encoder = text_encoder;
                sources.push(path.clone());
                for f in modifier_token_files(path)? {
                    let ti = TextualInversion::load(&f, None, device)?;
                    text_encoder = ti.apply(&mut tokenizer, &text_encoder)?;
                    sources.push(f);
                }
                PersonalModel {
                    tokenizer,
                    text_encoder,
                    unet: Some(merged),
                    sources,
                    label: stacked("custom-diffusion"),
                    content: 0,
                }
                .sealed()
            }
            Personalization::Lora { path, scale } => {
                let lora = Lora::load(path, device)?;
                let unet = if lora.targets(LoraTarget::Unet) {
                    Some(lora.merge_into_unet(unet.as_ref().unwrap_or(&base.unet), *scale)?)
                } else {
                    unet
                };
                let text_encoder = if lora.targets(LoraTarget::TextEncoder) {
                    lora.merge_into_text_encoder(&text_encoder, *scale)?
                } else {
                    text_encoder
                };
                sources.push(path.clone());
                PersonalModel {
                    tokenizer,
                    text_encoder,
                    unet,
                    sources,
                    label: stacked(&format!("lora scale={:#x}", scale.to_bits())),
                    content: 0,
                }
                .sealed()
            }
        }
    }

    /// Apply `list` in order onto `base` (see [`apply_onto`](Self::apply_onto)); an empty
    /// list is the base itself.
    pub fn apply_all(list: &[Personalization], base: &StableDiffusion) -> Result<PersonalModel> {
        list.iter()
            .try_fold(PersonalModel::of_base(base), |current, p| {
                p.apply_onto(base, current)
            })
    }
}

/// The other `.safetensors` files beside a Custom Diffusion weights file: its modifier-token
/// embeddings (diffusers' training script saves `<new1>.safetensors` there).
fn modifier_token_files(weights: &Path) -> Result<Vec<PathBuf>> {
    let dir = match weights.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("listing", dir, e))?;
    for e in entries.flatten() {
        let p = e.path();
        let is_st = p.extension().is_some_and(|x| x == "safetensors");
        if is_st && p.file_name() != weights.file_name() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// The personalized model ε*: its tokenizer and text encoder, and its UNet when it differs
/// from the vanilla one (`None`: ε* uses the vanilla UNet, as for textual inversion).
#[derive(Debug, Clone)]
pub struct PersonalModel {
    /// Tokenizer with any added tokens.
    pub tokenizer: ClipTokenizer,
    /// Text encoder (shares unchanged tensors with the base).
    pub text_encoder: ClipTextEncoder,
    /// The personalized UNet, if not the vanilla one.
    pub unet: Option<UNet2DConditionModel>,
    /// The files the personalization was read from (their content identifies it).
    pub sources: Vec<PathBuf>,
    /// The personalization's settings that are not in its files (kind, token, LoRA scale).
    pub label: String,
    /// The content identity of `sources` and `label`, taken when the files were read (see
    /// [`PersonalModel::fingerprint`]).
    pub content: u64,
}

impl PersonalModel {
    /// The base model unchanged: the start of a stack of personalizations.
    pub fn of_base(base: &StableDiffusion) -> Self {
        Self {
            tokenizer: base.tokenizer.clone(),
            text_encoder: base.text_encoder.clone(),
            unet: None,
            sources: Vec::new(),
            label: String::new(),
            content: 0,
        }
    }

    /// The personalized model as a [`StableDiffusion`] of its own (its tokenizer, text
    /// encoder and UNet; the base's VAE and scheduler), sharing every tensor with `base`: for
    /// text-to-image with the personalized model alone.
    pub fn to_model(&self, base: &StableDiffusion) -> Result<StableDiffusion> {
        base.with_personal_parts(
            self.tokenizer.clone(),
            self.text_encoder.clone(),
            self.unet(base).clone(),
            &self.sources,
            &self.label,
            self.content,
        )
    }

    /// The content identity of the personalization applied (its kind, settings and every
    /// source file's content), for cache keys: taken when the files were read, so a file
    /// changed afterwards does not change the identity of what was loaded.
    pub fn fingerprint(&self) -> Result<u64> {
        Ok(self.content)
    }

    /// Take the content identity of `sources` and `label` (reads the files once).
    pub(crate) fn sealed(mut self) -> Result<Self> {
        let mut h = crate::fingerprint::Fingerprinter::new();
        h.update_str("layret-personalization-v1");
        h.update_str(&self.label);
        for f in &self.sources {
            h.update_u64(crate::fingerprint::of_file(f)?);
        }
        self.content = h.finish();
        Ok(self)
    }

    /// The UNet ε* runs: its own, or `base`'s.
    pub fn unet<'a>(&'a self, base: &'a StableDiffusion) -> &'a UNet2DConditionModel {
        self.unet.as_ref().unwrap_or(&base.unet)
    }

    /// The personalized tokenizer, text encoder and UNet (shared with `base` where not
    /// replaced), for [`crate::sampling`].
    pub fn denoiser<'a>(&'a self, base: &'a StableDiffusion) -> crate::sampling::Denoiser<'a> {
        crate::sampling::Denoiser::new(
            &self.tokenizer,
            &self.text_encoder,
            self.unet(base),
            crate::processor::ModelRole::Personalized,
        )
    }
}
