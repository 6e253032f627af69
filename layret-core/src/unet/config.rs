use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::config_file::read_json;
use crate::error::{Error, Result};

/// An int for every block, or one value per block.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock {
    /// The same value for every block.
    All(usize),
    /// One value per down block (up blocks use it reversed).
    Each(Vec<usize>),
}

impl PerBlock {
    fn expand(&self, n: usize) -> Vec<usize> {
        match self {
            PerBlock::All(v) => vec![*v; n],
            PerBlock::Each(v) => v.clone(),
        }
    }
}

/// The down-block kinds of SD 1.x/2.x.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownBlockType {
    /// ResNets + transformers + downsampler.
    CrossAttn,
    /// ResNets + downsampler.
    Plain,
}

/// The up-block kinds of SD 1.x/2.x.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpBlockType {
    /// ResNets + transformers + upsampler.
    CrossAttn,
    /// ResNets + upsampler.
    Plain,
}

/// `unet/config.json` (diffusers `UNet2DConditionModel`), the SD 1.x/2.x subset.
///
/// Settings outside that subset (class embeddings, other block types, …) are rejected with
/// [`Error::UnsupportedConfig`] naming the key, never silently ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    /// Latent channels in (4).
    #[serde(default = "four")]
    pub in_channels: usize,
    /// Latent channels out (4).
    #[serde(default = "four")]
    pub out_channels: usize,
    /// Channels of each resolution level.
    pub block_out_channels: Vec<usize>,
    /// ResNets per down block (up blocks have one more).
    #[serde(default = "two")]
    pub layers_per_block: usize,
    /// `CrossAttnDownBlock2D` / `DownBlock2D` per level.
    pub down_block_types: Vec<String>,
    /// `UpBlock2D` / `CrossAttnUpBlock2D` per level.
    pub up_block_types: Vec<String>,
    /// Must be `UNetMidBlock2DCrossAttn`.
    #[serde(default = "mid_default")]
    pub mid_block_type: Option<String>,
    /// diffusers' legacy name: the number of *heads* (int or per block) when
    /// `num_attention_heads` is unset.
    #[serde(default = "eight")]
    pub attention_head_dim: PerBlock,
    /// Number of heads (int or per block); overrides `attention_head_dim` when set.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    /// Width of the text embeddings.
    pub cross_attention_dim: usize,
    /// `proj_in`/`proj_out` are Linear (SD 2.x) instead of 1×1 convolutions (SD 1.x).
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Compute attention in f32 (only matters in reduced precision).
    #[serde(default)]
    pub upcast_attention: bool,
    /// GroupNorm groups.
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    /// GroupNorm epsilon of the ResNets and the output norm.
    #[serde(default = "norm_eps")]
    pub norm_eps: f64,
    /// Sinusoidal embedding order: cos first if true.
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the sinusoidal embedding.
    #[serde(default)]
    pub freq_shift: f64,
    /// Default latent size.
    #[serde(default)]
    pub sample_size: Option<usize>,
    /// Transformer blocks per attention (must be 1 for SD 1.x/2.x; an int).
    #[serde(default = "one_value")]
    pub transformer_layers_per_block: Value,
    /// Everything else, checked against the defaults layret supports.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

fn four() -> usize {
    4
}
fn two() -> usize {
    2
}
fn eight() -> PerBlock {
    PerBlock::All(8)
}
fn thirty_two() -> usize {
    32
}
fn norm_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}
fn one_value() -> Value {
    Value::from(1)
}
fn mid_default() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}

/// Settings that must keep diffusers' default for SD 1.x/2.x: (key, accepted values).
const FIXED: &[(&str, &[&str])] = &[
    ("act_fn", &["\"silu\""]),
    ("center_input_sample", &["false"]),
    ("time_embedding_type", &["\"positional\""]),
    ("class_embed_type", &["null"]),
    ("num_class_embeds", &["null"]),
    ("addition_embed_type", &["null"]),
    ("encoder_hid_dim", &["null"]),
    ("encoder_hid_dim_type", &["null"]),
    ("time_cond_proj_dim", &["null"]),
    ("timestep_post_act", &["null"]),
    ("time_embedding_dim", &["null"]),
    ("time_embedding_act_fn", &["null"]),
    ("resnet_time_scale_shift", &["\"default\""]),
    ("resnet_skip_time_act", &["false"]),
    ("resnet_out_scale_factor", &["1", "1.0"]),
    ("mid_block_scale_factor", &["1", "1.0"]),
    ("conv_in_kernel", &["3"]),
    ("conv_out_kernel", &["3"]),
    ("downsample_padding", &["1"]),
    ("only_cross_attention", &["false"]),
    ("dual_cross_attention", &["false"]),
    ("mid_block_only_cross_attention", &["null"]),
    ("cross_attention_norm", &["null"]),
    ("attention_type", &["\"default\""]),
    ("class_embeddings_concat", &["false"]),
    ("projection_class_embeddings_input_dim", &["null"]),
    ("reverse_transformer_layers_per_block", &["null"]),
];

/// Settings that do not change inference.
const IGNORED: &[&str] = &[
    "dropout",
    // Only read when `addition_embed_type` is set, which is rejected above.
    "addition_embed_type_num_heads",
    "addition_time_embed_dim",
];

/// Per-level settings derived from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelPlan {
    /// Output channels of the level.
    pub channels: usize,
    /// Attention heads at this level.
    pub heads: usize,
}

impl UNetConfig {
    /// SD 1.5's UNet.
    pub fn v1_5() -> Self {
        let json = r#"{
            "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                 "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                               "CrossAttnUpBlock2D"],
            "attention_head_dim": 8, "cross_attention_dim": 768, "norm_num_groups": 32,
            "sample_size": 64}"#;
        serde_json::from_str(json).unwrap_or_else(|e| unreachable!("built-in preset: {e}"))
    }

    /// SD 2.1's UNet (768-v: linear projections, per-block heads, upcast attention).
    pub fn v2_1() -> Self {
        let json = r#"{
            "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                 "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                               "CrossAttnUpBlock2D"],
            "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
            "use_linear_projection": true, "upcast_attention": true, "norm_num_groups": 32,
            "sample_size": 96}"#;
        serde_json::from_str(json).unwrap_or_else(|e| unreachable!("built-in preset: {e}"))
    }

    /// Read and validate `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: Self = read_json(path, "UNet config")?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The down-block kinds, validated.
    pub fn down_types(&self) -> Vec<DownBlockType> {
        self.down_block_types
            .iter()
            .map(|t| {
                if t == "CrossAttnDownBlock2D" {
                    DownBlockType::CrossAttn
                } else {
                    DownBlockType::Plain
                }
            })
            .collect()
    }

    /// The up-block kinds, validated.
    pub fn up_types(&self) -> Vec<UpBlockType> {
        self.up_block_types
            .iter()
            .map(|t| {
                if t == "CrossAttnUpBlock2D" {
                    UpBlockType::CrossAttn
                } else {
                    UpBlockType::Plain
                }
            })
            .collect()
    }

    /// The block plan: ResNets per level and which levels attend.
    pub(crate) fn plan(&self) -> super::UNetPlan {
        super::UNetPlan {
            layers_per_block: self.layers_per_block,
            down_attention: self
                .down_types()
                .into_iter()
                .map(|t| t == DownBlockType::CrossAttn)
                .collect(),
            up_attention: self
                .up_types()
                .into_iter()
                .map(|t| t == UpBlockType::CrossAttn)
                .collect(),
        }
    }

    /// Channels and heads of each level, in down-block order.
    pub fn levels(&self) -> Vec<LevelPlan> {
        let n = self.block_out_channels.len();
        let heads = self
            .num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .expand(n);
        self.block_out_channels
            .iter()
            .zip(heads)
            .map(|(&channels, heads)| LevelPlan { channels, heads })
            .collect()
    }

    /// Check every setting; `path` is named in errors.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let file = path.to_path_buf();
        let unsupported = |key: &str, value: String, supported: &str| Error::UnsupportedConfig {
            file: file.clone(),
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
        for (key, v) in [
            ("down_block_types", &self.down_block_types),
            ("up_block_types", &self.up_block_types),
        ] {
            if v.len() != n {
                return Err(unsupported(
                    key,
                    format!("{v:?}"),
                    &format!("needs one entry per block_out_channels ({n})"),
                ));
            }
        }
        for t in &self.down_block_types {
            if t != "CrossAttnDownBlock2D" && t != "DownBlock2D" {
                return Err(unsupported(
                    "down_block_types",
                    format!("{t:?}"),
                    "supported: CrossAttnDownBlock2D, DownBlock2D",
                ));
            }
        }
        for t in &self.up_block_types {
            if t != "CrossAttnUpBlock2D" && t != "UpBlock2D" {
                return Err(unsupported(
                    "up_block_types",
                    format!("{t:?}"),
                    "supported: CrossAttnUpBlock2D, UpBlock2D",
                ));
            }
        }
        if self.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn") {
            return Err(unsupported(
                "mid_block_type",
                format!("{:?}", self.mid_block_type),
                "supported: UNetMidBlock2DCrossAttn",
            ));
        }
        for (key, pb) in [
            ("attention_head_dim", Some(&self.attention_head_dim)),
            ("num_attention_heads", self.num_attention_heads.as_ref()),
        ] {
            if let Some(PerBlock::Each(v)) = pb
                && v.len() != n
            {
                return Err(unsupported(
                    key,
                    format!("{v:?}"),
                    &format!("a list needs one entry per block ({n})"),
                ));
            }
        }
        for (i, level) in self.levels().iter().enumerate() {
            if level.heads == 0 || level.channels % level.heads != 0 {
                return Err(unsupported(
                    if self.num_attention_heads.is_some() {
                        "num_attention_heads"
                    } else {
                        "attention_head_dim"
                    },
                    format!("{} heads at level {i}", level.heads),
                    &format!(
                        "the head count must divide the level's {} channels",
                        level.channels
                    ),
                ));
            }
            if self.norm_num_groups == 0 || level.channels % self.norm_num_groups != 0 {
                return Err(unsupported(
                    "norm_num_groups",
                    self.norm_num_groups.to_string(),
                    &format!(
                        "must divide every level's channels ({} at level {i})",
                        level.channels
                    ),
                ));
            }
        }
        if self.layers_per_block == 0 {
            return Err(unsupported(
                "layers_per_block",
                "0".into(),
                "must be positive",
            ));
        }
        if self.transformer_layers_per_block != 1 {
            return Err(unsupported(
                "transformer_layers_per_block",
                self.transformer_layers_per_block.to_string(),
                "supported: 1 (SD 1.x/2.x)",
            ));
        }
        if !self.block_out_channels[0].is_multiple_of(2) {
            return Err(unsupported(
                "block_out_channels",
                format!("{:?}", self.block_out_channels),
                "the first level's channels (time embedding width) must be even",
            ));
        }
        crate::config_file::check_other_settings(
            path,
            &self.other,
            FIXED,
            IGNORED,
            "unknown UNet setting; layret supports the SD 1.x/2.x UNet2DConditionModel",
        )
    }
}
