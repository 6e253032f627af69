//! Single-file checkpoints in the original LDM (CompVis / Stability AI) layout — what
//! AUTOMATIC1111, ComfyUI and model-sharing sites use (`v1-5-pruned-emaonly.safetensors`, a
//! DreamBooth trainer's `model.ckpt`): the family detected from the tensors themselves, the
//! standard configs of that family, and key maps from layret's module tree (diffusers' names)
//! onto the file's names, read through the same checked, key-by-key [`Weights`](crate::weights::Weights) loading as a
//! diffusers folder.
//!
//! | component | file keys | layret keys |
//! |---|---|---|
//! | UNet | `model.diffusion_model.input_blocks.N.M…`, `middle_block`, `output_blocks`, `time_embed`, `out` | `down_blocks`, `mid_block`, `up_blocks`, `time_embedding`, `conv_norm_out`/`conv_out` |
//! | VAE | `first_stage_model.encoder.down.N.block.M`, `mid.attn_1.{q,k,v,proj_out}` (1×1 convs), … | `encoder.down_blocks.N.resnets.M`, `mid_block.attentions.0.to_{q,k,v,out.0}` (linear) |
//! | text, SD 1.x | `cond_stage_model.transformer.text_model.…` | `text_model.…` |
//! | text, SD 2.x | OpenCLIP `cond_stage_model.model.transformer.resblocks.N.attn.in_proj_weight` (q, k, v fused) … | `encoder.layers.N.self_attn.{q,k,v}_proj` … |
//!
//! The DDPM buffers (`betas`, `alphas_cumprod`, …), `model_ema.*`, the text encoder's
//! `position_ids`, and for SD 2.x OpenCLIP's last resblock (SD 2.x conditions on the
//! penultimate layer), `text_projection` and `logit_scale` are skipped; any other key the maps
//! do not use is an error naming it.

use std::path::Path;
use std::sync::Arc;

use crate::clip::ClipTextConfig;
use crate::error::{Error, Result};
use crate::scheduler::{PredictionType, SchedulerConfig};
use crate::unet::{UNetConfig, UNetPlan};
use crate::vae::VaeConfig;
use crate::weights::{KeyMap, Mapped, TensorFile};

/// The Stable Diffusion family of a single file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x: CLIP ViT-L/14 text encoder (768), 1×1-conv `proj_in`.
    Sd1,
    /// SD 2.x: OpenCLIP ViT-H/14 text encoder (1024), linear `proj_in`.
    Sd2,
}

impl Family {
    /// `SD 1.x` / `SD 2.x`.
    pub fn name(self) -> &'static str {
        match self {
            Family::Sd1 => "SD 1.x",
            Family::Sd2 => "SD 2.x",
        }
    }
}

/// The UNet prefix of every LDM checkpoint.
const UNET: &str = "model.diffusion_model.";
/// The VAE prefix.
const VAE: &str = "first_stage_model.";
/// SD 1.x's text encoder (transformers' CLIPTextModel) prefix.
const CLIP_SD1: &str = "cond_stage_model.transformer.";
/// SD 2.x's OpenCLIP text tower prefix.
const OPENCLIP: &str = "cond_stage_model.model.";

/// The DDPM buffers LDM checkpoints carry beside the models (never weights).
const DDPM_BUFFERS: &[&str] = &[
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
];

/// What a single file holds, read from its tensors.
#[derive(Debug, Clone)]
pub struct SingleFileInfo {
    /// SD 1.x or 2.x.
    pub family: Family,
    /// The text embedding width the UNet's cross-attention takes (768 / 1024).
    pub cross_attention_dim: usize,
    /// Linear (SD 2.x) or 1×1-conv (SD 1.x) `proj_in`/`proj_out`.
    pub linear_projection: bool,
    /// OpenCLIP resblocks in the file (SD 2.x; the text encoder uses all but the last).
    pub openclip_layers: Option<usize>,
    /// The trainer's step count, when the file records it (`.ckpt`).
    pub global_step: Option<i64>,
    /// Non-model keys that will be skipped (EMA copies, DDPM buffers, …).
    pub skipped: usize,
    /// Tensors per component: UNet, VAE, text encoder.
    pub counts: (usize, usize, usize),
}

/// Whether `key` is a non-model entry every LDM file may carry.
fn is_skipped(key: &str) -> bool {
    key.starts_with("model_ema.")
        || DDPM_BUFFERS.contains(&key)
        || key.ends_with("embeddings.position_ids")
        || key == format!("{OPENCLIP}text_projection")
        || key == format!("{OPENCLIP}logit_scale")
        || key == format!("{OPENCLIP}attn_mask")
}

/// Read what `file` is: refuse SDXL, other model types and files without an SD UNet, with a
/// message naming what was found.
pub fn detect(file: &TensorFile) -> Result<SingleFileInfo> {
    let path = file.path();
    let not = |reason: String| Error::NotASingleFile {
        path: path.to_path_buf(),
        reason,
    };
    let keys = file.keys();
    if keys.iter().any(|k| {
        k.starts_with("conditioner.embedders.") || k.starts_with("model.diffusion_model.label_emb.")
    }) {
        return Err(not(
            "it is an SDXL checkpoint (conditioner.embedders.* / label_emb keys); layret supports SD 1.x and 2.x".into(),
        ));
    }
    let unet_keys = keys.iter().filter(|k| k.starts_with(UNET)).count();
    if unet_keys == 0 {
        let sample: Vec<&str> = keys.iter().take(3).map(String::as_str).collect();
        return Err(not(format!(
            "no `{UNET}*` tensors (found e.g. {sample:?}): not an SD single-file checkpoint"
        )));
    }
    let shape = |k: &str| file.shape_of(k).map(<[usize]>::to_vec);
    let conv_in = shape(&format!("{UNET}input_blocks.0.0.weight")).ok_or_else(|| {
        not(format!(
            "no `{UNET}input_blocks.0.0.weight` (the UNet's conv_in)"
        ))
    })?;
    if conv_in.len() != 4 || conv_in[1] != 4 {
        return Err(not(format!(
            "the UNet takes {} input channels ({}); layret supports text-to-image UNets with 4",
            conv_in.get(1).copied().unwrap_or(0),
            if conv_in.get(1) == Some(&9) {
                "an inpainting model"
            } else {
                "another model type"
            }
        )));
    }
    let to_k = shape(&format!(
        "{UNET}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    ))
    .ok_or_else(|| not("no cross-attention in the UNet's first block".into()))?;
    let cross = to_k.get(1).copied().unwrap_or(0);
    let proj_in = shape(&format!("{UNET}input_blocks.1.1.proj_in.weight")).unwrap_or_default();
    let linear_projection = proj_in.len() == 2;
    let has_openclip = keys.iter().any(|k| k.starts_with(OPENCLIP));
    let has_clip = keys.iter().any(|k| k.starts_with(CLIP_SD1));
    let family = match (has_clip, has_openclip) {
        (true, false) => Family::Sd1,
        (false, true) => Family::Sd2,
        (true, true) => {
            return Err(not(
                "it holds both an SD 1.x and an SD 2.x text encoder".into()
            ));
        }
        (false, false) => {
            return Err(not(format!(
                "no text encoder (`{CLIP_SD1}*` or `{OPENCLIP}*`): a UNet-only file; pass a full checkpoint"
            )));
        }
    };
    let openclip_layers = (family == Family::Sd2).then(|| {
        keys.iter()
            .filter_map(|k| {
                k.strip_prefix(&format!("{OPENCLIP}transformer.resblocks."))?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |m| m + 1)
    });
    let count = |p: &str| {
        keys.iter()
            .filter(|k| k.starts_with(p) && !is_skipped(k))
            .count()
    };
    let text = match family {
        Family::Sd1 => count(CLIP_SD1),
        Family::Sd2 => count(OPENCLIP),
    };
    Ok(SingleFileInfo {
        family,
        cross_attention_dim: cross,
        linear_projection,
        openclip_layers,
        global_step: file
            .metadata()
            .get("global_step")
            .and_then(|s| s.parse().ok()),
        skipped: keys.iter().filter(|k| is_skipped(k)).count(),
        counts: (unet_keys, count(VAE), text),
    })
}

/// The configs of a single file: the family's standard ones, or a diffusers folder's
/// (`config_dir`, like diffusers' `from_single_file(config=…)`: for non-standard
/// architectures, e.g. the tiny test models).
#[derive(Debug, Clone)]
pub struct SingleFileConfigs {
    /// The UNet.
    pub unet: UNetConfig,
    /// The VAE.
    pub vae: VaeConfig,
    /// The text encoder.
    pub text: ClipTextConfig,
    /// The scheduler.
    pub scheduler: SchedulerConfig,
}

impl SingleFileConfigs {
    /// The configs for `info`'s family, or read from `config_dir`; `prediction` overrides the
    /// scheduler's prediction type.
    ///
    /// SD 2.x files do not say whether they predict ε or v. The default is v-prediction (the
    /// 768 px SD 2.0/2.1 models most SD 2.x files derive from), except for files recording
    /// the 2.x-base checkpoints' step count (875000), which predict ε — diffusers' rule.
    pub fn new(
        info: &SingleFileInfo,
        config_dir: Option<&Path>,
        prediction: Option<PredictionType>,
    ) -> Result<Self> {
        let mut c = match config_dir {
            Some(dir) => Self {
                unet: UNetConfig::from_file(&dir.join("unet/config.json"))?,
                vae: VaeConfig::from_file(&dir.join("vae/config.json"))?,
                text: ClipTextConfig::from_file(&dir.join("text_encoder/config.json"))?,
                scheduler: SchedulerConfig::from_file(
                    &dir.join("scheduler/scheduler_config.json"),
                )?,
            },
            None => match info.family {
                Family::Sd1 => Self {
                    unet: UNetConfig::v1_5(),
                    vae: VaeConfig::sd(),
                    text: ClipTextConfig::v1_5(),
                    scheduler: SchedulerConfig::sd(),
                },
                Family::Sd2 => {
                    let v = info.global_step != Some(875_000);
                    let mut unet = UNetConfig::v2_1();
                    unet.sample_size = Some(if v { 96 } else { 64 });
                    let mut scheduler = SchedulerConfig::sd();
                    if v {
                        scheduler.prediction_type = PredictionType::VPrediction;
                    }
                    Self {
                        unet,
                        vae: VaeConfig::sd(),
                        text: ClipTextConfig::v2_1(),
                        scheduler,
                    }
                }
            },
        };
        if let Some(p) = prediction {
            c.scheduler.prediction_type = p;
        }
        Ok(c)
    }
}

/// The model's key `model_key` (diffusers' names) as the file names it, through a prefix
/// table: the longest table prefix of the key (at a `.` boundary) is replaced, and for ResNet
/// blocks the first segment after it renamed.
struct PrefixTable {
    /// (model prefix, file prefix, kind)
    entries: std::collections::HashMap<String, (String, Kind)>,
    /// The file prefix every key of this component carries.
    file_prefix: String,
}

/// What sits under a table prefix, for renaming its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Names unchanged.
    Plain,
    /// A UNet ResNet (`in_layers`, `emb_layers`, `out_layers`, `skip_connection`).
    UnetResnet,
    /// A VAE ResNet (`nin_shortcut` for the shortcut).
    VaeResnet,
    /// The VAE's mid-block attention (`norm`, `q`, `k`, `v`, `proj_out`; 1×1 convs).
    VaeAttention,
}

impl PrefixTable {
    fn new(file_prefix: &str) -> Self {
        Self {
            entries: Default::default(),
            file_prefix: file_prefix.to_string(),
        }
    }

    fn add(&mut self, model: impl Into<String>, file: impl Into<String>, kind: Kind) {
        self.entries.insert(model.into(), (file.into(), kind));
    }

    fn map(&self, model_key: &str) -> Option<Mapped> {
        let mut cut = model_key.len();
        loop {
            let prefix = &model_key[..cut];
            if let Some((file, kind)) = self.entries.get(prefix) {
                let rest = model_key.get(cut + 1..).unwrap_or("");
                let (rest, reshape) = rename(*kind, rest)?;
                let key = if rest.is_empty() {
                    format!("{}{file}", self.file_prefix)
                } else {
                    format!("{}{file}.{rest}", self.file_prefix)
                };
                return Some(Mapped {
                    key,
                    rows: None,
                    reshape,
                });
            }
            cut = prefix.rfind('.')?;
        }
    }
}

/// The parameter path `rest` under a block of `kind`, as the LDM file names it (and whether
/// the stored tensor is a 1×1 convolution read as a linear weight).
fn rename(kind: Kind, rest: &str) -> Option<(String, bool)> {
    let (head, tail) = rest.split_once('.').unwrap_or((rest, ""));
    let join = |h: &str| {
        if tail.is_empty() {
            h.to_string()
        } else {
            format!("{h}.{tail}")
        }
    };
    Some(match kind {
        Kind::Plain => (rest.to_string(), false),
        Kind::UnetResnet => (
            join(match head {
                "norm1" => "in_layers.0",
                "conv1" => "in_layers.2",
                "time_emb_proj" => "emb_layers.1",
                "norm2" => "out_layers.0",
                "conv2" => "out_layers.3",
                "conv_shortcut" => "skip_connection",
                _ => return None,
            }),
            false,
        ),
        Kind::VaeResnet => (
            join(match head {
                "conv_shortcut" => "nin_shortcut",
                h @ ("norm1" | "conv1" | "norm2" | "conv2") => h,
                _ => return None,
            }),
            false,
        ),
        Kind::VaeAttention => {
            // `to_out.0.weight` has two segments before the parameter.
            let (name, param) = rest.rsplit_once('.')?;
            let file = match name {
                "group_norm" => "norm",
                "to_q" => "q",
                "to_k" => "k",
                "to_v" => "v",
                "to_out.0" => "proj_out",
                _ => return None,
            };
            (
                format!("{file}.{param}"),
                name != "group_norm" && param == "weight",
            )
        }
    })
}

/// The UNet's LDM key map for `cfg`.
pub(crate) struct UnetMap(PrefixTable);

impl UnetMap {
    pub(crate) fn new(cfg: &UNetConfig) -> Self {
        Self::from_plan(&cfg.plan())
    }

    pub(crate) fn from_plan(plan: &UNetPlan) -> Self {
        let mut t = PrefixTable::new(UNET);
        let n = plan.down_attention.len();
        let l = plan.layers_per_block;
        t.add("time_embedding.linear_1", "time_embed.0", Kind::Plain);
        t.add("time_embedding.linear_2", "time_embed.2", Kind::Plain);
        t.add("conv_in", "input_blocks.0.0", Kind::Plain);
        t.add("conv_norm_out", "out.0", Kind::Plain);
        t.add("conv_out", "out.2", Kind::Plain);
        let mut idx = 1;
        for (i, &attn) in plan.down_attention.iter().enumerate() {
            for j in 0..l {
                t.add(
                    format!("down_blocks.{i}.resnets.{j}"),
                    format!("input_blocks.{idx}.0"),
                    Kind::UnetResnet,
                );
                if attn {
                    t.add(
                        format!("down_blocks.{i}.attentions.{j}"),
                        format!("input_blocks.{idx}.1"),
                        Kind::Plain,
                    );
                }
                idx += 1;
            }
            if i + 1 < n {
                t.add(
                    format!("down_blocks.{i}.downsamplers.0.conv"),
                    format!("input_blocks.{idx}.0.op"),
                    Kind::Plain,
                );
                idx += 1;
            }
        }
        t.add("mid_block.resnets.0", "middle_block.0", Kind::UnetResnet);
        t.add("mid_block.attentions.0", "middle_block.1", Kind::Plain);
        t.add("mid_block.resnets.1", "middle_block.2", Kind::UnetResnet);
        let mut idx = 0;
        for (i, &attn) in plan.up_attention.iter().enumerate() {
            for j in 0..=l {
                t.add(
                    format!("up_blocks.{i}.resnets.{j}"),
                    format!("output_blocks.{idx}.0"),
                    Kind::UnetResnet,
                );
                if attn {
                    t.add(
                        format!("up_blocks.{i}.attentions.{j}"),
                        format!("output_blocks.{idx}.1"),
                        Kind::Plain,
                    );
                }
                if j == l && i + 1 < n {
                    t.add(
                        format!("up_blocks.{i}.upsamplers.0.conv"),
                        format!("output_blocks.{idx}.{}.conv", if attn { 2 } else { 1 }),
                        Kind::Plain,
                    );
                }
                idx += 1;
            }
        }
        Self(t)
    }
}

impl KeyMap for UnetMap {
    fn map(&self, model_key: &str) -> Option<Mapped> {
        self.0.map(model_key)
    }
    fn owns(&self, file_key: &str) -> bool {
        file_key.starts_with(UNET) && !is_skipped(file_key)
    }
}

/// The VAE's LDM key map for `cfg`, under `prefix` (`first_stage_model.` in a full
/// checkpoint, nothing in a standalone LDM VAE file such as `vae-ft-mse-840000-ema-pruned`).
pub(crate) struct VaeMap(PrefixTable);

impl VaeMap {
    pub(crate) fn new(cfg: &VaeConfig, prefix: &str) -> Self {
        let mut t = PrefixTable::new(prefix);
        let n = cfg.block_out_channels.len();
        for side in ["encoder", "decoder"] {
            t.add(
                format!("{side}.conv_in"),
                format!("{side}.conv_in"),
                Kind::Plain,
            );
            t.add(
                format!("{side}.conv_out"),
                format!("{side}.conv_out"),
                Kind::Plain,
            );
            t.add(
                format!("{side}.conv_norm_out"),
                format!("{side}.norm_out"),
                Kind::Plain,
            );
            t.add(
                format!("{side}.mid_block.resnets.0"),
                format!("{side}.mid.block_1"),
                Kind::VaeResnet,
            );
            t.add(
                format!("{side}.mid_block.resnets.1"),
                format!("{side}.mid.block_2"),
                Kind::VaeResnet,
            );
            t.add(
                format!("{side}.mid_block.attentions.0"),
                format!("{side}.mid.attn_1"),
                Kind::VaeAttention,
            );
        }
        for i in 0..n {
            for j in 0..cfg.layers_per_block {
                t.add(
                    format!("encoder.down_blocks.{i}.resnets.{j}"),
                    format!("encoder.down.{i}.block.{j}"),
                    Kind::VaeResnet,
                );
            }
            t.add(
                format!("encoder.down_blocks.{i}.downsamplers.0.conv"),
                format!("encoder.down.{i}.downsample.conv"),
                Kind::Plain,
            );
            // The decoder's levels are numbered from the bottom in LDM.
            let u = n - 1 - i;
            for j in 0..=cfg.layers_per_block {
                t.add(
                    format!("decoder.up_blocks.{i}.resnets.{j}"),
                    format!("decoder.up.{u}.block.{j}"),
                    Kind::VaeResnet,
                );
            }
            t.add(
                format!("decoder.up_blocks.{i}.upsamplers.0.conv"),
                format!("decoder.up.{u}.upsample.conv"),
                Kind::Plain,
            );
        }
        t.add("quant_conv", "quant_conv", Kind::Plain);
        t.add("post_quant_conv", "post_quant_conv", Kind::Plain);
        Self(t)
    }
}

impl KeyMap for VaeMap {
    fn map(&self, model_key: &str) -> Option<Mapped> {
        self.0.map(model_key)
    }
    fn owns(&self, file_key: &str) -> bool {
        file_key.starts_with(&self.0.file_prefix) && !is_skipped(file_key)
    }
}

/// SD 1.x's text encoder: transformers' names under `cond_stage_model.transformer.`.
pub(crate) struct ClipMap;

impl KeyMap for ClipMap {
    fn map(&self, model_key: &str) -> Option<Mapped> {
        Some(Mapped::same(&format!("{CLIP_SD1}{model_key}")))
    }
    fn owns(&self, file_key: &str) -> bool {
        file_key.starts_with(CLIP_SD1) && !is_skipped(file_key)
    }
}

/// SD 2.x's OpenCLIP text tower onto a CLIP text encoder of `layers` layers and width
/// `hidden` (the fused `in_proj` split into q, k, v rows); resblocks past `layers` are
/// skipped.
pub(crate) struct OpenClipMap {
    pub(crate) layers: usize,
    pub(crate) hidden: usize,
}

impl KeyMap for OpenClipMap {
    fn map(&self, model_key: &str) -> Option<Mapped> {
        let p = OPENCLIP;
        let same = |k: String| Some(Mapped::same(&k));
        match model_key {
            "embeddings.token_embedding.weight" => {
                return same(format!("{p}token_embedding.weight"));
            }
            "embeddings.position_embedding.weight" => {
                return same(format!("{p}positional_embedding"));
            }
            _ => {}
        }
        if let Some(param) = model_key.strip_prefix("final_layer_norm.") {
            return same(format!("{p}ln_final.{param}"));
        }
        let rest = model_key.strip_prefix("encoder.layers.")?;
        let (i, rest) = rest.split_once('.')?;
        let block = format!("{p}transformer.resblocks.{i}");
        let (module, param) = rest.rsplit_once('.')?;
        let d = self.hidden;
        let q_k_v = |row: usize| {
            Some(Mapped {
                key: format!("{block}.attn.in_proj_{param}"),
                rows: Some((row * d, d)),
                reshape: false,
            })
        };
        match module {
            "self_attn.q_proj" => q_k_v(0),
            "self_attn.k_proj" => q_k_v(1),
            "self_attn.v_proj" => q_k_v(2),
            "self_attn.out_proj" => same(format!("{block}.attn.out_proj.{param}")),
            "layer_norm1" => same(format!("{block}.ln_1.{param}")),
            "layer_norm2" => same(format!("{block}.ln_2.{param}")),
            "mlp.fc1" => same(format!("{block}.mlp.c_fc.{param}")),
            "mlp.fc2" => same(format!("{block}.mlp.c_proj.{param}")),
            _ => None,
        }
    }
    fn owns(&self, file_key: &str) -> bool {
        let Some(rest) = file_key.strip_prefix(OPENCLIP) else {
            return false;
        };
        if is_skipped(file_key) {
            return false;
        }
        // Resblocks past the text encoder's layers (SD 2.x's last one) are not used.
        match rest
            .strip_prefix("transformer.resblocks.")
            .and_then(|r| r.split('.').next()?.parse::<usize>().ok())
        {
            Some(i) => i < self.layers,
            None => true,
        }
    }
}

/// The file keys no component owns and no skip rule covers: an error naming them (a key
/// layret does not understand is never silently dropped). `openclip_skip` is the OpenCLIP
/// resblock SD 2.x does not use (its last).
pub(crate) fn check_leftovers(
    file: &Arc<TensorFile>,
    owners: &[&dyn KeyMap],
    openclip_skip: Option<usize>,
) -> Result<()> {
    let skipped_block = openclip_skip.map(|i| format!("{OPENCLIP}transformer.resblocks.{i}."));
    let mut left: Vec<String> = file
        .keys()
        .into_iter()
        .filter(|k| !is_skipped(k) && !owners.iter().any(|m| m.owns(k)))
        .filter(|k| {
            skipped_block
                .as_ref()
                .is_none_or(|b| !k.starts_with(b.as_str()))
        })
        .collect();
    if left.is_empty() {
        return Ok(());
    }
    let count = left.len();
    left.truncate(5);
    Err(Error::UnexpectedTensors {
        file: file.path().to_path_buf(),
        count,
        keys: left,
    })
}
