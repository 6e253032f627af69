//! Resolving `--model`: a folder, or a Hugging Face repo id found in the local cache.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The Hugging Face hub cache folder: `$HF_HUB_CACHE`, `$HF_HOME/hub`, or
/// `~/.cache/huggingface/hub`.
pub fn hf_cache_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(p).join("hub"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface/hub"))
}

/// The snapshot folder of `repo` (e.g. `stable-diffusion-v1-5/stable-diffusion-v1-5`) in the
/// cache `cache`: `models--org--name/snapshots/<refs/main>`, or the only snapshot there.
pub fn find_in_cache(cache: &Path, repo: &str) -> Option<PathBuf> {
    let dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snapshots = dir.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(dir.join("refs/main")) {
        let p = snapshots.join(rev.trim());
        if p.is_dir() {
            return Some(p);
        }
    }
    let mut all: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    all.sort();
    if all.len() == 1 { all.pop() } else { None }
}

/// `spec` as a folder or single-file checkpoint if it exists, else as a repo id in the local Hugging Face cache (no
/// network), else — with the `hub` feature — downloaded. The error says where it looked and
/// how to pass a folder.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let p = PathBuf::from(spec);
    if p.is_dir() || p.is_file() {
        return Ok(p);
    }
    let looks_like_repo =
        spec.split('/').count() == 2 && !spec.starts_with('.') && !spec.starts_with('/');
    if looks_like_repo && let Some(found) = hf_cache_dir().and_then(|c| find_in_cache(&c, spec)) {
        return Ok(found);
    }
    #[cfg(feature = "hub")]
    if looks_like_repo {
        return download(spec);
    }
    let cache = hf_cache_dir()
        .map(|c| c.display().to_string())
        .unwrap_or_else(|| "(no HOME)".into());
    Err(Error::MissingFile {
        what: format!(
            "model folder (and `{spec}` is not in the Hugging Face cache at {cache}; layret does not \
             download without the `hub` feature and network: pass a diffusers folder, or fetch it \
             with `huggingface-cli download {spec}`)"
        ),
        path: p,
    })
}

/// Download the files of a diffusers SD folder from the Hub into the cache (`hub` feature).
#[cfg(feature = "hub")]
fn download(repo: &str) -> Result<PathBuf> {
    let fail = |e: String| Error::MissingFile {
        what: format!(
            "model `{repo}` from the Hugging Face Hub ({e}); without network, pass a folder"
        ),
        path: PathBuf::from(repo),
    };
    let api = hf_hub::api::sync::Api::new().map_err(|e| fail(e.to_string()))?;
    let r = api.model(repo.to_string());
    let index = r.get("model_index.json").map_err(|e| fail(e.to_string()))?;
    let root = index
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| fail("no snapshot folder".into()))?;
    let files = [
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer/tokenizer_config.json",
        "scheduler/scheduler_config.json",
    ];
    for f in files {
        r.get(f).map_err(|e| fail(format!("{f}: {e}")))?;
    }
    Ok(root)
}
