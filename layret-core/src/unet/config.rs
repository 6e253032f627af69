use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::config_file::read_json;
use crate::error::{Error, Result};

/// An int for every block, or one value per block (as the file has it).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
enum PerBlock {
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

/// What a down or up block of SD 1.x/2.x holds besides its ResNets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Transformers after each ResNet (`CrossAttnDownBlock2D`, `CrossAttnUpBlock2D`).
    CrossAttention,
    /// ResNets only (`DownBlock2D`, `UpBlock2D`).
    Plain,
}

/// `unet/config.json` (diffusers `UNet2DConditionModel`), the SD 1.x/2.x subset, parsed into
/// types: block kinds, heads per level. Read with [`from_file`](Self::from_file), which
/// rejects settings outside that subset (class embeddings, other block types, …) with
/// [`Error::UnsupportedConfig`] naming the key — never silently ignored — or start from a
/// preset ([`v1_5`](Self::v1_5), [`v2_1`](Self::v2_1)).
#[derive(Debug, Clone, PartialEq)]
pub struct UNetConfig {
    /// Latent channels in (4).
    pub in_channels: usize,
    /// Latent channels out (4).
    pub out_channels: usize,
    /// Channels of each resolution level.
    pub block_out_channels: Vec<usize>,
    /// ResNets per down block (up blocks have one more).
    pub layers_per_block: usize,
    /// Down block kinds, one per level.
    pub down_blocks: Vec<BlockKind>,
    /// Up block kinds, one per level (deepest first).
    pub up_blocks: Vec<BlockKind>,
    /// Attention heads per level, in down-block order (diffusers' `num_attention_heads`, or
    /// its legacy name `attention_head_dim`).
    pub heads: Vec<usize>,
    /// Width of the text embeddings.
    pub cross_attention_dim: usize,
    /// `proj_in`/`proj_out` are Linear (SD 2.x) instead of 1×1 convolutions (SD 1.x).
    pub use_linear_projection: bool,
    /// Attention scores in f32 when the model runs in half precision (SD 2.1 needs it in
    /// f16; see [`AttentionSite::upcast`](crate::processor::AttentionSite::upcast)).
    pub upcast_attention: bool,
    /// GroupNorm groups.
    pub norm_num_groups: usize,
    /// GroupNorm epsilon of the ResNets and the output norm.
    pub norm_eps: f64,
    /// Sinusoidal embedding order: cos first if true.
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the sinusoidal embedding.
    pub freq_shift: f64,
    /// Default latent size.
    pub sample_size: Option<usize>,
}

/// The file as diffusers writes it, before validation.
#[derive(Debug, Clone, Deserialize)]
struct RawUNetConfig {
    #[serde(default = "four")]
    in_channels: usize,
    #[serde(default = "four")]
    out_channels: usize,
    block_out_channels: Vec<usize>,
    #[serde(default = "two")]
    layers_per_block: usize,
    down_block_types: Vec<String>,
    up_block_types: Vec<String>,
    #[serde(default = "mid_default")]
    mid_block_type: Option<String>,
    #[serde(default = "eight")]
    attention_head_dim: PerBlock,
    #[serde(default)]
    num_attention_heads: Option<PerBlock>,
    cross_attention_dim: usize,
    #[serde(default)]
    use_linear_projection: bool,
    #[serde(default)]
    upcast_attention: bool,
    #[serde(default = "thirty_two")]
    norm_num_groups: usize,
    #[serde(default = "norm_eps")]
    norm_eps: f64,
    #[serde(default = "yes")]
    flip_sin_to_cos: bool,
    #[serde(default)]
    freq_shift: f64,
    #[serde(default)]
    sample_size: Option<usize>,
    #[serde(default = "one_block")]
    transformer_layers_per_block: PerBlock,
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

fn one_block() -> PerBlock {
    PerBlock::All(1)
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
    /// SD 1.5's UNet (`stable-diffusion-v1-5/stable-diffusion-v1-5`, `unet/config.json`).
    pub fn v1_5() -> Self {
        use BlockKind::{CrossAttention as X, Plain as P};
        Self {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: 2,
            down_blocks: vec![X, X, X, P],
            up_blocks: vec![P, X, X, X],
            heads: vec![8; 4],
            cross_attention_dim: 768,
            use_linear_projection: false,
            upcast_attention: false,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            sample_size: Some(64),
        }
    }

    /// SD 2.1's UNet (`stabilityai/stable-diffusion-2-1`, 768-v, `unet/config.json`: linear
    /// projections, heads 5/10/20/20, upcast attention).
    pub fn v2_1() -> Self {
        Self {
            heads: vec![5, 10, 20, 20],
            cross_attention_dim: 1024,
            use_linear_projection: true,
            upcast_attention: true,
            sample_size: Some(96),
            ..Self::v1_5()
        }
    }

    /// Read and validate `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw: RawUNetConfig = read_json(path, "UNet config")?;
        Self::from_raw(raw, path)
    }

    /// Parse a config from JSON text (`path` is named in errors).
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: RawUNetConfig = serde_json::from_str(text).map_err(|e| Error::Config {
            file: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_raw(raw, path)
    }

    /// The block plan: ResNets per level and which levels attend.
    pub(crate) fn plan(&self) -> super::UNetPlan {
        super::UNetPlan {
            layers_per_block: self.layers_per_block,
            down_attention: self
                .down_blocks
                .iter()
                .map(|&t| t == BlockKind::CrossAttention)
                .collect(),
            up_attention: self
                .up_blocks
                .iter()
                .map(|&t| t == BlockKind::CrossAttention)
                .collect(),
        }
    }

    /// Channels and heads of each level, in down-block order.
    pub fn levels(&self) -> Vec<LevelPlan> {
        self.block_out_channels
            .iter()
            .zip(&self.heads)
            .map(|(&channels, &heads)| LevelPlan { channels, heads })
            .collect()
    }

    /// Check every setting of `raw` and type it; `path` is named in errors.
    fn from_raw(raw: RawUNetConfig, path: &Path) -> Result<Self> {
        let file = path.to_path_buf();
        let unsupported = |key: &str, value: String, supported: &str| Error::UnsupportedConfig {
            file: file.clone(),
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
        for (key, v) in [
            ("down_block_types", &raw.down_block_types),
            ("up_block_types", &raw.up_block_types),
        ] {
            if v.len() != n {
                return Err(unsupported(
                    key,
                    format!("{v:?}"),
                    &format!("needs one entry per block_out_channels ({n})"),
                ));
            }
        }
        let kinds = |key: &str, v: &[String], cross: &str, plain: &str| {
            v.iter()
                .map(|t| match t.as_str() {
                    t if t == cross => Ok(BlockKind::CrossAttention),
                    t if t == plain => Ok(BlockKind::Plain),
                    _ => Err(unsupported(
                        key,
                        format!("{t:?}"),
                        &format!("supported: {cross}, {plain}"),
                    )),
                })
                .collect::<Result<Vec<_>>>()
        };
        let down_blocks = kinds(
            "down_block_types",
            &raw.down_block_types,
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        )?;
        let up_blocks = kinds(
            "up_block_types",
            &raw.up_block_types,
            "CrossAttnUpBlock2D",
            "UpBlock2D",
        )?;
        if raw.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn") {
            return Err(unsupported(
                "mid_block_type",
                format!("{:?}", raw.mid_block_type),
                "supported: UNetMidBlock2DCrossAttn",
            ));
        }
        for (key, pb) in [
            ("attention_head_dim", Some(&raw.attention_head_dim)),
            ("num_attention_heads", raw.num_attention_heads.as_ref()),
            (
                "transformer_layers_per_block",
                Some(&raw.transformer_layers_per_block),
            ),
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
        let heads_key = if raw.num_attention_heads.is_some() {
            "num_attention_heads"
        } else {
            "attention_head_dim"
        };
        let heads = raw
            .num_attention_heads
            .as_ref()
            .unwrap_or(&raw.attention_head_dim)
            .expand(n);
        for (i, (&channels, &h)) in raw.block_out_channels.iter().zip(&heads).enumerate() {
            if h == 0 || channels % h != 0 {
                return Err(unsupported(
                    heads_key,
                    format!("{h} heads at level {i}"),
                    &format!("the head count must divide the level's {channels} channels"),
                ));
            }
            if raw.norm_num_groups == 0 || channels % raw.norm_num_groups != 0 {
                return Err(unsupported(
                    "norm_num_groups",
                    raw.norm_num_groups.to_string(),
                    &format!("must divide every level's channels ({channels} at level {i})"),
                ));
            }
        }
        if raw.layers_per_block == 0 {
            return Err(unsupported(
                "layers_per_block",
                "0".into(),
                "must be positive",
            ));
        }
        if raw
            .transformer_layers_per_block
            .expand(n)
            .iter()
            .any(|&t| t != 1)
        {
            return Err(unsupported(
                "transformer_layers_per_block",
                format!("{:?}", raw.transformer_layers_per_block),
                "supported: 1 (SD 1.x/2.x)",
            ));
        }
        if !raw.block_out_channels[0].is_multiple_of(2) {
            return Err(unsupported(
                "block_out_channels",
                format!("{:?}", raw.block_out_channels),
                "the first level's channels (time embedding width) must be even",
            ));
        }
        crate::config_file::check_other_settings(
            path,
            &raw.other,
            FIXED,
            IGNORED,
            "unknown UNet setting; layret supports the SD 1.x/2.x UNet2DConditionModel",
        )?;
        Ok(Self {
            in_channels: raw.in_channels,
            out_channels: raw.out_channels,
            block_out_channels: raw.block_out_channels,
            layers_per_block: raw.layers_per_block,
            down_blocks,
            up_blocks,
            heads,
            cross_attention_dim: raw.cross_attention_dim,
            use_linear_projection: raw.use_linear_projection,
            upcast_attention: raw.upcast_attention,
            norm_num_groups: raw.norm_num_groups,
            norm_eps: raw.norm_eps,
            flip_sin_to_cos: raw.flip_sin_to_cos,
            freq_shift: raw.freq_shift,
            sample_size: raw.sample_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `unet/config.json` of `stable-diffusion-v1-5/stable-diffusion-v1-5`, as published.
    const SD15: &str = r#"{
      "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu",
      "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
      "center_input_sample": false, "cross_attention_dim": 768,
      "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
      "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
      "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
      "out_channels": 4, "sample_size": 64,
      "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    }"#;

    /// `unet/config.json` of `stabilityai/stable-diffusion-2-1`, as published.
    const SD21: &str = r#"{
      "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.10.0.dev0", "act_fn": "silu",
      "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
      "center_input_sample": false, "cross_attention_dim": 1024,
      "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
      "downsample_padding": 1, "dual_cross_attention": false, "flip_sin_to_cos": true,
      "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1,
      "norm_eps": 1e-05, "norm_num_groups": 32, "num_class_embeds": null,
      "only_cross_attention": false, "out_channels": 4, "sample_size": 96,
      "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
      "use_linear_projection": true, "upcast_attention": true
    }"#;

    #[test]
    fn presets_are_the_published_configs() {
        let p = Path::new("config.json");
        assert_eq!(UNetConfig::from_json(SD15, p).unwrap(), UNetConfig::v1_5());
        assert_eq!(UNetConfig::from_json(SD21, p).unwrap(), UNetConfig::v2_1());
    }

    #[test]
    fn levels_follow_the_blocks() {
        let levels = UNetConfig::v2_1().levels();
        let got: Vec<_> = levels.iter().map(|l| (l.channels, l.heads)).collect();
        assert_eq!(got, [(320, 5), (640, 10), (1280, 20), (1280, 20)]);
    }

    #[test]
    fn unsupported_settings_name_their_key() {
        let p = Path::new("unet/config.json");
        for (from, to, key) in [
            (
                "\"DownBlock2D\"]",
                "\"SimpleCrossAttnDownBlock2D\"]",
                "down_block_types",
            ),
            (
                "\"num_class_embeds\": null",
                "\"num_class_embeds\": 10",
                "num_class_embeds",
            ),
            (
                "\"attention_head_dim\": [5, 10, 20, 20]",
                "\"attention_head_dim\": [5, 10]",
                "attention_head_dim",
            ),
        ] {
            let text = SD21.replace(from, to);
            assert_ne!(text, SD21, "{from} not in the fixture");
            match UNetConfig::from_json(&text, p) {
                Err(Error::UnsupportedConfig { key: k, file, .. }) => {
                    assert!(k.contains(key), "{k} vs {key}");
                    assert_eq!(file, p);
                }
                other => panic!("{key}: expected UnsupportedConfig, got {other:?}"),
            }
        }
        assert!(matches!(
            UNetConfig::from_json("{", p),
            Err(Error::Config { .. })
        ));
    }
}
