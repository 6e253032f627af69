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

/// `text_encoder/config.json`: the fields layret reads. Other fields are ignored.
#[derive(Debug, Clone, Deserialize)]
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
    /// `quick_gelu` or `gelu`.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
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
            hidden_act: "quick_gelu".into(),
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
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }

    /// Read and validate a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: Self = read_json(path, "text encoder config")?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The activation named by `hidden_act`.
    pub fn activation(&self) -> Option<ClipActivation> {
        match self.hidden_act.as_str() {
            "quick_gelu" => Some(ClipActivation::QuickGelu),
            "gelu" => Some(ClipActivation::Gelu),
            _ => None,
        }
    }

    /// Check the values layret relies on; `path` is named in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let unsupported = |key: &str, value: String, supported: &str| Error::UnsupportedConfig {
            file: path.to_path_buf(),
            key: key.into(),
            value,
            supported: supported.into(),
        };
        if self.activation().is_none() {
            return Err(unsupported(
                "hidden_act",
                format!("{:?}", self.hidden_act),
                "supported: \"quick_gelu\", \"gelu\"",
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(unsupported(
                "num_attention_heads",
                self.num_attention_heads.to_string(),
                &format!("must divide hidden_size {}", self.hidden_size),
            ));
        }
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(unsupported(key, "0".into(), "must be positive"));
            }
        }
        Ok(())
    }
}
