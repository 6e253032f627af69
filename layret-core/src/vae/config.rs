use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::config_file::read_json;
use crate::error::{Error, Result};

/// `vae/config.json` (diffusers `AutoencoderKL`), the SD 1.x/2.x subset.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    /// Image channels in (3).
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Image channels out (3).
    #[serde(default = "three")]
    pub out_channels: usize,
    /// Channels per level; the image is downsampled `2^(levels-1)` times.
    pub block_out_channels: Vec<usize>,
    /// `DownEncoderBlock2D` per level.
    pub down_block_types: Vec<String>,
    /// `UpDecoderBlock2D` per level.
    pub up_block_types: Vec<String>,
    /// ResNets per encoder level (decoder levels have one more).
    #[serde(default = "one")]
    pub layers_per_block: usize,
    /// Latent channels (4).
    #[serde(default = "four")]
    pub latent_channels: usize,
    /// GroupNorm groups.
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    /// Latents are `scaling_factor ×` the VAE's mean (0.18215 for SD 1.x/2.x).
    #[serde(default = "sd_scale")]
    pub scaling_factor: f64,
    /// Default image size.
    #[serde(default)]
    pub sample_size: Option<usize>,
    /// Everything else, checked against what layret supports.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

fn three() -> usize {
    3
}
fn one() -> usize {
    1
}
fn four() -> usize {
    4
}
fn thirty_two() -> usize {
    32
}
fn sd_scale() -> f64 {
    0.18215
}

const FIXED: &[(&str, &[&str])] = &[
    ("act_fn", &["\"silu\""]),
    ("shift_factor", &["null"]),
    ("latents_mean", &["null"]),
    ("latents_std", &["null"]),
    ("use_quant_conv", &["true"]),
    ("use_post_quant_conv", &["true"]),
    ("mid_block_add_attention", &["true"]),
];
/// Settings that do not change fp32 inference.
const IGNORED: &[&str] = &["force_upcast"];

impl VaeConfig {
    /// The SD 1.x/2.x VAE.
    pub fn sd() -> Self {
        let json = r#"{"block_out_channels": [128, 256, 512, 512],
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
            "layers_per_block": 2, "sample_size": 512}"#;
        serde_json::from_str(json).unwrap_or_else(|e| unreachable!("built-in preset: {e}"))
    }

    /// Read and validate `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: Self = read_json(path, "VAE config")?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// How many times the image is downsampled to the latent (8 for SD).
    pub fn downsample_factor(&self) -> usize {
        1 << (self.block_out_channels.len().saturating_sub(1))
    }

    /// Check every setting; `path` is named in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let unsupported = |key: &str, value: String, supported: &str| Error::UnsupportedConfig {
            file: path.to_path_buf(),
            key: key.into(),
            value,
            supported: supported.into(),
        };
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err(unsupported(
                "block_out_channels",
                "[]".into(),
                "needs at least one level",
            ));
        }
        for (key, v, want) in [
            (
                "down_block_types",
                &self.down_block_types,
                "DownEncoderBlock2D",
            ),
            ("up_block_types", &self.up_block_types, "UpDecoderBlock2D"),
        ] {
            if v.len() != n || v.iter().any(|t| t != want) {
                return Err(unsupported(
                    key,
                    format!("{v:?}"),
                    &format!("supported: {n} × {want}"),
                ));
            }
        }
        for &c in &self.block_out_channels {
            if self.norm_num_groups == 0 || c % self.norm_num_groups != 0 {
                return Err(unsupported(
                    "norm_num_groups",
                    self.norm_num_groups.to_string(),
                    &format!("must divide every level's channels ({c})"),
                ));
            }
        }
        if self.layers_per_block == 0 || self.latent_channels == 0 {
            return Err(unsupported(
                "layers_per_block/latent_channels",
                format!("{}/{}", self.layers_per_block, self.latent_channels),
                "must be positive",
            ));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(unsupported(
                "scaling_factor",
                self.scaling_factor.to_string(),
                "must be > 0",
            ));
        }
        crate::config_file::check_other_settings(
            path,
            &self.other,
            FIXED,
            IGNORED,
            "unknown AutoencoderKL setting",
        )
    }
}
