use std::path::Path;

use burn::module::Module;
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use super::config::{ClipActivation, ClipTextConfig};
use crate::error::{Error, Result};
use crate::nn::{Embedding, LayerNorm, Linear};
use crate::weights::{Weights, WeightsView};

/// Token and position embeddings (`embeddings.*`).
#[derive(Module, Debug)]
pub struct ClipEmbeddings {
    /// `[vocab, hidden]`.
    pub token_embedding: Embedding,
    /// `[max_positions, hidden]`.
    pub position_embedding: Embedding,
}

/// The shape of one CLIP transformer layer (text or vision tower).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerSpec {
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub eps: f64,
    pub quick_gelu: bool,
    /// Causal attention (the text tower) or full (the vision tower).
    pub causal: bool,
}

impl LayerSpec {
    fn text(cfg: &ClipTextConfig) -> Self {
        Self {
            hidden: cfg.hidden_size,
            heads: cfg.num_attention_heads,
            intermediate: cfg.intermediate_size,
            eps: cfg.layer_norm_eps,
            quick_gelu: cfg.hidden_act == ClipActivation::QuickGelu,
            causal: true,
        }
    }
}

/// Multi-head self-attention, causal in the text tower (`self_attn.*`).
#[derive(Module, Debug)]
pub struct ClipAttention {
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Output projection.
    pub out_proj: Linear,
    /// Number of heads.
    pub heads: usize,
    /// Causal mask (text) or none (vision).
    pub causal: bool,
}

impl ClipAttention {
    fn load(vb: &WeightsView, spec: &LayerSpec) -> Result<Self> {
        let h = spec.hidden;
        Ok(Self {
            q_proj: Linear::load(&vb.pp("q_proj"), h, h, true)?,
            k_proj: Linear::load(&vb.pp("k_proj"), h, h, true)?,
            v_proj: Linear::load(&vb.pp("v_proj"), h, h, true)?,
            out_proj: Linear::load(&vb.pp("out_proj"), h, h, true)?,
            heads: spec.heads,
            causal: spec.causal,
        })
    }

    /// # Shapes
    /// `[B, L, hidden]` → `[B, L, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, l, h] = x.dims();
        let d = h / self.heads;
        let split = |t: Tensor<3>| t.reshape([b, l, self.heads, d]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: self.causal,
        };
        // Scores and softmax in f32 under half precision (77 tokens: the copies are small).
        let dtype = q.dtype();
        let o = if matches!(dtype, DType::F16 | DType::BF16) {
            let f = DType::F32;
            attention(q.cast(f), k.cast(f), v.cast(f), None, None, options).cast(dtype)
        } else {
            attention(q, k, v, None, None, options)
        };
        self.out_proj.forward(o.swap_dims(1, 2).reshape([b, l, h]))
    }
}

/// The feed-forward block (`mlp.fc1`, `mlp.fc2`).
#[derive(Module, Debug)]
pub struct ClipMlp {
    /// `hidden → intermediate`.
    pub fc1: Linear,
    /// `intermediate → hidden`.
    pub fc2: Linear,
    /// `true` for quick_gelu, `false` for exact GELU.
    pub quick_gelu: bool,
}

impl ClipMlp {
    /// # Shapes
    /// `[B, L, hidden]` → `[B, L, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = self.fc1.forward(x);
        let x = if self.quick_gelu {
            x.clone() * sigmoid(x * 1.702)
        } else {
            gelu(x)
        };
        self.fc2.forward(x)
    }
}

/// One pre-LayerNorm transformer layer (`encoder.layers.N.*`).
#[derive(Module, Debug)]
pub struct ClipEncoderLayer {
    /// Before attention.
    pub layer_norm1: LayerNorm,
    /// Causal self-attention.
    pub self_attn: ClipAttention,
    /// Before the MLP.
    pub layer_norm2: LayerNorm,
    /// The MLP.
    pub mlp: ClipMlp,
}

impl ClipEncoderLayer {
    pub(crate) fn load(vb: &WeightsView, spec: &LayerSpec) -> Result<Self> {
        let h = spec.hidden;
        Ok(Self {
            layer_norm1: LayerNorm::load(&vb.pp("layer_norm1"), h, spec.eps)?,
            self_attn: ClipAttention::load(&vb.pp("self_attn"), spec)?,
            layer_norm2: LayerNorm::load(&vb.pp("layer_norm2"), h, spec.eps)?,
            mlp: ClipMlp {
                fc1: Linear::load(&vb.pp("mlp.fc1"), h, spec.intermediate, true)?,
                fc2: Linear::load(&vb.pp("mlp.fc2"), spec.intermediate, h, true)?,
                quick_gelu: spec.quick_gelu,
            },
        })
    }

    /// # Shapes
    /// `[B, L, hidden]` → `[B, L, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

/// The layer stack (`encoder.layers`).
#[derive(Module, Debug)]
pub struct ClipEncoder {
    /// The layers in order.
    pub layers: Vec<ClipEncoderLayer>,
}

/// transformers' `CLIPTextModel`: token ids to `last_hidden_state`.
///
/// Checkpoints with and without the `text_model.` key prefix (transformers 4 / 5 layouts) are
/// both read; the `position_ids` buffer some files carry is ignored.
#[derive(Module, Debug)]
pub struct ClipTextEncoder {
    /// Token and position embeddings.
    pub embeddings: ClipEmbeddings,
    /// The transformer layers.
    pub encoder: ClipEncoder,
    /// Applied to the output of the last layer used.
    pub final_layer_norm: LayerNorm,
}

impl ClipTextEncoder {
    /// Load `config.json` and the weights (`model[.variant].safetensors`, or the
    /// `pytorch_model.bin` pickle) from a `text_encoder/` folder, creating tensors of `dtype`
    /// on `device`.
    pub fn from_dir(
        dir: &Path,
        device: &Device,
        dtype: DType,
        variant: Option<&str>,
    ) -> Result<(Self, ClipTextConfig)> {
        let cfg = ClipTextConfig::from_file(&dir.join("config.json"))?;
        let file = crate::model_files::weights_file(
            dir,
            crate::model_files::Component::TextEncoder,
            variant,
        )?;
        let weights = Weights::open_as(&file, device, dtype)?;
        let model = Self::load(&weights, &cfg)?;
        Ok((model, cfg))
    }

    /// Build from an opened weights file; fails on missing, mis-shaped or unused tensors.
    pub fn load(weights: &Weights, cfg: &ClipTextConfig) -> Result<Self> {
        let prefix = if weights.contains("text_model.embeddings.token_embedding.weight") {
            "text_model"
        } else {
            ""
        };
        let model = Self::load_view(&weights.pp(prefix), cfg)?;
        weights.finish(|k| k.ends_with("embeddings.position_ids"))?;
        Ok(model)
    }

    /// Build from the tensors under `vb` (the caller checks for unused tensors).
    pub(crate) fn load_view(vb: &WeightsView, cfg: &ClipTextConfig) -> Result<Self> {
        let vb = vb.clone();
        let h = cfg.hidden_size;
        let embeddings = ClipEmbeddings {
            token_embedding: Embedding::load(
                &vb.pp("embeddings.token_embedding"),
                cfg.vocab_size,
                h,
            )?,
            position_embedding: Embedding::load(
                &vb.pp("embeddings.position_embedding"),
                cfg.max_position_embeddings,
                h,
            )?,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                ClipEncoderLayer::load(&vb.pp(format!("encoder.layers.{i}")), &LayerSpec::text(cfg))
            })
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = LayerNorm::load(&vb.pp("final_layer_norm"), h, cfg.layer_norm_eps)?;
        Ok(Self {
            embeddings,
            encoder: ClipEncoder { layers },
            final_layer_norm,
        })
    }

    /// Every Linear layer with its checkpoint path (`encoder.layers.3.self_attn.q_proj`,
    /// `encoder.layers.3.mlp.fc1`; without the `text_model.` prefix), for LoRA.
    pub fn for_each_linear_mut(&mut self, f: &mut dyn FnMut(&str, &mut Linear)) {
        for (i, l) in self.encoder.layers.iter_mut().enumerate() {
            let p = format!("encoder.layers.{i}");
            f(&format!("{p}.self_attn.q_proj"), &mut l.self_attn.q_proj);
            f(&format!("{p}.self_attn.k_proj"), &mut l.self_attn.k_proj);
            f(&format!("{p}.self_attn.v_proj"), &mut l.self_attn.v_proj);
            f(
                &format!("{p}.self_attn.out_proj"),
                &mut l.self_attn.out_proj,
            );
            f(&format!("{p}.mlp.fc1"), &mut l.mlp.fc1);
            f(&format!("{p}.mlp.fc2"), &mut l.mlp.fc2);
        }
    }

    /// Width of the hidden states (and of token embeddings).
    pub fn hidden_size(&self) -> usize {
        self.embeddings.token_embedding.weight.dims()[1]
    }

    /// A copy with `rows` (`[n, hidden]`) appended to the token embedding (new token ids
    /// `vocab_size()..vocab_size()+n`); everything else is shared with `self`.
    pub fn with_extra_tokens(&self, rows: Tensor<2>) -> Result<Self> {
        let [_, d] = rows.dims();
        if d != self.hidden_size() {
            return Err(Error::Shape {
                what: "token embedding rows".into(),
                expected: format!("[n, {}]", self.hidden_size()),
                got: rows.dims().to_vec(),
            });
        }
        let mut out = self.clone();
        let w = self.embeddings.token_embedding.weight.val();
        out.embeddings.token_embedding.weight =
            burn::module::Param::from_tensor(Tensor::cat(vec![w.clone(), rows.cast(w.dtype())], 0));
        Ok(out)
    }

    /// The embedding vector of token `id` (`[hidden]`), e.g. to check a learned token.
    pub fn token_embedding(&self, id: u32) -> Result<Tensor<1>> {
        let n = self.vocab_size();
        if id as usize >= n {
            return Err(Error::invalid(
                "token id",
                format!("{id}; the text encoder has {n} tokens"),
            ));
        }
        let d = self.hidden_size();
        let i = id as usize;
        Ok(self
            .embeddings
            .token_embedding
            .weight
            .val()
            .slice([i..i + 1, 0..d])
            .reshape([d]))
    }

    /// Vocabulary size (rows of the token embedding).
    pub fn vocab_size(&self) -> usize {
        self.embeddings.token_embedding.num_embeddings()
    }

    /// Number of transformer layers.
    pub fn num_layers(&self) -> usize {
        self.encoder.layers.len()
    }

    /// `last_hidden_state` (with `clip_skip = 0`), or diffusers' `clip_skip = n`: the hidden
    /// states `n` layers before the last, through the final LayerNorm.
    ///
    /// # Shapes
    /// ids `[B, L]` with `L ≤ max_positions` → `[B, L, hidden]`.
    pub fn forward(&self, ids: Tensor<2, Int>, clip_skip: usize) -> Tensor<3> {
        let [_, l] = ids.dims();
        let device = ids.device();
        let positions = Tensor::<1, Int>::arange(0..l as i64, &device).reshape([1, l]);
        let mut x = self.embeddings.token_embedding.forward(ids)
            + self.embeddings.position_embedding.forward(positions);
        let used = self.encoder.layers.len().saturating_sub(clip_skip);
        for layer in &self.encoder.layers[..used] {
            x = layer.forward(x);
        }
        self.final_layer_norm.forward(x)
    }

    /// Encode rows of token ids (from [`ClipTokenizer`](crate::tokenizer::ClipTokenizer)),
    /// checking every id and length first.
    ///
    /// # Shapes
    /// `B` rows of `L` ids → `[B, L, hidden]`.
    pub fn encode(&self, ids: &[Vec<u32>], clip_skip: usize) -> Result<Tensor<3>> {
        let l = ids.first().map(Vec::len).unwrap_or(0);
        let max_pos = self.embeddings.position_embedding.num_embeddings();
        if ids.is_empty() || l == 0 || l > max_pos || ids.iter().any(|r| r.len() != l) {
            return Err(Error::Shape {
                what: "input_ids".into(),
                expected: format!("B ≥ 1 rows of equal length 1..={max_pos}"),
                got: ids.iter().map(Vec::len).collect(),
            });
        }
        if clip_skip >= self.num_layers() {
            return Err(Error::invalid(
                "clip_skip",
                format!(
                    "{clip_skip}, the text encoder has {} layers",
                    self.num_layers()
                ),
            ));
        }
        let vocab = self.vocab_size();
        if let Some(bad) = ids.iter().flatten().find(|&&i| i as usize >= vocab) {
            return Err(Error::invalid(
                "input_ids",
                format!("token id {bad} is outside the text encoder's vocabulary of {vocab}"),
            ));
        }
        let flat: Vec<i64> = ids.iter().flatten().map(|&i| i as i64).collect();
        let device = self.embeddings.token_embedding.weight.device();
        let t = Tensor::<2, Int>::from_data(TensorData::new(flat, [ids.len(), l]), &device);
        Ok(self.forward(t, clip_skip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{DType, Device};

    fn tiny() -> ClipTextConfig {
        ClipTextConfig {
            vocab_size: 50,
            hidden_size: 16,
            intermediate_size: 24,
            num_hidden_layers: 3,
            num_attention_heads: 2,
            max_position_embeddings: 9,
            ..ClipTextConfig::v1_5()
        }
    }

    #[test]
    fn encode_shapes_and_clip_skip() {
        let dev = Device::flex();
        let te =
            ClipTextEncoder::load(&Weights::random(&dev, DType::F32, 1, 0.1), &tiny()).unwrap();
        assert_eq!(te.num_layers(), 3);
        let ids = vec![vec![0, 5, 7, 49, 1], vec![3, 3, 3, 3, 3]];
        let h = te.encode(&ids, 0).unwrap();
        assert_eq!(h.dims(), [2, 5, 16]);
        let skipped = te.encode(&ids, 1).unwrap();
        assert_eq!(skipped.dims(), [2, 5, 16]);
        let diff: f32 = (h - skipped).abs().max().into_scalar();
        assert!(diff > 0.0, "clip_skip 1 stops one layer earlier");
        // An id outside the vocabulary and a row longer than the positions are refused.
        assert!(te.encode(&[vec![0, 50]], 0).is_err());
        assert!(te.encode(&[vec![0; 10]], 0).is_err());
    }
}
