use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};

use crate::clip::ClipTextEncoder;
use crate::error::{Error, Result};
use crate::unet::{ModuleMut, UNet2DConditionModel};
use crate::weights::Weights;

/// Which model a LoRA layer targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoraTarget {
    /// The UNet.
    Unet,
    /// The text encoder.
    TextEncoder,
}

impl LoraTarget {
    fn name(self) -> &'static str {
        match self {
            LoraTarget::Unet => "UNet",
            LoraTarget::TextEncoder => "text-encoder",
        }
    }
}

/// One low-rank update `ΔW = (alpha / r) · up · down` of a linear layer or a convolution.
#[derive(Debug, Clone)]
pub struct LoraLayer {
    /// `[r, in·k·k]` (PEFT's `lora_A`, kohya's `lora_down`, flattened for convolutions).
    pub down: Tensor<2>,
    /// `[out, r]` (PEFT's `lora_B`, kohya's `lora_up`).
    pub up: Tensor<2>,
    /// The convolution kernel size the update is for (1 for linear layers and 1×1 convs).
    pub kernel: usize,
    /// Scaling numerator; the update is scaled by `alpha / r`.
    pub alpha: f64,
    /// The file keys this layer was read from (for messages).
    pub keys: String,
}

impl LoraLayer {
    /// The rank `r`.
    pub fn rank(&self) -> usize {
        self.down.dims()[0]
    }
}

/// The layout a LoRA file was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraFormat {
    /// PEFT / current diffusers (`unet.<module>.lora_A.weight`), alpha in the adapter metadata.
    Peft,
    /// kohya-ss sd-scripts / LoCon (`lora_unet_<module_with_underscores>.lora_down.weight`,
    /// per-layer `.alpha`).
    Kohya,
    /// diffusers 0.19–0.24 (`unet.<module>.lora.down.weight`, `…lora_linear_layer.down.weight`).
    DiffusersOld,
    /// diffusers ≤ 0.18 attention processors (`<attn>.processor.to_q_lora.down.weight`).
    AttnProcessors,
}

/// The layers of a LoRA file, keyed by (target, module path in layret's tree, e.g.
/// `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`); for kohya files the module
/// is found by its underscore name (`down_blocks_0_attentions_…_to_q`, or the LDM one
/// `input_blocks_1_1_…`) when merging.
#[derive(Debug, Clone)]
pub struct Lora {
    layers: HashMap<(LoraTarget, String), LoraLayer>,
    format: LoraFormat,
    path: PathBuf,
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

/// The algorithm of a LyCORIS (or other non-LoRA) tensor name, for the refusal message.
fn unsupported_algorithm(key: &str) -> Option<&'static str> {
    let leaf = key.rsplit_once('.').map_or(key, |(_, l)| l);
    let k = key;
    if k.contains(".hada_") {
        Some("LoHa (LyCORIS Hadamard product)")
    } else if k.contains(".lokr_") {
        Some("LoKr (LyCORIS Kronecker product)")
    } else if leaf == "dora_scale" || k.ends_with(".dora_scale") {
        Some("DoRA (weight-decomposed LoRA)")
    } else if k.contains(".lora_mid.") {
        Some("LoCon with a Tucker core (lora_mid)")
    } else if leaf == "diff" || leaf == "diff_b" || k.ends_with(".diff.weight") {
        Some("a full weight difference (LyCORIS 'full' / 'diff')")
    } else if k.contains(".oft_") || k.contains(".oft_blocks") || leaf == "oft_diag" {
        Some("OFT (orthogonal fine-tuning)")
    } else if leaf == "w_norm" || leaf == "b_norm" {
        Some("a norm-layer update (LyCORIS IA3/norm)")
    } else {
        None
    }
}

/// PEFT's adapter settings from a file's `lora_adapter_metadata` (diffusers ≥ 0.33 writes
/// them as JSON): per target, the default rank/alpha and per-module patterns.
#[derive(Debug, Default, Clone)]
struct PeftAlphas {
    alpha: Option<f64>,
    alpha_pattern: Vec<(String, f64)>,
}

impl PeftAlphas {
    fn from_metadata(meta: &HashMap<String, String>, target: &str, path: &Path) -> Result<Self> {
        let Some(text) = meta.get("lora_adapter_metadata") else {
            return Ok(Self::default());
        };
        let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            Error::invalid(
                "lora",
                format!("{}: lora_adapter_metadata is not JSON: {e}", path.display()),
            )
        })?;
        let alpha = doc
            .get(format!("{target}.lora_alpha"))
            .and_then(|v| v.as_f64());
        let alpha_pattern = doc
            .get(format!("{target}.alpha_pattern"))
            .and_then(|v| v.as_object())
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            alpha,
            alpha_pattern,
        })
    }

    /// The alpha of `module` (a pattern matches the whole path or a `.`-suffix of it).
    fn alpha_for(&self, module: &str) -> Option<f64> {
        self.alpha_pattern
            .iter()
            .find(|(p, _)| module == p || module.ends_with(&format!(".{p}")))
            .map(|(_, a)| *a)
            .or(self.alpha)
    }
}

impl Lora {
    /// Read a LoRA file (`.safetensors`, or a pickle as older diffusers saved it) in any of
    /// the LoRA formats. Every tensor must be understood: a key that is not a LoRA
    /// down/up/alpha tensor of the formats above is an error naming it (never skipped: a
    /// half-applied LoRA is a silent wrong image); LyCORIS algorithms layret does not merge
    /// (LoHa, LoKr, DoRA, …) are refused by name.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let w = Weights::open(path, device)?;
        let keys = w.keys();
        let invalid = |m: String| Error::invalid("lora", format!("{}: {m}", path.display()));
        if let Some((k, algo)) = keys
            .iter()
            .find_map(|k| unsupported_algorithm(k).map(|a| (k, a)))
        {
            return Err(invalid(format!(
                "`{k}` is {algo}, which layret does not merge (plain LoRA and LoCon are supported)"
            )));
        }
        if keys
            .iter()
            .any(|k| k.starts_with("lora_te1_") || k.starts_with("lora_te2_"))
        {
            return Err(invalid(
                "an SDXL LoRA (lora_te1_/lora_te2_ keys); layret supports SD 1.x and 2.x".into(),
            ));
        }
        let format = if keys
            .iter()
            .any(|k| k.starts_with("lora_unet_") || k.starts_with("lora_te_"))
        {
            LoraFormat::Kohya
        } else if keys
            .iter()
            .any(|k| k.contains(".processor.") && k.contains("_lora."))
        {
            LoraFormat::AttnProcessors
        } else if keys
            .iter()
            .any(|k| k.contains(".lora.down.") || k.contains(".lora_linear_layer."))
        {
            LoraFormat::DiffusersOld
        } else {
            LoraFormat::Peft
        };
        let mut parts: HashMap<(LoraTarget, String), LayerKeys> = HashMap::new();
        for key in &keys {
            let (target, module, slot) = parse_key(key, format).ok_or_else(|| {
                invalid(format!(
                    "unrecognized key `{key}` (not a LoRA down/up/alpha tensor of the PEFT, kohya, diffusers or attention-processor layouts)"
                ))
            })?;
            let module = if target == LoraTarget::TextEncoder {
                normalize_te(&module).to_string()
            } else {
                module
            };
            let e = parts.entry((target, module)).or_default();
            let slot_ref = match slot {
                Slot::Down => &mut e.down,
                Slot::Up => &mut e.up,
                Slot::Alpha => &mut e.alpha,
            };
            *slot_ref = Some(key.clone());
        }
        let peft = [
            (
                LoraTarget::Unet,
                PeftAlphas::from_metadata(w.metadata(), "unet", path)?,
            ),
            (
                LoraTarget::TextEncoder,
                PeftAlphas::from_metadata(w.metadata(), "text_encoder", path)?,
            ),
        ];
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
            let (r, kernel, d_in) = match *ds.as_slice() {
                [r, d_in] => (r, 1, d_in),
                [r, d_in, k1, k2] if k1 == k2 => (r, k1, d_in),
                _ => {
                    return Err(invalid(format!(
                        "layer `{module}`: down `{down}` has shape {ds:?}, expected [r, in] or [r, in, k, k]"
                    )));
                }
            };
            let (d_out, r2) = match *us.as_slice() {
                [o, r2] | [o, r2, 1, 1] => (o, r2),
                _ => {
                    return Err(invalid(format!(
                        "layer `{module}`: up `{up}` has shape {us:?}, expected [out, r] or [out, r, 1, 1]"
                    )));
                }
            };
            if r != r2 || r == 0 {
                return Err(invalid(format!(
                    "layer `{module}`: rank mismatch, `{down}` {ds:?} vs `{up}` {us:?}"
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
                None => peft
                    .iter()
                    .find(|(t, _)| *t == target)
                    .and_then(|(_, p)| p.alpha_for(&module))
                    .unwrap_or(r as f64),
            };
            let flat = d_in * kernel * kernel;
            let down_t: Tensor<2> = match ds.len() {
                2 => w.tensor(&down, [r, d_in])?,
                _ => w
                    .tensor::<4>(&down, [r, d_in, kernel, kernel])?
                    .reshape([r, flat]),
            };
            let up_t: Tensor<2> = match us.len() {
                2 => w.tensor(&up, [d_out, r])?,
                _ => w.tensor::<4>(&up, [d_out, r, 1, 1])?.reshape([d_out, r]),
            };
            layers.insert(
                (target, module),
                LoraLayer {
                    down: down_t,
                    up: up_t,
                    kernel,
                    alpha,
                    keys: down,
                },
            );
        }
        if layers.is_empty() {
            return Err(invalid("the file holds no LoRA layers".into()));
        }
        Ok(Self {
            layers,
            format,
            path: path.to_path_buf(),
        })
    }

    /// The layout the file was written in.
    pub fn format(&self) -> LoraFormat {
        self.format
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

    /// The layers of `target` by the name a module path is matched with: the path itself, or
    /// for kohya files its underscore form.
    fn take_for(&self, target: LoraTarget) -> HashMap<String, &LoraLayer> {
        self.layers
            .iter()
            .filter(|((t, _), _)| *t == target)
            .map(|((_, m), l)| (m.clone(), l))
            .collect()
    }

    fn delta(layer: &LoraLayer, scale: f64) -> Tensor<2> {
        let r = layer.rank() as f64;
        layer.up.clone().matmul(layer.down.clone()) * (scale * layer.alpha / r)
    }

    /// The name `wanted` knows a module at `path` (LDM name `ldm`, if any) by.
    fn lookup<'l>(
        &self,
        wanted: &mut HashMap<String, &'l LoraLayer>,
        path: &str,
        ldm: Option<&str>,
    ) -> Option<&'l LoraLayer> {
        if self.format == LoraFormat::Kohya {
            wanted
                .remove(&path.replace('.', "_"))
                .or_else(|| ldm.and_then(|l| wanted.remove(&l.replace('.', "_"))))
        } else {
            wanted.remove(path)
        }
    }

    /// A UNet with `W + scale·(alpha/r)·up·down` merged into the targeted layers (linear
    /// layers and convolutions); untouched layers share storage with `base`.
    pub fn merge_into_unet(
        &self,
        base: &UNet2DConditionModel,
        scale: f64,
    ) -> Result<UNet2DConditionModel> {
        let mut unet = base.clone();
        let mut wanted = self.take_for(LoraTarget::Unet);
        let ldm_names = unet.ldm_module_names();
        let mut bad = None;
        unet.for_each_module_mut(&mut |p, m| {
            if bad.is_some() {
                return;
            }
            let Some(l) = self.lookup(&mut wanted, p, ldm_names.get(p).map(String::as_str)) else {
                return;
            };
            let r = match m {
                ModuleMut::Linear(lin) => {
                    if l.kernel != 1 || l.down.dims()[1] != lin.d_in() || l.up.dims()[0] != lin.d_out() {
                        Err(format!(
                            "layer `{p}` is linear {}→{}, the LoRA (`{}`) {}→{} with kernel {}",
                            lin.d_in(),
                            lin.d_out(),
                            l.keys,
                            l.down.dims()[1] / (l.kernel * l.kernel),
                            l.up.dims()[0],
                            l.kernel
                        ))
                    } else {
                        *lin = lin.with_weight_delta(Self::delta(l, scale));
                        Ok(())
                    }
                }
                ModuleMut::Conv(conv) => {
                    let [o, i, k, _] = conv.weight.dims();
                    if l.kernel != k || l.down.dims()[1] != i * k * k || l.up.dims()[0] != o {
                        Err(format!(
                            "layer `{p}` is a {k}×{k} convolution {i}→{o}, the LoRA (`{}`) {}→{} with kernel {}",
                            l.keys,
                            l.down.dims()[1] / (l.kernel * l.kernel),
                            l.up.dims()[0],
                            l.kernel
                        ))
                    } else {
                        *conv = conv.with_weight_delta(Self::delta(l, scale).reshape([o, i, k, k]));
                        Ok(())
                    }
                }
            };
            if let Err(m) = r {
                bad = Some(m);
            }
        });
        self.finish(bad, wanted, LoraTarget::Unet)?;
        Ok(unet)
    }

    /// A text encoder with the LoRA merged (see [`merge_into_unet`](Self::merge_into_unet)).
    pub fn merge_into_text_encoder(
        &self,
        base: &ClipTextEncoder,
        scale: f64,
    ) -> Result<ClipTextEncoder> {
        let mut te = base.clone();
        let mut wanted = self.take_for(LoraTarget::TextEncoder);
        let mut bad = None;
        te.for_each_linear_mut(&mut |p, lin| {
            if bad.is_some() {
                return;
            }
            let Some(l) = self.lookup(&mut wanted, p, None) else {
                return;
            };
            if l.kernel != 1 || l.down.dims()[1] != lin.d_in() || l.up.dims()[0] != lin.d_out() {
                bad = Some(format!(
                    "layer `{p}` is {}→{}, the LoRA (`{}`) {}→{}",
                    lin.d_in(),
                    lin.d_out(),
                    l.keys,
                    l.down.dims()[1],
                    l.up.dims()[0]
                ));
                return;
            }
            *lin = lin.with_weight_delta(Self::delta(l, scale));
        });
        self.finish(bad, wanted, LoraTarget::TextEncoder)?;
        Ok(te)
    }

    fn finish(
        &self,
        bad: Option<String>,
        wanted: HashMap<String, &LoraLayer>,
        target: LoraTarget,
    ) -> Result<()> {
        let invalid = |m: String| Error::invalid("lora", format!("{}: {m}", self.path.display()));
        if let Some(m) = bad {
            return Err(invalid(m));
        }
        let mut left: Vec<&String> = wanted.keys().collect();
        left.sort();
        if let Some(k) = left.first() {
            return Err(invalid(format!(
                "no {} layer `{k}` ({} such layer{} in all: a LoRA for another model?)",
                target.name(),
                left.len(),
                if left.len() == 1 { "" } else { "s" }
            )));
        }
        Ok(())
    }
}

/// Which tensor of a layer a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Down,
    Up,
    Alpha,
}

/// (target, module, slot) of a key in `format`, or `None` if the key is not understood.
fn parse_key(key: &str, format: LoraFormat) -> Option<(LoraTarget, String, Slot)> {
    let strip_slot = |rest: &str, downs: &[&str], ups: &[&str]| -> Option<(String, Slot)> {
        for s in downs {
            if let Some(m) = rest.strip_suffix(s) {
                return Some((m.to_string(), Slot::Down));
            }
        }
        for s in ups {
            if let Some(m) = rest.strip_suffix(s) {
                return Some((m.to_string(), Slot::Up));
            }
        }
        rest.strip_suffix(".alpha")
            .map(|m| (m.to_string(), Slot::Alpha))
    };
    match format {
        LoraFormat::Kohya => {
            let (target, rest) = if let Some(r) = key.strip_prefix("lora_unet_") {
                (LoraTarget::Unet, r)
            } else {
                (LoraTarget::TextEncoder, key.strip_prefix("lora_te_")?)
            };
            let (m, s) = strip_slot(rest, &[".lora_down.weight"], &[".lora_up.weight"])?;
            Some((target, m, s))
        }
        LoraFormat::AttnProcessors => {
            let (site, rest) = key.split_once(".processor.")?;
            let (proj, slot) = strip_slot(rest, &["_lora.down.weight"], &["_lora.up.weight"])?;
            let module = match proj.as_str() {
                "to_q" | "to_k" | "to_v" => format!("{site}.{proj}"),
                "to_out" => format!("{site}.to_out.0"),
                _ => return None,
            };
            Some((LoraTarget::Unet, module, slot))
        }
        LoraFormat::DiffusersOld | LoraFormat::Peft => {
            let (target, rest) = if let Some(r) = key.strip_prefix("unet.") {
                (LoraTarget::Unet, r)
            } else {
                (LoraTarget::TextEncoder, key.strip_prefix("text_encoder.")?)
            };
            let (m, s) = strip_slot(
                rest,
                &[
                    ".lora_A.weight",
                    ".lora.down.weight",
                    ".lora_linear_layer.down.weight",
                ],
                &[
                    ".lora_B.weight",
                    ".lora.up.weight",
                    ".lora_linear_layer.up.weight",
                ],
            )?;
            Some((target, m, s))
        }
    }
}
