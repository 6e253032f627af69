//! A Stable Diffusion 1.x/2.x model folder (diffusers layout) and text-to-image sampling.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Tensor};
use image::RgbImage;

use crate::clip::{ClipTextConfig, ClipTextEncoder};
use crate::error::{Error, Result};
use crate::image_io;
use crate::noise::seeded_noise;
use crate::processor::{AttentionProcessor, BatchLayout, Branch, DefaultAttention, ModelRole};
use crate::progress::{StageProgress, report};
use crate::sampling::{BatchText, Denoiser, SampleBatch, check_finite, sample};
use crate::scheduler::{DdimScheduler, SamplerKind, SamplerOptions, Scheduler, SchedulerConfig};
use crate::tokenizer::ClipTokenizer;
use crate::unet::{UNet2DConditionModel, UNetConfig};
use crate::vae::{AutoencoderKL, VaeConfig};

/// How to load a model (a diffusers folder or a single-file checkpoint). Build it from
/// [`Default`] with the `with_*` methods:
///
/// ```
/// use layret_core::stable_diffusion::LoadOptions;
/// let o = LoadOptions::default().with_variant("fp16").with_vae("vae-ft-mse.safetensors");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LoadOptions {
    /// Float dtype the UNet and text encoder hold their weights in and compute in (f32 by
    /// default; bf16 on CPUs with AVX512-BF16, f16/bf16 on GPUs). Latents, noise and the
    /// scheduler stay f32; normalization statistics and softmax run in f32.
    pub dtype: DType,
    /// Float dtype of the VAE, separately: f32 by default, because SD 1.x's VAE overflows in
    /// f16 (a decoded image with NaN/Inf is refused with [`Error::NonFinite`]).
    pub vae_dtype: DType,
    /// A weights variant to prefer, e.g. `"fp16"` for `*.fp16.safetensors`; components that
    /// lack it fall back to the plain file.
    pub variant: Option<String>,
    /// For a single file: a diffusers folder whose configs (and tokenizer, if it has one)
    /// describe the file's architecture, instead of the detected family's standard ones (as
    /// diffusers' `from_single_file(config=…)`).
    pub config: Option<PathBuf>,
    /// What the UNet predicts, overriding the scheduler config (for SD 2.x single files, which
    /// do not say).
    pub prediction_type: Option<crate::scheduler::PredictionType>,
    /// Another VAE: a diffusers `vae/` folder, or a file (LDM or diffusers key names).
    pub vae: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            vae_dtype: DType::F32,
            variant: None,
            config: None,
            prediction_type: None,
            vae: None,
        }
    }
}

impl LoadOptions {
    /// Weights in `dtype`.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// The VAE in `dtype` (see [`vae_dtype`](Self::vae_dtype)).
    pub fn with_vae_dtype(mut self, dtype: DType) -> Self {
        self.vae_dtype = dtype;
        self
    }

    /// Prefer the weights variant `variant` (e.g. `fp16`).
    pub fn with_variant(mut self, variant: impl Into<String>) -> Self {
        self.variant = Some(variant.into());
        self
    }

    /// Configs for a single file from the diffusers folder `dir`.
    pub fn with_config(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config = Some(dir.into());
        self
    }

    /// Override the prediction type.
    pub fn with_prediction_type(mut self, p: crate::scheduler::PredictionType) -> Self {
        self.prediction_type = Some(p);
        self
    }

    /// Use another VAE (folder or file).
    pub fn with_vae(mut self, path: impl Into<PathBuf>) -> Self {
        self.vae = Some(path.into());
        self
    }
}

/// Where the initial noise comes from.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum NoiseSource {
    /// layret's seeded generator (the same noise on every device).
    Seed(u64),
    /// An injected tensor `[B, 4, H/8, W/8]`.
    Tensor(Tensor<4>),
}

/// A text-to-image request.
#[derive(Debug, Clone)]
pub struct Txt2ImgRequest {
    /// The prompt.
    pub prompt: String,
    /// The negative prompt (the unconditional half of CFG); "" by default.
    pub negative_prompt: String,
    /// Classifier-free guidance scale; CFG is off at ≤ 1, as in diffusers.
    pub guidance: f64,
    /// DDIM steps.
    pub steps: usize,
    /// Image width (a multiple of the VAE factor, 8).
    pub width: usize,
    /// Image height (a multiple of the VAE factor, 8).
    pub height: usize,
    /// Images to make.
    pub num_images: usize,
    /// The initial noise.
    pub noise: NoiseSource,
    /// DDIM η (0 = deterministic); with η > 0 the per-step noise comes from the seed
    /// (`seed + 1 + step`) or, for injected initial noise, from seed `step + 1`.
    pub eta: f64,
    /// The sampler ([`SamplerKind::Ddim`] by default; `Auto` = the model's own config).
    /// Stochastic ones (Euler ancestral) draw their step noise like DDIM with η > 0.
    pub sampler: SamplerKind,
    /// Karras sigmas (DPM++ 2M, Euler, UniPC).
    pub karras: bool,
}

impl Txt2ImgRequest {
    /// A request with diffusers' defaults: 50 steps, guidance 7.5, 512×512, one image, seed 0.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: String::new(),
            guidance: 7.5,
            steps: 50,
            width: 512,
            height: 512,
            num_images: 1,
            noise: NoiseSource::Seed(0),
            eta: 0.0,
            sampler: SamplerKind::Ddim,
            karras: false,
        }
    }
}

/// What [`StableDiffusion::txt2img`] returns.
#[derive(Debug, Clone)]
pub struct Txt2ImgOutput {
    /// The final latents before VAE decoding, `[B, 4, H/8, W/8]`.
    pub latents: Tensor<4>,
    /// The images.
    pub images: Vec<RgbImage>,
}

/// The parts of a [`StableDiffusion`] built by hand (random weights for benches, models
/// assembled in code), for [`StableDiffusion::from_parts`].
#[derive(Debug)]
pub struct ModelParts {
    /// A folder the model is named by (shown in messages).
    pub dir: PathBuf,
    /// The CLIP tokenizer.
    pub tokenizer: ClipTokenizer,
    /// The CLIP text encoder.
    pub text_encoder: ClipTextEncoder,
    /// Its config.
    pub text_config: ClipTextConfig,
    /// The UNet.
    pub unet: UNet2DConditionModel,
    /// Its config.
    pub unet_config: UNetConfig,
    /// The VAE.
    pub vae: AutoencoderKL,
    /// Its config.
    pub vae_config: VaeConfig,
    /// The scheduler settings.
    pub scheduler: SchedulerConfig,
    /// The device everything lives on.
    pub device: Device,
    /// The files the weights were read from (their content goes into
    /// [`StableDiffusion::fingerprint`]); may be empty.
    pub sources: Vec<PathBuf>,
    /// What else tells this model apart from others (e.g. `"random sd15 seeds 1 2 3"` for
    /// random weights), folded into the fingerprint.
    pub label: String,
}

/// A loaded Stable Diffusion model: tokenizer, text encoder, UNet, VAE and scheduler config.
///
/// The parts are read through accessors ([`unet`](Self::unet), [`tokenizer`](Self::tokenizer),
/// …): a model's [`fingerprint`](Self::fingerprint) (the key of every cache) describes exactly
/// these parts, so they change only through methods that keep it true
/// ([`with_personalization`](crate::personalization) and friends build a new model).
pub struct StableDiffusion {
    /// The model folder.
    pub(crate) dir: PathBuf,
    /// The CLIP tokenizer.
    pub(crate) tokenizer: ClipTokenizer,
    /// The CLIP text encoder.
    pub(crate) text_encoder: ClipTextEncoder,
    /// Its config.
    pub(crate) text_config: ClipTextConfig,
    /// The UNet.
    pub(crate) unet: UNet2DConditionModel,
    /// Its config.
    pub(crate) unet_config: UNetConfig,
    /// The VAE.
    pub(crate) vae: AutoencoderKL,
    /// Its config.
    pub(crate) vae_config: VaeConfig,
    /// The scheduler settings (DDIM is built from them).
    pub(crate) scheduler: SchedulerConfig,
    /// The device everything lives on.
    pub(crate) device: Device,
    /// Every file the model was read from, in a fixed order.
    sources: Vec<PathBuf>,
    label: String,
    fingerprint: std::sync::OnceLock<u64>,
}

impl std::fmt::Debug for StableDiffusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableDiffusion")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The load label of a model in `dtype` with its VAE in `vae_dtype` (part of the fingerprint).
fn dtype_label(dtype: DType, vae_dtype: DType) -> String {
    let name = crate::host::dtype_name;
    if vae_dtype == dtype {
        format!("dtype {}", name(dtype))
    } else {
        format!("dtype {}, vae {}", name(dtype), name(vae_dtype))
    }
}

/// Check that `dir` is a diffusers SD folder, naming what is missing.
pub fn check_model_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Err(Error::MissingFile {
            what: "model folder".into(),
            path: dir.to_path_buf(),
        });
    }
    let not = |reason: String| Error::NotADiffusersFolder {
        path: dir.to_path_buf(),
        reason,
    };
    if !dir.join("model_index.json").exists() {
        return Err(not(
            "no model_index.json (a diffusers pipeline folder has one at its root)".into(),
        ));
    }
    for sub in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"] {
        if !dir.join(sub).is_dir() {
            return Err(not(format!("no {sub}/ subfolder")));
        }
    }
    Ok(())
}

impl StableDiffusion {
    /// The folder (or file) the model was read from.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
    /// The CLIP tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }
    /// The CLIP text encoder.
    pub fn text_encoder(&self) -> &ClipTextEncoder {
        &self.text_encoder
    }
    /// The text encoder's config.
    pub fn text_config(&self) -> &ClipTextConfig {
        &self.text_config
    }
    /// The UNet.
    pub fn unet(&self) -> &UNet2DConditionModel {
        &self.unet
    }
    /// The UNet's config.
    pub fn unet_config(&self) -> &UNetConfig {
        &self.unet_config
    }
    /// The VAE.
    pub fn vae(&self) -> &AutoencoderKL {
        &self.vae
    }
    /// The VAE's config.
    pub fn vae_config(&self) -> &VaeConfig {
        &self.vae_config
    }
    /// The scheduler settings (DDIM is built from them).
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler
    }
    /// The device everything lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

impl StableDiffusion {
    /// Load a model: a diffusers-layout folder (`model_index.json`, `unet/`, `vae/`,
    /// `text_encoder/`, `tokenizer/`, `scheduler/`; `.safetensors` or `.bin` weights) or a
    /// single-file checkpoint in the original LDM layout (`.safetensors`, `.ckpt`), with
    /// `options.vae` replacing the VAE.
    pub fn load(path: impl AsRef<Path>, device: &Device, options: &LoadOptions) -> Result<Self> {
        let path = path.as_ref();
        crate::host::check_dtype(device, options.dtype)?;
        crate::host::check_dtype(device, options.vae_dtype)?;
        let mut sd = if path.is_file() {
            Self::load_single_file(path, device, options)?
        } else {
            Self::load_folder(path, device, options)?
        };
        if let Some(vae) = &options.vae {
            let (v, cfg, files) = load_vae(vae, &sd.vae_config, device, options.vae_dtype)?;
            sd.vae = v;
            sd.vae_config = cfg;
            sd.sources.extend(files);
        }
        // The identity of what was loaded, taken now: a file changed later must not change it.
        sd.fingerprint()?;
        Ok(sd)
    }

    fn load_folder(dir: &Path, device: &Device, options: &LoadOptions) -> Result<Self> {
        use crate::model_files::{Component, weights_file};
        let dir = dir.to_path_buf();
        check_model_dir(&dir)?;
        let v = options.variant.as_deref();
        let tokenizer = ClipTokenizer::from_model_dir(&dir)?;
        let (text_encoder, text_config) =
            ClipTextEncoder::from_dir(&dir.join("text_encoder"), device, options.dtype, v)?;
        let (unet, unet_config) =
            UNet2DConditionModel::from_dir(&dir.join("unet"), device, options.dtype, v)?;
        let (vae, vae_config) =
            AutoencoderKL::from_dir(&dir.join("vae"), device, options.vae_dtype, v)?;
        let mut scheduler =
            SchedulerConfig::from_file(&dir.join("scheduler/scheduler_config.json"))?;
        if let Some(p) = options.prediction_type {
            scheduler.prediction_type = p;
        }
        let mut sources = crate::tokenizer::tokenizer_files(&dir);
        for (sub, c) in [
            ("text_encoder", Component::TextEncoder),
            ("unet", Component::Unet),
            ("vae", Component::Vae),
        ] {
            let d = dir.join(sub);
            sources.push(d.join("config.json"));
            sources.push(weights_file(&d, c, v)?);
        }
        sources.push(dir.join("scheduler/scheduler_config.json"));
        if text_config.hidden_size != unet_config.cross_attention_dim {
            return Err(Error::NotADiffusersFolder {
                path: dir,
                reason: format!(
                    "text_encoder hidden_size {} does not match unet cross_attention_dim {}",
                    text_config.hidden_size, unet_config.cross_attention_dim
                ),
            });
        }
        Ok(Self {
            dir,
            tokenizer,
            text_encoder,
            text_config,
            unet,
            unet_config,
            vae,
            vae_config,
            scheduler,
            device: device.clone(),
            sources,
            label: dtype_label(options.dtype, options.vae_dtype),
            fingerprint: Default::default(),
        })
    }

    /// Load a single-file checkpoint (see [`crate::single_file`]).
    fn load_single_file(path: &Path, device: &Device, options: &LoadOptions) -> Result<Self> {
        let file = std::sync::Arc::new(crate::weights::TensorFile::open(path)?);
        let info = crate::single_file::detect(&file)?;
        let cfg = crate::single_file::SingleFileConfigs::new(
            &info,
            options.config.as_deref(),
            options.prediction_type,
        )?;
        let tokenizer = match &options.config {
            Some(d) if d.join("tokenizer").is_dir() => Some(ClipTokenizer::from_model_dir(d)?),
            _ => None,
        };
        let mut sd = Self::load_single_file_with(
            file,
            info,
            cfg,
            tokenizer,
            device,
            (options.dtype, options.vae_dtype),
        )?;
        if let Some(d) = &options.config {
            sd.sources.extend(crate::tokenizer::tokenizer_files(d));
            for f in [
                "unet/config.json",
                "vae/config.json",
                "text_encoder/config.json",
                "scheduler/scheduler_config.json",
            ] {
                sd.sources.push(d.join(f));
            }
        }
        Ok(sd)
    }

    /// A single file read with the architecture of `like` (a DreamBooth fine-tune of it):
    /// its configs and scheduler, the built-in tokenizer.
    pub fn load_single_file_like(path: &Path, like: &StableDiffusion) -> Result<Self> {
        let file = std::sync::Arc::new(crate::weights::TensorFile::open(path)?);
        let info = crate::single_file::detect(&file)?;
        let cfg = crate::single_file::SingleFileConfigs {
            unet: like.unet_config.clone(),
            vae: like.vae_config.clone(),
            text: like.text_config.clone(),
            scheduler: like.scheduler.clone(),
        };
        let dtypes = (like.unet.dtype(), like.vae.dtype());
        Self::load_single_file_with(file, info, cfg, None, &like.device, dtypes)
    }

    fn load_single_file_with(
        file: std::sync::Arc<crate::weights::TensorFile>,
        info: crate::single_file::SingleFileInfo,
        cfg: crate::single_file::SingleFileConfigs,
        tokenizer: Option<ClipTokenizer>,
        device: &Device,
        (dtype, vae_dtype): (DType, DType),
    ) -> Result<Self> {
        use crate::single_file::{ClipMap, Family, OpenClipMap, UnetMap, VaeMap, check_leftovers};
        use crate::weights::{KeyMap, Weights};
        let path = file.path().to_path_buf();
        let path = path.as_path();
        let mismatch = |what: String| Error::NotASingleFile {
            path: path.to_path_buf(),
            reason: what,
        };
        if cfg.unet.cross_attention_dim != info.cross_attention_dim
            || cfg.unet.use_linear_projection != info.linear_projection
        {
            return Err(mismatch(format!(
                "its UNet has cross-attention width {} and {} proj_in, the config {} and {}",
                info.cross_attention_dim,
                if info.linear_projection {
                    "linear"
                } else {
                    "1×1-conv"
                },
                cfg.unet.cross_attention_dim,
                if cfg.unet.use_linear_projection {
                    "linear"
                } else {
                    "1×1-conv"
                },
            )));
        }
        if let Some(blocks) = info.openclip_layers
            && blocks != cfg.text.num_hidden_layers + 1
        {
            return Err(mismatch(format!(
                "its OpenCLIP text tower has {blocks} resblocks, the text encoder config {} layers (SD 2.x uses all but the last: {blocks} − 1)",
                cfg.text.num_hidden_layers
            )));
        }
        let tokenizer = match tokenizer {
            Some(t) => t,
            None => ClipTokenizer::builtin(match info.family {
                Family::Sd1 => "<|endoftext|>",
                Family::Sd2 => "!",
            })?,
        };
        let unet_w = Weights::of(
            file.clone(),
            Some(Box::new(UnetMap::new(&cfg.unet))),
            device,
            dtype,
        );
        let unet = UNet2DConditionModel::load(&unet_w, &cfg.unet)?;
        unet_w.finish(|_| false)?;
        drop(unet_w);
        let vae_w = Weights::of(
            file.clone(),
            Some(Box::new(VaeMap::new(&cfg.vae, "first_stage_model."))),
            device,
            dtype,
        );
        let vae = AutoencoderKL::load(&vae_w, &cfg.vae)?;
        vae_w.finish(|_| false)?;
        drop(vae_w);
        let te_map: Box<dyn KeyMap> = match info.family {
            Family::Sd1 => Box::new(ClipMap),
            Family::Sd2 => Box::new(OpenClipMap {
                layers: cfg.text.num_hidden_layers,
                hidden: cfg.text.hidden_size,
            }),
        };
        let te_w = Weights::of(file.clone(), Some(te_map), device, dtype);
        let text_encoder = ClipTextEncoder::load(&te_w, &cfg.text)?;
        drop(te_w);
        let te_owner: Box<dyn KeyMap> = match info.family {
            Family::Sd1 => Box::new(ClipMap),
            Family::Sd2 => Box::new(OpenClipMap {
                layers: cfg.text.num_hidden_layers,
                hidden: cfg.text.hidden_size,
            }),
        };
        check_leftovers(
            &file,
            &[
                &UnetMap::new(&cfg.unet),
                &VaeMap::new(&cfg.vae, "first_stage_model."),
                te_owner.as_ref(),
            ],
            info.openclip_layers.map(|n| n - 1),
        )?;
        if cfg.text.hidden_size != cfg.unet.cross_attention_dim {
            return Err(mismatch(format!(
                "the text encoder config's width {} does not match the UNet's cross-attention {}",
                cfg.text.hidden_size, cfg.unet.cross_attention_dim
            )));
        }
        Ok(Self {
            dir: path.to_path_buf(),
            tokenizer,
            text_encoder,
            text_config: cfg.text,
            unet,
            unet_config: cfg.unet,
            vae,
            vae_config: cfg.vae,
            scheduler: cfg.scheduler,
            device: device.clone(),
            sources: vec![path.to_path_buf()],
            label: dtype_label(dtype, vae_dtype),
            fingerprint: Default::default(),
        })
    }

    /// A model from parts built in code (see [`ModelParts`]).
    pub fn from_parts(parts: ModelParts) -> Self {
        Self {
            dir: parts.dir,
            tokenizer: parts.tokenizer,
            text_encoder: parts.text_encoder,
            text_config: parts.text_config,
            unet: parts.unet,
            unet_config: parts.unet_config,
            vae: parts.vae,
            vae_config: parts.vae_config,
            scheduler: parts.scheduler,
            device: parts.device,
            sources: parts.sources,
            label: parts.label,
            fingerprint: Default::default(),
        }
    }

    /// This model with another tokenizer, text encoder and UNet (a personalization of it; see
    /// [`PersonalModel::to_model`](crate::personalization::PersonalModel::to_model)).
    pub(crate) fn with_personal_parts(
        &self,
        tokenizer: ClipTokenizer,
        text_encoder: ClipTextEncoder,
        unet: UNet2DConditionModel,
        sources: &[PathBuf],
        label: &str,
        content: u64,
    ) -> Result<StableDiffusion> {
        let mut all = self.sources.clone();
        all.extend(sources.iter().cloned());
        let mut h = crate::fingerprint::Fingerprinter::new();
        h.update_str("layret-personalized-model-v1");
        h.update_u64(self.fingerprint()?);
        h.update_u64(content);
        let fingerprint = std::sync::OnceLock::new();
        let _ = fingerprint.set(h.finish());
        Ok(StableDiffusion {
            dir: self.dir.clone(),
            tokenizer,
            text_encoder,
            text_config: self.text_config.clone(),
            unet,
            unet_config: self.unet_config.clone(),
            vae: self.vae.clone(),
            vae_config: self.vae_config.clone(),
            scheduler: self.scheduler.clone(),
            device: self.device.clone(),
            sources: all,
            label: format!("{} | {label}", self.label),
            fingerprint,
        })
    }

    /// Every file the model was read from (tokenizer, configs, weights), in a fixed order.
    pub fn source_files(&self) -> &[PathBuf] {
        &self.sources
    }

    /// The model's content identity, for cache keys: a [fingerprint](crate::fingerprint) of
    /// every source file's content, the load dtype and the scheduler settings. Computed (by
    /// reading the files once) on the first call, then remembered; retrained weights at the
    /// same path give another value.
    pub fn fingerprint(&self) -> Result<u64> {
        if let Some(f) = self.fingerprint.get() {
            return Ok(*f);
        }
        let mut h = crate::fingerprint::Fingerprinter::new();
        h.update_str("layret-model-v1");
        h.update_str(&self.label);
        h.update_u64(self.scheduler.fingerprint());
        for f in &self.sources {
            h.update_u64(crate::fingerprint::of_file(f)?);
        }
        let v = h.finish();
        Ok(*self.fingerprint.get_or_init(|| v))
    }

    /// Image side / latent side (8 for SD).
    pub fn vae_factor(&self) -> usize {
        self.vae.downsample_factor
    }

    /// The default image size (`unet sample_size × vae factor`, 512 for SD 1.5).
    pub fn default_size(&self) -> usize {
        self.unet_config.sample_size.unwrap_or(64) * self.vae_factor()
    }

    /// The vanilla model's tokenizer, text encoder and UNet, for [`crate::sampling`].
    pub fn denoiser(&self) -> Denoiser<'_> {
        Denoiser::new(
            &self.tokenizer,
            &self.text_encoder,
            &self.unet,
            ModelRole::Vanilla,
        )
    }

    /// `last_hidden_state` of each prompt (tokenized, padded to 77; over-long prompts fail).
    ///
    /// # Shapes
    /// `n` prompts → `[n, 77, hidden]`.
    pub fn encode_prompts(&self, prompts: &[&str]) -> Result<Tensor<3>> {
        self.denoiser().encode(prompts)
    }

    /// The sampler `kind` for `steps` steps on the folder's scheduler config (`eta` for DDIM
    /// only, `karras` for the samplers that have Karras sigmas).
    pub fn sampler(
        &self,
        kind: SamplerKind,
        steps: usize,
        karras: bool,
        eta: f64,
    ) -> Result<Box<dyn Scheduler + Send>> {
        kind.build(&self.scheduler, steps, SamplerOptions { karras, eta })
    }

    /// A DDIM scheduler for `steps` steps and `eta`, from the folder's scheduler config.
    pub fn ddim(&self, steps: usize, eta: f64) -> Result<DdimScheduler> {
        DdimScheduler::new(self.scheduler.clone(), steps, eta)
    }

    /// Check a requested image size and return the latent size `(h, w)`.
    pub fn latent_size(&self, width: usize, height: usize) -> Result<(usize, usize)> {
        let f = self.vae_factor();
        for (name, v) in [("width", width), ("height", height)] {
            if v == 0 || v % f != 0 {
                return Err(Error::invalid(
                    name,
                    format!("{v}; must be a positive multiple of {f}"),
                ));
            }
        }
        Ok((height / f, width / f))
    }

    /// Initial noise `[n, C, h, w]` from `source`, checking an injected tensor's shape.
    pub fn initial_noise(
        &self,
        source: &NoiseSource,
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<Tensor<4>> {
        let c = self.unet.in_channels;
        match source {
            NoiseSource::Seed(seed) => Ok(seeded_noise(*seed, [n, c, h, w], &self.device)),
            NoiseSource::Tensor(t) => {
                if t.dims() != [n, c, h, w] {
                    return Err(Error::Shape {
                        what: "initial noise".into(),
                        expected: format!("[{n}, {c}, {h}, {w}]"),
                        got: t.dims().to_vec(),
                    });
                }
                Ok(t.clone())
            }
        }
    }

    /// Text-to-image with DDIM and classifier-free guidance, as diffusers'
    /// `StableDiffusionPipeline`.
    pub fn txt2img(
        &self,
        req: &Txt2ImgRequest,
        progress: &mut dyn FnMut(StageProgress) -> ControlFlow<()>,
    ) -> Result<Txt2ImgOutput> {
        let latents = self.txt2img_latents(req, &mut DefaultAttention, progress)?;
        let images = self.decode_to_rgb8(latents.clone())?;
        report(
            progress,
            StageProgress {
                stage: "decode",
                step: 1,
                total: 1,
            },
        )?;
        Ok(Txt2ImgOutput { latents, images })
    }

    /// The sampling loop of [`txt2img`](Self::txt2img) with a custom attention processor;
    /// returns the final latents.
    pub fn txt2img_latents(
        &self,
        req: &Txt2ImgRequest,
        processor: &mut dyn AttentionProcessor,
        progress: &mut dyn FnMut(StageProgress) -> ControlFlow<()>,
    ) -> Result<Tensor<4>> {
        if !req.guidance.is_finite() {
            return Err(Error::invalid(
                "guidance",
                format!("{}; must be finite", req.guidance),
            ));
        }
        if req.num_images == 0 {
            return Err(Error::invalid("num_images", "0; must be at least 1"));
        }
        let (h, w) = self.latent_size(req.width, req.height)?;
        let mut sched = self.sampler(req.sampler, req.steps, req.karras, req.eta)?;
        let n = req.num_images;
        let latents = self.initial_noise(&req.noise, n, h, w)? * sched.init_noise_sigma();
        let cfg = req.guidance > 1.0;
        let model = self.denoiser();
        let cond = model.encode(&[req.prompt.as_str()])?;
        let text = if cfg {
            BatchText::repeated(cond, model.encode(&[req.negative_prompt.as_str()])?, n)
        } else {
            BatchText::unguided(cond, n)
        };
        let step_seed = match req.noise {
            NoiseSource::Seed(s) => s,
            NoiseSource::Tensor(_) => 0,
        };
        let batch = SampleBatch::new(
            text,
            BatchLayout::single(Branch::Main, n, cfg),
            req.guidance,
        )
        .with_step_noise(step_seed);
        sample(&model, &batch, sched.as_mut(), latents, processor, progress)
    }

    /// Decode scaled latents (`latents / scaling_factor` goes into the VAE) to images in
    /// about [-1, 1].
    ///
    /// # Shapes
    /// `[B, 4, h, w]` → `[B, 3, 8h, 8w]`.
    pub fn decode(&self, latents: Tensor<4>) -> Result<Tensor<4>> {
        let vae_dtype = self.vae.dtype();
        let images = self.vae.decode(latents / self.vae.scaling_factor)?;
        if vae_dtype != DType::F32 {
            // Half-precision VAEs overflow (SD 1.x's in f16): refuse the image, naming the fix.
            check_finite(&images, "decoded image", 0).map_err(|_| Error::NonFinite {
                what: "decoded image".into(),
                step: 0,
                suggestion: format!(
                    "the VAE overflowed in {}; decode in f32 (`--vae-dtype f32`, the default)",
                    crate::host::dtype_name(vae_dtype)
                ),
            })?;
        }
        Ok(images)
    }

    /// [`decode`](Self::decode) then 8-bit RGB.
    pub fn decode_to_rgb8(&self, latents: Tensor<4>) -> Result<Vec<RgbImage>> {
        let images = self.decode(latents)?;
        check_finite(&images, "decoded image", 0).map_err(|_| Error::NonFinite {
            what: "decoded image".into(),
            step: 0,
            suggestion: "the VAE overflowed; decode in f32 (fp16 VAEs overflow on SD 1.x)".into(),
        })?;
        image_io::to_rgb8(images)
    }

    /// [`decode_to_rgb8`](Self::decode_to_rgb8) as an array `[B, 8h, 8w, 3]` of 8-bit RGB.
    pub fn decode_to_array(&self, latents: Tensor<4>) -> Result<ndarray::Array4<u8>> {
        Ok(crate::array::images_to_array(
            &self.decode_to_rgb8(latents)?,
        ))
    }

    /// Scaled latents of images in [-1, 1]: `VAE.encode(image).mean · scaling_factor`.
    ///
    /// # Shapes
    /// `[B, 3, H, W]` → `[B, 4, H/8, W/8]`.
    pub fn encode_image(&self, image: Tensor<4>) -> Result<Tensor<4>> {
        Ok(self.vae.encode(image)?.mean * self.vae.scaling_factor)
    }

    /// DDIM inversion with the vanilla model (see [`Denoiser::invert`]) over `steps` DDIM
    /// timesteps.
    pub fn invert(
        &self,
        latents: Tensor<4>,
        prompt: &str,
        steps: usize,
        processor: &mut dyn AttentionProcessor,
        progress: &mut dyn FnMut(StageProgress) -> ControlFlow<()>,
    ) -> Result<Vec<(usize, Tensor<4>)>> {
        let sched = self.ddim(steps, 0.0)?;
        self.denoiser()
            .invert(latents, prompt, &sched, processor, progress)
    }
}

/// A VAE from `path`: a diffusers `vae/` folder (its own config), or a file — a full LDM
/// checkpoint (its `first_stage_model.*`), a standalone LDM VAE (`encoder.down.0…`, e.g.
/// `vae-ft-mse-840000-ema-pruned`) or diffusers-named tensors — read with `base_config`
/// (standalone files carry no config; every SD 1.x/2.x VAE shares one architecture). Returns
/// the VAE, its config and the files read.
pub fn load_vae(
    path: &Path,
    base_config: &VaeConfig,
    device: &Device,
    dtype: DType,
) -> Result<(AutoencoderKL, VaeConfig, Vec<PathBuf>)> {
    use crate::single_file::VaeMap;
    use crate::weights::{KeyMap, TensorFile, Weights};
    if path.is_dir() {
        let (vae, cfg) = AutoencoderKL::from_dir(path, device, dtype, None)?;
        let files = vec![
            path.join("config.json"),
            crate::model_files::weights_file(path, crate::model_files::Component::Vae, None)?,
        ];
        return Ok((vae, cfg, files));
    }
    let file = std::sync::Arc::new(TensorFile::open(path)?);
    let map: Option<Box<dyn KeyMap>> = if file
        .keys()
        .iter()
        .any(|k| k.starts_with("first_stage_model."))
    {
        Some(Box::new(VaeMap::new(base_config, "first_stage_model.")))
    } else if file.contains("encoder.down.0.block.0.conv1.weight") {
        Some(Box::new(VaeMap::new(base_config, "")))
    } else if file.contains("encoder.down_blocks.0.resnets.0.conv1.weight") {
        None
    } else {
        return Err(Error::NotASingleFile {
            path: path.to_path_buf(),
            reason: "no VAE tensors (neither LDM `encoder.down.0.block.0…` nor diffusers `encoder.down_blocks.0…` names)".into(),
        });
    };
    let full_checkpoint = map.is_some()
        && file
            .keys()
            .iter()
            .any(|k| k.starts_with("model.diffusion_model."));
    let w = Weights::of(file, map, device, dtype);
    let vae = AutoencoderKL::load(&w, base_config)?;
    if !full_checkpoint {
        // A VAE file holds the VAE only (LDM VAE files also carry `model_ema.*` copies).
        w.finish(|k| k.starts_with("model_ema."))?;
    }
    Ok((vae, base_config.clone(), vec![path.to_path_buf()]))
}
