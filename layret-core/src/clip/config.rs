use std::path::Path;

use serde::Deserialize;

use crate::config_file::read_json;
use crate::error::{Error, Result};

/// The MLP activation of the CLIP layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `x·σ(1.702x)` (OpenAI CLIP, SD 1.x).
    QuickGelu,
    /// Exact erf GELU (OpenCLIP, SD 2.x).
    Gelu,
}

/// The text encoder's configuration (`text_encoder/config.json`), validated: every value here is one
/// layret can build. Read it with [`ClipTextConfig::from_file`] / [`ClipTextConfig::from_json`] or
/// take a preset ([`ClipTextConfig::v1_5`], [`ClipTextConfig::v2_1`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipTextConfig {
    /// Vocabulary size (49408 for CLIP).
    pub vocab_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads; divides `hidden_size`.
    pub num_attention_heads: usize,
    /// Number of position embeddings (77).
    pub max_position_embeddings: usize,
    /// The MLP activation (`hidden_act` in the file).
    pub hidden_act: ClipActivation,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

/// The file as written: the fields layret reads, unvalidated. Other fields are ignored.
#[derive(Debug, Deserialize)]
struct RawClipTextConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
}

fn default_act() -> String {
    "quick_gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}

impl ClipTextConfig {
    /// SD 1.5's text encoder (OpenAI CLIP ViT-L/14).
    pub fn v1_5() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }

    /// SD 2.1's text encoder (OpenCLIP ViT-H/14, penultimate layer: 23 layers).
    pub fn v2_1() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 23,
            num_attention_heads: 16,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::Gelu,
            layer_norm_eps: 1e-5,
        }
    }

    /// Read and validate a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw: RawClipTextConfig = read_json(path, "text encoder config")?;
        Self::from_raw(raw, path)
    }

    /// Parse and validate config JSON text (`path` is named in errors).
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: RawClipTextConfig = serde_json::from_str(text).map_err(|e| Error::Config {
            file: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_raw(raw, path)
    }

    fn from_raw(raw: RawClipTextConfig, path: &Path) -> Result<Self> {
        let unsupported = |key: &str, value: String, supported: &str| Error::UnsupportedConfig {
            file: path.to_path_buf(),
            key: key.into(),
            value,
            supported: supported.into(),
        };
        let hidden_act = match raw.hidden_act.as_str() {
            "quick_gelu" => ClipActivation::QuickGelu,
            "gelu" => ClipActivation::Gelu,
            other => {
                return Err(unsupported(
                    "hidden_act",
                    format!("{other:?}"),
                    "supported: \"quick_gelu\", \"gelu\"",
                ));
            }
        };
        if raw.num_attention_heads == 0 || !raw.hidden_size.is_multiple_of(raw.num_attention_heads)
        {
            return Err(unsupported(
                "num_attention_heads",
                raw.num_attention_heads.to_string(),
                &format!("must divide hidden_size {}", raw.hidden_size),
            ));
        }
        for (key, v) in [
            ("vocab_size", raw.vocab_size),
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("max_position_embeddings", raw.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(unsupported(key, "0".into(), "must be positive"));
            }
        }
        Ok(Self {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            max_position_embeddings: raw.max_position_embeddings,
            hidden_act,
            layer_norm_eps: raw.layer_norm_eps,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text_encoder/config.json` of `stable-diffusion-v1-5/stable-diffusion-v1-5`, as published.
    const SD15: &str = r#"{
      "_name_or_path": "openai/clip-vit-large-patch14", "architectures": ["CLIPTextModel"],
      "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2,
      "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0,
      "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
      "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 12,
      "num_hidden_layers": 12, "pad_token_id": 1, "projection_dim": 768, "torch_dtype": "float32",
      "transformers_version": "4.22.0.dev0", "vocab_size": 49408
    }"#;

    #[test]
    fn preset_is_the_published_config() {
        let p = Path::new("text_encoder/config.json");
        assert_eq!(
            ClipTextConfig::from_json(SD15, p).unwrap(),
            ClipTextConfig::v1_5()
        );
        let gelu = SD15.replace("quick_gelu", "gelu");
        assert_eq!(
            ClipTextConfig::from_json(&gelu, p).unwrap().hidden_act,
            ClipActivation::Gelu
        );
    }

    #[test]
    fn unsupported_settings_name_their_key() {
        let p = Path::new("text_encoder/config.json");
        for (text, key) in [
            (SD15.replace("quick_gelu", "relu"), "hidden_act"),
            (
                SD15.replace("\"num_attention_heads\": 12", "\"num_attention_heads\": 7"),
                "num_attention_heads",
            ),
            (
                SD15.replace("\"vocab_size\": 49408", "\"vocab_size\": 0"),
                "vocab_size",
            ),
        ] {
            match ClipTextConfig::from_json(&text, p) {
                Err(Error::UnsupportedConfig { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: expected UnsupportedConfig, got {other:?}"),
            }
        }
    }
}
