use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::config_file::read_json;
use crate::error::{Error, Result};

/// The VAE's configuration (`vae/config.json`, diffusers `AutoencoderKL`), validated: the SD 1.x/2.x
/// subset, every level a `DownEncoderBlock2D`/`UpDecoderBlock2D`. Read it with
/// [`VaeConfig::from_file`] / [`VaeConfig::from_json`] or take the preset [`VaeConfig::sd`].
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    /// Image channels in (3).
    pub in_channels: usize,
    /// Image channels out (3).
    pub out_channels: usize,
    /// Channels per level; the image is downsampled `2^(levels-1)` times.
    pub block_out_channels: Vec<usize>,
    /// ResNets per encoder level (decoder levels have one more).
    pub layers_per_block: usize,
    /// Latent channels (4).
    pub latent_channels: usize,
    /// GroupNorm groups.
    pub norm_num_groups: usize,
    /// Latents are `scaling_factor ×` the VAE's mean (0.18215 for SD 1.x/2.x).
    pub scaling_factor: f64,
    /// Default image size.
    pub sample_size: Option<usize>,
}

/// The file as written, unvalidated.
#[derive(Debug, Deserialize)]
struct RawVaeConfig {
    #[serde(default = "three")]
    in_channels: usize,
    #[serde(default = "three")]
    out_channels: usize,
    block_out_channels: Vec<usize>,
    down_block_types: Vec<String>,
    up_block_types: Vec<String>,
    #[serde(default = "one")]
    layers_per_block: usize,
    #[serde(default = "four")]
    latent_channels: usize,
    #[serde(default = "thirty_two")]
    norm_num_groups: usize,
    #[serde(default = "sd_scale")]
    scaling_factor: f64,
    #[serde(default)]
    sample_size: Option<usize>,
    /// Everything else, checked against what layret supports.
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
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
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            sample_size: Some(512),
        }
    }

    /// Read and validate `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw: RawVaeConfig = read_json(path, "VAE config")?;
        Self::from_raw(raw, path)
    }

    /// Parse and validate config JSON text (`path` is named in errors).
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: RawVaeConfig = serde_json::from_str(text).map_err(|e| Error::Config {
            file: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_raw(raw, path)
    }

    /// How many times the image is downsampled to the latent (8 for SD).
    pub fn downsample_factor(&self) -> usize {
        1 << (self.block_out_channels.len().saturating_sub(1))
    }

    /// Check every setting; `path` is named in errors.
    fn from_raw(raw: RawVaeConfig, path: &Path) -> Result<Self> {
        let unsupported = |key: &str, value: String, supported: &str| Error::UnsupportedConfig {
            file: path.to_path_buf(),
            key: key.into(),
            value,
            supported: supported.into(),
        };
        let n = raw.block_out_channels.len();
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
                &raw.down_block_types,
                "DownEncoderBlock2D",
            ),
            ("up_block_types", &raw.up_block_types, "UpDecoderBlock2D"),
        ] {
            if v.len() != n || v.iter().any(|t| t != want) {
                return Err(unsupported(
                    key,
                    format!("{v:?}"),
                    &format!("supported: {n} × {want}"),
                ));
            }
        }
        for &c in &raw.block_out_channels {
            if raw.norm_num_groups == 0 || c % raw.norm_num_groups != 0 {
                return Err(unsupported(
                    "norm_num_groups",
                    raw.norm_num_groups.to_string(),
                    &format!("must divide every level's channels ({c})"),
                ));
            }
        }
        if raw.layers_per_block == 0 || raw.latent_channels == 0 {
            return Err(unsupported(
                "layers_per_block/latent_channels",
                format!("{}/{}", raw.layers_per_block, raw.latent_channels),
                "must be positive",
            ));
        }
        if !(raw.scaling_factor.is_finite() && raw.scaling_factor > 0.0) {
            return Err(unsupported(
                "scaling_factor",
                raw.scaling_factor.to_string(),
                "must be > 0",
            ));
        }
        crate::config_file::check_other_settings(
            path,
            &raw.other,
            FIXED,
            IGNORED,
            "unknown AutoencoderKL setting",
        )?;
        Ok(Self {
            in_channels: raw.in_channels,
            out_channels: raw.out_channels,
            block_out_channels: raw.block_out_channels,
            layers_per_block: raw.layers_per_block,
            latent_channels: raw.latent_channels,
            norm_num_groups: raw.norm_num_groups,
            scaling_factor: raw.scaling_factor,
            sample_size: raw.sample_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `vae/config.json` of `stable-diffusion-v1-5/stable-diffusion-v1-5`, as published.
    const SD15: &str = r#"{
      "_class_name": "AutoencoderKL", "_diffusers_version": "0.6.0", "act_fn": "silu",
      "block_out_channels": [128, 256, 512, 512],
      "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
      "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
      "out_channels": 3, "sample_size": 512,
      "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
    }"#;

    #[test]
    fn preset_is_the_published_config() {
        let cfg = VaeConfig::from_json(SD15, Path::new("vae/config.json")).unwrap();
        assert_eq!(cfg, VaeConfig::sd());
        assert_eq!(cfg.downsample_factor(), 8);
    }

    #[test]
    fn unsupported_settings_name_their_key() {
        let p = Path::new("vae/config.json");
        for (text, key) in [
            (
                SD15.replace("\"act_fn\": \"silu\"", "\"act_fn\": \"gelu\""),
                "act_fn",
            ),
            (
                SD15.replacen("\"UpDecoderBlock2D\"", "\"AttnUpDecoderBlock2D\"", 1),
                "up_block_types",
            ),
            (
                SD15.replace("\"norm_num_groups\": 32", "\"norm_num_groups\": 48"),
                "norm_num_groups",
            ),
        ] {
            match VaeConfig::from_json(&text, p) {
                Err(Error::UnsupportedConfig { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: expected UnsupportedConfig, got {other:?}"),
            }
        }
    }
}
