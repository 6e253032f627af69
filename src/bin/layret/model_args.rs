//! The model flags every subcommand shares: which model, VAE, configs, device and dtype.

use std::path::PathBuf;

use layret::burn::tensor::Device;
use layret::core::scheduler::PredictionType;
use layret::core::stable_diffusion::{LoadOptions, StableDiffusion};
use layret::device::{parse_device, parse_dtype};
use layret::{Error, Result};

/// What the UNet predicts (`--prediction-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Prediction {
    /// The noise ε (SD 1.x, SD 2.x base 512 px).
    Epsilon,
    /// The velocity v (SD 2.x 768 px).
    #[value(name = "v_prediction", alias = "v")]
    VPrediction,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// The base model: a diffusers folder, a single-file checkpoint (.safetensors/.ckpt in
    /// the original LDM layout, SD 1.x or 2.x, detected from its tensors), or a Hugging Face
    /// repo id in the local cache.
    #[arg(long)]
    pub model: String,
    /// Use another VAE: a diffusers vae/ folder or a file (e.g. vae-ft-mse-840000-ema-pruned.safetensors).
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// For a single file of a non-standard architecture: a diffusers folder whose configs
    /// (and tokenizer) describe it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// What the UNet predicts, overriding the model's scheduler config. SD 2.x single files
    /// do not say; layret assumes v_prediction (the 768 px 2.0/2.1 models) unless the file
    /// records the 2.x-base step count.
    #[arg(long, value_enum)]
    pub prediction_type: Option<Prediction>,
    /// Prefer `*.<variant>.safetensors` weights in a folder, e.g. fp16.
    #[arg(long)]
    pub variant: Option<String>,
    /// cpu, wgpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Dtype of the UNet and text encoder (weights and compute): f32, f16 or bf16. bf16 on
    /// CPUs with AVX512-BF16: ~1.35× faster than f32 and half the memory; latents, norms and
    /// softmax stay f32 (docs/precision.md).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Dtype of the VAE: f32 (the default: SD 1.x's VAE overflows in f16), f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub vae_dtype: String,
}

impl ModelArgs {
    /// The device asked for.
    pub fn device(&self) -> Result<Device> {
        parse_device(&self.device)
    }

    /// The load options the flags describe.
    pub fn options(&self) -> Result<LoadOptions> {
        let mut o = LoadOptions::default()
            .with_dtype(parse_dtype(&self.dtype)?)
            .with_vae_dtype(parse_dtype(&self.vae_dtype)?);
        if let Some(v) = &self.variant {
            o = o.with_variant(v.clone());
        }
        if let Some(c) = &self.config {
            o = o.with_config(c.clone());
        }
        if let Some(v) = &self.vae {
            o = o.with_vae(v.clone());
        }
        if let Some(p) = self.prediction_type {
            o = o.with_prediction_type(match p {
                Prediction::Epsilon => PredictionType::Epsilon,
                Prediction::VPrediction => PredictionType::VPrediction,
            });
        }
        Ok(o)
    }

    /// Resolve `--model` (folder, file or cached repo id) and load it.
    pub fn load(&self, device: &Device) -> Result<(PathBuf, StableDiffusion)> {
        let path = layret::model_path::resolve_model(&self.model)?;
        if self.config.is_some() && !path.is_file() {
            return Err(Error::invalid(
                "config",
                "--config describes a single-file checkpoint; --model is a folder (which has its own configs)",
            ));
        }
        let sd = StableDiffusion::load(&path, device, &self.options()?)?;
        Ok((path, sd))
    }
}
