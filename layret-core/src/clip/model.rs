//! transformers' `CLIPModel` for evaluation: the text and vision towers with their projections
//! (`get_text_features`, `get_image_features`), its tokenizer and image processor, from a
//! Hugging Face folder (`config.json`, `model.safetensors`, `preprocessor_config.json`,
//! `vocab.json` + `merges.txt`).

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use image::RgbImage;
use serde_json::Value;

use super::config::ClipTextConfig;
use super::text_encoder::ClipTextEncoder;
use super::vision::{ClipVisionConfig, ClipVisionTransformer};
use crate::error::{Error, Result};
use crate::image_processor::ImageProcessor;
use crate::model_files::{Component, transformers_config, weights_file};
use crate::nn::Linear;
use crate::tokenizer::{ClipTokenizer, Truncation};
use crate::weights::Weights;

/// A CLIP model (ViT-B/32, ViT-L/14, …) ready to embed images and prompts.
pub struct ClipModel {
    /// The text tower.
    pub text: ClipTextEncoder,
    /// The vision tower.
    pub vision: ClipVisionTransformer,
    /// `text_projection` (no bias).
    pub text_projection: Linear,
    /// `visual_projection` (no bias).
    pub visual_projection: Linear,
    /// The tokenizer of the folder.
    pub tokenizer: ClipTokenizer,
    /// The image processor of the folder.
    pub processor: ImageProcessor,
    /// `text_config.eos_token_id`: 2 (the legacy value of OpenAI's checkpoints) pools at the
    /// largest token id, as transformers does; another value at its first occurrence.
    eos_token_id: u32,
    device: Device,
}

impl ClipModel {
    /// Load a CLIP folder (`model_type` `clip`).
    pub fn from_dir(dir: &Path, device: &Device) -> Result<Self> {
        let (cfg_path, cfg) = transformers_config(dir, "clip", "a CLIP model")?;
        let sub = |key: &str| -> Result<String> {
            cfg.get(key)
                .map(Value::to_string)
                .ok_or_else(|| Error::Config {
                    file: cfg_path.clone(),
                    message: format!("no `{key}`"),
                })
        };
        let text_cfg = ClipTextConfig::from_json(&sub("text_config")?, &cfg_path)?;
        let vision_cfg: ClipVisionConfig =
            serde_json::from_str(&sub("vision_config")?).map_err(|e| Error::Config {
                file: cfg_path.clone(),
                message: format!("vision_config: {e}"),
            })?;
        let projection = cfg["projection_dim"].as_u64().unwrap_or(512) as usize;
        let eos_token_id = cfg["text_config"]["eos_token_id"].as_u64().unwrap_or(2) as u32;
        let weights = Weights::open(weights_file(dir, Component::Transformers, None)?, device)?;
        let text = ClipTextEncoder::load_view(&weights.pp("text_model"), &text_cfg)?;
        let vision = ClipVisionTransformer::load(&weights.pp("vision_model"), &vision_cfg)?;
        let text_projection = Linear::load(
            &weights.pp("text_projection"),
            text_cfg.hidden_size,
            projection,
            false,
        )?;
        let visual_projection = Linear::load(
            &weights.pp("visual_projection"),
            vision_cfg.hidden_size,
            projection,
            false,
        )?;
        weights.finish(|k| k.ends_with("position_ids") || k == "logit_scale")?;
        Ok(Self {
            text,
            vision,
            text_projection,
            visual_projection,
            tokenizer: ClipTokenizer::from_dir(dir)?,
            processor: ImageProcessor::from_file(&dir.join("preprocessor_config.json"))?,
            eos_token_id,
            device: device.clone(),
        })
    }

    /// `get_image_features` of preprocessed images.
    ///
    /// # Shapes
    /// `[B, 3, S, S]` → `[B, projection]`.
    pub fn image_features_of(&self, pixel_values: Tensor<4>) -> Result<Tensor<2>> {
        let (_, pooled) = self.vision.forward(pixel_values)?;
        Ok(self
            .visual_projection
            .forward(pooled.unsqueeze::<3>())
            .squeeze_dim(0))
    }

    /// `get_image_features` of images, through the folder's image processor.
    ///
    /// # Shapes
    /// `N` images → `[N, projection]`.
    pub fn image_features(&self, images: &[RgbImage]) -> Result<Tensor<2>> {
        self.image_features_of(self.processor.batch(images, &self.device)?)
    }

    /// The token ids of `prompts`, padded to the model's length (longer prompts truncated, as
    /// the evaluation protocol's `truncation=True`).
    pub fn tokenize(&self, prompts: &[&str]) -> Result<Vec<Vec<u32>>> {
        prompts
            .iter()
            .map(|p| self.tokenizer.encode_with(p, Truncation::Truncate))
            .collect()
    }

    /// `get_text_features` of token ids: the final hidden state at the end-of-text token,
    /// projected.
    ///
    /// # Shapes
    /// `B` rows of `L` ids → `[B, projection]`.
    pub fn text_features_of(&self, ids: &[Vec<u32>]) -> Result<Tensor<2>> {
        let hidden = self.text.encode(ids, 0)?;
        let [b, _, h] = hidden.dims();
        let positions: Vec<i64> = ids
            .iter()
            .map(|row| {
                let pos = if self.eos_token_id == 2 {
                    let max = row.iter().copied().max().unwrap_or(0);
                    row.iter().position(|&t| t == max)
                } else {
                    row.iter().position(|&t| t == self.eos_token_id)
                };
                pos.unwrap_or(row.len().saturating_sub(1)) as i64
            })
            .collect();
        let index: Tensor<3, Int> =
            Tensor::<1, Int>::from_data(TensorData::new(positions, [b]), &self.device)
                .reshape([b, 1, 1])
                .repeat_dim(2, h);
        let pooled = hidden.gather(1, index).reshape([b, h]);
        Ok(self
            .text_projection
            .forward(pooled.unsqueeze::<3>())
            .squeeze_dim(0))
    }

    /// `get_text_features` of prompts.
    ///
    /// # Shapes
    /// `B` prompts → `[B, projection]`.
    pub fn text_features(&self, prompts: &[&str]) -> Result<Tensor<2>> {
        self.text_features_of(&self.tokenize(prompts)?)
    }
}
