//! transformers' `ViTModel` (DINO ViT-S/16, ViT-B/16, …) for evaluation: an image to its
//! hidden states and CLS token, from a Hugging Face folder (`config.json`,
//! `model.safetensors`, `preprocessor_config.json`).

use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::activation::gelu;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor};
use image::RgbImage;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::image_processor::ImageProcessor;
use crate::model_files::{Component, transformers_config, weights_file};
use crate::nn::{LayerNorm, Linear};
use crate::patch_embedding::PatchEmbedding;
use crate::weights::{Weights, WeightsView};

/// The fields of a ViT `config.json` layret reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VitConfig {
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
    /// Biases on query/key/value.
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    /// The MLP activation (`gelu`).
    #[serde(default = "gelu_name")]
    pub hidden_act: String,
}

fn three() -> usize {
    3
}
fn eps() -> f64 {
    1e-12
}
fn yes() -> bool {
    true
}
fn gelu_name() -> String {
    "gelu".into()
}

/// One pre-LayerNorm ViT layer (`encoder.layer.N.*`).
#[derive(Module, Debug)]
pub struct VitLayer {
    /// `layernorm_before`.
    pub layernorm_before: LayerNorm,
    /// `attention.attention.query`.
    pub query: Linear,
    /// `attention.attention.key`.
    pub key: Linear,
    /// `attention.attention.value`.
    pub value: Linear,
    /// `attention.output.dense`.
    pub attention_output: Linear,
    /// `layernorm_after`.
    pub layernorm_after: LayerNorm,
    /// `intermediate.dense`.
    pub intermediate: Linear,
    /// `output.dense`.
    pub output: Linear,
    /// Attention heads.
    pub heads: usize,
}

impl VitLayer {
    fn load(vb: &WeightsView, cfg: &VitConfig) -> Result<Self> {
        let (h, m, e) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let a = vb.pp("attention.attention");
        Ok(Self {
            layernorm_before: LayerNorm::load(&vb.pp("layernorm_before"), h, e)?,
            query: Linear::load(&a.pp("query"), h, h, cfg.qkv_bias)?,
            key: Linear::load(&a.pp("key"), h, h, cfg.qkv_bias)?,
            value: Linear::load(&a.pp("value"), h, h, cfg.qkv_bias)?,
            attention_output: Linear::load(&vb.pp("attention.output.dense"), h, h, true)?,
            layernorm_after: LayerNorm::load(&vb.pp("layernorm_after"), h, e)?,
            intermediate: Linear::load(&vb.pp("intermediate.dense"), h, m, true)?,
            output: Linear::load(&vb.pp("output.dense"), m, h, true)?,
            heads: cfg.num_attention_heads,
        })
    }

    /// # Shapes
    /// `[B, L, hidden]` → `[B, L, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, l, h] = x.dims();
        let d = h / self.heads;
        let n = self.layernorm_before.forward(x.clone());
        let split = |t: Tensor<3>| t.reshape([b, l, self.heads, d]).swap_dims(1, 2);
        let q = split(self.query.forward(n.clone()));
        let k = split(self.key.forward(n.clone()));
        let v = split(self.value.forward(n));
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: false,
        };
        let o = attention(q, k, v, None, None, options)
            .swap_dims(1, 2)
            .reshape([b, l, h]);
        let x = x + self.attention_output.forward(o);
        let n = self.layernorm_after.forward(x.clone());
        x + self.output.forward(gelu(self.intermediate.forward(n)))
    }
}

/// A ViT model (`ViTModel`), e.g. DINO's ViT-S/16.
pub struct VitModel {
    /// `embeddings.cls_token` `[hidden]`.
    pub cls_token: Param<Tensor<1>>,
    /// `embeddings.patch_embeddings.projection`.
    pub patch_embedding: PatchEmbedding,
    /// `embeddings.position_embeddings` `[1 + patches, hidden]`.
    pub position_embeddings: Param<Tensor<2>>,
    /// `encoder.layer.N`.
    pub layers: Vec<VitLayer>,
    /// The final `layernorm`.
    pub layernorm: LayerNorm,
    /// The image processor of the folder.
    pub processor: ImageProcessor,
    device: Device,
}

impl VitModel {
    /// Load a ViT folder (`model_type` `vit`; DINO checkpoints such as `facebook/dino-vits16`).
    pub fn from_dir(dir: &Path, device: &Device) -> Result<Self> {
        let (cfg_path, v) = transformers_config(dir, "vit", "a ViT model (e.g. DINO)")?;
        let cfg: VitConfig = serde_json::from_value(v).map_err(|e| Error::Config {
            file: cfg_path.clone(),
            message: e.to_string(),
        })?;
        if cfg.hidden_act != "gelu" {
            return Err(Error::UnsupportedConfig {
                file: cfg_path,
                key: "hidden_act".into(),
                value: format!("{:?}", cfg.hidden_act),
                supported: "supported: \"gelu\"".into(),
            });
        }
        if cfg.patch_size == 0 || !cfg.image_size.is_multiple_of(cfg.patch_size) {
            return Err(Error::UnsupportedConfig {
                file: cfg_path,
                key: "image_size".into(),
                value: cfg.image_size.to_string(),
                supported: format!("a multiple of patch_size {}", cfg.patch_size),
            });
        }
        let weights = Weights::open(weights_file(dir, Component::Transformers, None)?, device)?;
        // transformers writes ViTModel with or without the `vit.` prefix.
        let prefix = if weights.contains("vit.embeddings.cls_token") {
            "vit"
        } else {
            ""
        };
        let vb = weights.pp(prefix);
        let h = cfg.hidden_size;
        let patches = (cfg.image_size / cfg.patch_size).pow(2);
        let e = vb.pp("embeddings");
        let cls: Tensor<3> = e.tensor("cls_token", [1, 1, h])?;
        let pos: Tensor<3> = e.tensor("position_embeddings", [1, patches + 1, h])?;
        let model = Self {
            cls_token: Param::from_tensor(cls.reshape([h])),
            patch_embedding: PatchEmbedding::load(
                &e.pp("patch_embeddings.projection"),
                cfg.num_channels,
                h,
                cfg.patch_size,
                true,
            )?,
            position_embeddings: Param::from_tensor(pos.reshape([patches + 1, h])),
            layers: (0..cfg.num_hidden_layers)
                .map(|i| VitLayer::load(&vb.pp(format!("encoder.layer.{i}")), &cfg))
                .collect::<Result<Vec<_>>>()?,
            layernorm: LayerNorm::load(&vb.pp("layernorm"), h, cfg.layer_norm_eps)?,
            processor: ImageProcessor::from_file(&dir.join("preprocessor_config.json"))?,
            device: device.clone(),
        };
        // The pooler (unused by the CLS protocol) may be present.
        weights.finish(|k| k.contains("pooler."))?;
        Ok(model)
    }

    /// `last_hidden_state` (after the final LayerNorm) of preprocessed images.
    ///
    /// # Shapes
    /// `[B, 3, S, S]` → `[B, 1 + patches, hidden]`.
    pub fn forward(&self, pixel_values: Tensor<4>) -> Result<Tensor<3>> {
        let b = pixel_values.dims()[0];
        let patches = self.patch_embedding.forward(pixel_values)?;
        let [_, n, h] = patches.dims();
        let table = self.position_embeddings.val();
        if table.dims()[0] != n + 1 {
            return Err(Error::Shape {
                what: "ViT input".into(),
                expected: format!("{} patches (the model's image size)", table.dims()[0] - 1),
                got: vec![n],
            });
        }
        let cls = self.cls_token.val().reshape([1, 1, h]).repeat_dim(0, b);
        let mut x = Tensor::cat(vec![cls, patches], 1) + table.unsqueeze::<3>();
        for layer in &self.layers {
            x = layer.forward(x);
        }
        Ok(self.layernorm.forward(x))
    }

    /// The CLS token of the last hidden state of images, through the folder's processor (the
    /// DINO score's embedding).
    ///
    /// # Shapes
    /// `N` images → `[N, hidden]`.
    pub fn cls(&self, images: &[RgbImage]) -> Result<Tensor<2>> {
        let x = self.forward(self.processor.batch(images, &self.device)?)?;
        let [b, _, h] = x.dims();
        Ok(x.narrow(1, 0, 1).reshape([b, h]))
    }
}
