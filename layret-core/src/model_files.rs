//! Which file of a diffusers component folder holds its weights: `.safetensors` first (the
//! requested variant, e.g. `fp16`, then the plain file), else the PyTorch pickle
//! (`diffusion_pytorch_model.bin`, `pytorch_model.bin`) that older repositories and many
//! DreamBooth uploads carry.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A component of a diffusers Stable Diffusion folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// `unet/`.
    Unet,
    /// `vae/`.
    Vae,
    /// `text_encoder/`.
    TextEncoder,
    /// A transformers model folder (`model.safetensors` / `pytorch_model.bin`), e.g. the CLIP
    /// and DINO models of the evaluation.
    Transformers,
}

impl Component {
    /// The file stems: (safetensors, pickle).
    fn stems(self) -> (&'static str, &'static str) {
        match self {
            Component::Unet | Component::Vae => {
                ("diffusion_pytorch_model", "diffusion_pytorch_model")
            }
            Component::TextEncoder | Component::Transformers => ("model", "pytorch_model"),
        }
    }

    /// What the weights are, for messages.
    fn what(self) -> &'static str {
        match self {
            Component::Unet => "UNet weights",
            Component::Vae => "VAE weights",
            Component::TextEncoder => "text encoder weights",
            Component::Transformers => "model weights",
        }
    }
}

/// The weights file of `component` in its folder `dir` (e.g. `model/unet`), preferring
/// `variant` (`*.fp16.safetensors`) where it exists. A missing file is
/// [`Error::MissingFile`] naming the plain `.safetensors` path and the alternatives looked
/// for; sharded weights (`*.index.json`) are refused by name.
pub fn weights_file(dir: &Path, component: Component, variant: Option<&str>) -> Result<PathBuf> {
    let (st, bin) = component.stems();
    let mut candidates = Vec::new();
    if let Some(v) = variant {
        candidates.push(dir.join(format!("{st}.{v}.safetensors")));
    }
    candidates.push(dir.join(format!("{st}.safetensors")));
    if let Some(v) = variant {
        candidates.push(dir.join(format!("{bin}.{v}.bin")));
    }
    candidates.push(dir.join(format!("{bin}.bin")));
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    for index in [
        dir.join(format!("{st}.safetensors.index.json")),
        dir.join(format!("{bin}.bin.index.json")),
    ] {
        if index.is_file() {
            return Err(Error::UnsupportedConfig {
                file: index,
                key: "weight_map".into(),
                value: "sharded weights".into(),
                supported: "one weights file per component (merge the shards, e.g. with diffusers' save_pretrained(max_shard_size=\"100GB\"))".into(),
            });
        }
    }
    let plain = dir.join(format!("{st}.safetensors"));
    Err(Error::MissingFile {
        what: format!(
            "{} ({} or {}.bin)",
            component.what(),
            plain
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            bin
        ),
        path: plain,
    })
}

/// `config.json` of a transformers model folder, checked to have `model_type` `want` (`what`
/// names the kind of model in errors).
pub(crate) fn transformers_config(
    dir: &Path,
    want: &str,
    what: &str,
) -> Result<(PathBuf, serde_json::Value)> {
    let path = dir.join("config.json");
    let v: serde_json::Value = crate::config_file::read_json(&path, what)?;
    let kind = v["model_type"].as_str().unwrap_or("");
    if kind != want {
        return Err(Error::UnsupportedConfig {
            file: path,
            key: "model_type".into(),
            value: format!("{kind:?}"),
            supported: format!("{want:?} ({what})"),
        });
    }
    Ok((path, v))
}
