use std::collections::HashMap;
use std::path::Path;

use burn::tensor::{Device, Tensor};

use crate::clip::ClipTextEncoder;
use crate::error::{Error, Result};
use crate::unet::UNet2DConditionModel;
use crate::weights::Weights;

/// Which model a LoRA layer targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoraTarget {
    /// The UNet.
    Unet,
    /// The text encoder.
    TextEncoder,
}

/// One low-rank update `ΔW = (alpha / r) · up · down`.
#[derive(Debug, Clone)]
pub struct LoraLayer {
    /// `[r, in]` (PEFT's `lora_A`, kohya's `lora_down`).
    pub down: Tensor<2>,
    /// `[out, r]` (PEFT's `lora_B`, kohya's `lora_up`).
    pub up: Tensor<2>,
    /// Scaling numerator; the update is scaled by `alpha / r`.
    pub alpha: f64,
}

/// The layers of a LoRA file, keyed by (target, module path as in the checkpoint, e.g.
/// `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`, or for kohya files the
/// underscore form `down_blocks_0_attentions_…_to_q`).
#[derive(Debug, Clone, Default)]
pub struct Lora {
    layers: HashMap<(LoraTarget, String), LoraLayer>,
    kohya: bool,
}

/// The file keys of one LoRA layer.
#[derive(Debug, Default)]
struct LayerKeys {
    down: Option<String>,
    up: Option<String>,
    alpha: Option<String>,
}

/// The module path without `text_model.` (transformers 4 vs 5 layouts).
fn normalize_te(path: &str) -> &str {
    path.strip_prefix("text_model.")
        .or_else(|| path.strip_prefix("text_model_"))
        .unwrap_or(path)
}

impl Lora {
    /// Read a LoRA file in diffusers/PEFT format (`unet.<path>.lora_A.weight`,
    /// `text_encoder.<path>.lora_B.weight`; alpha from the file's adapter metadata, else
    /// alpha = r) or kohya format (`lora_unet_<path>.lora_down.weight`, `.lora_up.weight`,
    /// `.alpha`; `lora_te_…` for the text encoder).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let w = Weights::open(path, device)?;
        let keys = w.keys();
        let invalid = |m: String| Error::invalid("lora", format!("{}: {m}", path.display()));
        let kohya = keys
            .iter()
            .any(|k| k.starts_with("lora_unet_") || k.starts_with("lora_te_"));
        let mut parts: HashMap<(LoraTarget, String), LayerKeys> = HashMap::new();
        for key in &keys {
            let (target, rest) = if let Some(r) = key.strip_prefix("lora_unet_") {
                (LoraTarget::Unet, r)
            } else if let Some(r) = key.strip_prefix("lora_te_") {
                (LoraTarget::TextEncoder, r)
            } else if let Some(r) = key.strip_prefix("unet.") {
                (LoraTarget::Unet, r)
            } else if let Some(r) = key.strip_prefix("text_encoder.") {
                (LoraTarget::TextEncoder, r)
            } else {
                return Err(invalid(format!(
                    "unrecognized key `{key}` (neither PEFT `unet.`/`text_encoder.` nor kohya `lora_unet_`/`lora_te_`)"
                )));
            };
            let (module, slot) = if let Some(m) = rest
                .strip_suffix(".lora_A.weight")
                .or(rest.strip_suffix(".lora_down.weight"))
            {
                (m, 0)
            } else if let Some(m) = rest
                .strip_suffix(".lora_B.weight")
                .or(rest.strip_suffix(".lora_up.weight"))
            {
                (m, 1)
            } else if let Some(m) = rest.strip_suffix(".alpha") {
                (m, 2)
            } else {
                return Err(invalid(format!(
                    "unsupported LoRA tensor `{key}` (only lora_A/lora_B, lora_down/lora_up, alpha)"
                )));
            };
            let module = if target == LoraTarget::TextEncoder {
                normalize_te(module).to_string()
            } else {
                module.to_string()
            };
            let e = parts.entry((target, module)).or_default();
            let slot_ref = match slot {
                0 => &mut e.down,
                1 => &mut e.up,
                _ => &mut e.alpha,
            };
            *slot_ref = Some(key.clone());
        }
        let mut layers = HashMap::new();
        for ((target, module), LayerKeys { down, up, alpha }) in parts {
            let (Some(down), Some(up)) = (down, up) else {
                return Err(invalid(format!(
                    "layer `{module}` lacks its down/A or up/B matrix"
                )));
            };
            let (ds, us) = (
                w.shape_of(&down).unwrap_or(&[]).to_vec(),
                w.shape_of(&up).unwrap_or(&[]).to_vec(),
            );
            let (&[r, d_in], &[d_out, r2]) = (ds.as_slice(), us.as_slice()) else {
                return Err(invalid(format!(
                    "layer `{module}`: only linear LoRA is supported, got down {ds:?} and up {us:?}"
                )));
            };
            if r != r2 || r == 0 {
                return Err(invalid(format!(
                    "layer `{module}`: rank mismatch, down {ds:?} vs up {us:?}"
                )));
            }
            let alpha = match alpha {
                Some(a) => {
                    let s = w.shape_of(&a).unwrap_or(&[]).to_vec();
                    if s.iter().product::<usize>() != 1 {
                        return Err(invalid(format!(
                            "`{a}` should hold one value, has shape {s:?}"
                        )));
                    }
                    w.read_f32(&a, &s)?[0] as f64
                }
                None => r as f64,
            };
            layers.insert(
                (target, module),
                LoraLayer {
                    down: w.tensor(&down, [r, d_in])?,
                    up: w.tensor(&up, [d_out, r])?,
                    alpha,
                },
            );
        }
        if layers.is_empty() {
            return Err(invalid("the file holds no LoRA layers".into()));
        }
        Ok(Self { layers, kohya })
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Whether any layer targets `target`.
    pub fn targets(&self, target: LoraTarget) -> bool {
        self.layers.keys().any(|(t, _)| *t == target)
    }

    fn take_for(&self, target: LoraTarget) -> HashMap<String, &LoraLayer> {
        self.layers
            .iter()
            .filter(|((t, _), _)| *t == target)
            .map(|((_, m), l)| {
                let key = if self.kohya {
                    m.replace('.', "_")
                } else {
                    m.clone()
                };
                (key, l)
            })
            .collect()
    }

    fn delta(layer: &LoraLayer, scale: f64) -> Tensor<2> {
        let r = layer.down.dims()[0] as f64;
        layer.up.clone().matmul(layer.down.clone()) * (scale * layer.alpha / r)
    }

    /// Merge the layers of `target` into the Linear layers `for_each_linear` visits.
    fn merge(
        &self,
        target: LoraTarget,
        scale: f64,
        for_each_linear: impl FnOnce(&mut dyn FnMut(&str, &mut crate::nn::Linear)),
    ) -> Result<()> {
        let mut wanted = self.take_for(target);
        let kohya = self.kohya;
        let mut bad = None;
        for_each_linear(&mut |p, lin| {
            let key = if kohya {
                p.replace('.', "_")
            } else {
                p.to_string()
            };
            if let Some(l) = wanted.remove(&key) {
                if l.down.dims()[1] != lin.d_in() || l.up.dims()[0] != lin.d_out() {
                    bad = Some(format!(
                        "layer `{p}` is {}→{}, the LoRA {}→{}",
                        lin.d_in(),
                        lin.d_out(),
                        l.down.dims()[1],
                        l.up.dims()[0]
                    ));
                    return;
                }
                *lin = lin.with_weight_delta(Self::delta(l, scale));
            }
        });
        if let Some(m) = bad {
            return Err(Error::invalid("lora", m));
        }
        if let Some(k) = wanted.keys().next() {
            let model = match target {
                LoraTarget::Unet => "UNet",
                LoraTarget::TextEncoder => "text-encoder",
            };
            return Err(Error::invalid(
                "lora",
                format!("no {model} layer `{k}` (unsupported target, or a LoRA for another model)"),
            ));
        }
        Ok(())
    }

    /// A UNet with `W + scale·(alpha/r)·up·down` merged into the targeted layers; untouched
    /// layers share storage with `base`.
    pub fn merge_into_unet(
        &self,
        base: &UNet2DConditionModel,
        scale: f64,
    ) -> Result<UNet2DConditionModel> {
        let mut unet = base.clone();
        self.merge(LoraTarget::Unet, scale, |f| unet.for_each_linear_mut(f))?;
        Ok(unet)
    }

    /// A text encoder with the LoRA merged (see [`merge_into_unet`](Self::merge_into_unet)).
    pub fn merge_into_text_encoder(
        &self,
        base: &ClipTextEncoder,
        scale: f64,
    ) -> Result<ClipTextEncoder> {
        let mut te = base.clone();
        self.merge(LoraTarget::TextEncoder, scale, |f| {
            te.for_each_linear_mut(f)
        })?;
        Ok(te)
    }
}
