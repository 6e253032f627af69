//! transformers' `CLIPVisionModel`: an image to its hidden states and pooled CLS feature.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use serde::Deserialize;

use super::config::ClipActivation;
use super::text_encoder::{ClipEncoderLayer, LayerSpec};
use crate::error::{Error, Result};
use crate::nn::{Embedding, LayerNorm};
use crate::patch_embedding::PatchEmbedding;
use crate::weights::WeightsView;

/// `vision_config` of a CLIP `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClipVisionConfig {
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Input resolution (square).
    pub image_size: usize,
    /// Patch size.
    pub patch_size: usize,
    /// Input channels.
    #[serde(default = "three")]
    pub num_channels: usize,
    /// LayerNorm epsilon.
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    /// `quick_gelu` or `gelu`.
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
}

fn three() -> usize {
    3
}
fn eps() -> f64 {
    1e-5
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}

impl ClipVisionConfig {
    pub(crate) fn activation(&self) -> Result<ClipActivation> {
        match self.hidden_act.as_str() {
            "quick_gelu" => Ok(ClipActivation::QuickGelu),
            "gelu" => Ok(ClipActivation::Gelu),
            other => Err(Error::invalid(
                "vision_config.hidden_act",
                format!("{other:?}; supported: quick_gelu, gelu"),
            )),
        }
    }
}

/// The CLIP vision tower (`vision_model.*`).
#[derive(Module, Debug)]
pub struct ClipVisionTransformer {
    /// `embeddings.class_embedding` `[hidden]`.
    pub class_embedding: Param<Tensor<1>>,
    /// `embeddings.patch_embedding` (no bias).
    pub patch_embedding: PatchEmbedding,
    /// `embeddings.position_embedding` `[1 + patches, hidden]`.
    pub position_embedding: Embedding,
    /// `pre_layrnorm` (sic).
    pub pre_layrnorm: LayerNorm,
    /// `encoder.layers.N`.
    pub layers: Vec<ClipEncoderLayer>,
    /// `post_layernorm`, applied to the CLS token.
    pub post_layernorm: LayerNorm,
}

impl ClipVisionTransformer {
    pub(crate) fn load(vb: &WeightsView, cfg: &ClipVisionConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        if cfg.patch_size == 0 || !cfg.image_size.is_multiple_of(cfg.patch_size) {
            return Err(Error::invalid(
                "vision_config",
                format!(
                    "image_size {} is not a multiple of patch_size {}",
                    cfg.image_size, cfg.patch_size
                ),
            ));
        }
        let patches = (cfg.image_size / cfg.patch_size).pow(2);
        let spec = LayerSpec {
            hidden: h,
            heads: cfg.num_attention_heads,
            intermediate: cfg.intermediate_size,
            eps: cfg.layer_norm_eps,
            quick_gelu: cfg.activation()? == ClipActivation::QuickGelu,
            causal: false,
        };
        let e = vb.pp("embeddings");
        Ok(Self {
            class_embedding: Param::from_tensor(e.tensor("class_embedding", [h])?),
            patch_embedding: PatchEmbedding::load(
                &e.pp("patch_embedding"),
                cfg.num_channels,
                h,
                cfg.patch_size,
                false,
            )?,
            position_embedding: Embedding::load(&e.pp("position_embedding"), patches + 1, h)?,
            pre_layrnorm: LayerNorm::load(&vb.pp("pre_layrnorm"), h, cfg.layer_norm_eps)?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| ClipEncoderLayer::load(&vb.pp(format!("encoder.layers.{i}")), &spec))
                .collect::<Result<Vec<_>>>()?,
            post_layernorm: LayerNorm::load(&vb.pp("post_layernorm"), h, cfg.layer_norm_eps)?,
        })
    }

    /// `(last_hidden_state, pooled)`: the hidden states after the last layer and
    /// `post_layernorm` of their CLS token (transformers' `pooler_output`).
    ///
    /// # Shapes
    /// `[B, 3, S, S]` → `([B, 1 + patches, hidden], [B, hidden])`.
    pub fn forward(&self, pixel_values: Tensor<4>) -> Result<(Tensor<3>, Tensor<2>)> {
        let b = pixel_values.dims()[0];
        let patches = self.patch_embedding.forward(pixel_values)?;
        let [_, n, h] = patches.dims();
        let table = self.position_embedding.weight.val();
        if table.dims()[0] != n + 1 {
            return Err(Error::Shape {
                what: "CLIP vision input".into(),
                expected: format!("{} patches (the model's image size)", table.dims()[0] - 1),
                got: vec![n],
            });
        }
        let cls = self
            .class_embedding
            .val()
            .reshape([1, 1, h])
            .repeat_dim(0, b);
        let x = Tensor::cat(vec![cls, patches], 1) + table.unsqueeze::<3>();
        let mut x = self.pre_layrnorm.forward(x);
        for layer in &self.layers {
            x = layer.forward(x);
        }
        let pooled = self
            .post_layernorm
            .forward(x.clone().narrow(1, 0, 1))
            .reshape([b, h]);
        Ok((x, pooled))
    }
}
