use std::path::Path;

use super::PersonalModel;
use crate::clip::ClipTextEncoder;
use crate::error::{Error, Result};
use crate::stable_diffusion::{StableDiffusion, check_model_dir};
use crate::tokenizer::ClipTokenizer;
use crate::unet::{UNet2DConditionModel, UNetConfig};

/// Whether two files hold the same bytes, compared 1 MiB at a time (the files can be
/// multi-GB UNets: never read whole).
fn same_file(a: &Path, b: &Path) -> Result<bool> {
    use std::io::Read;
    let (ma, mb) = (
        std::fs::metadata(a).map_err(|e| Error::io("reading", a, e))?,
        std::fs::metadata(b).map_err(|e| Error::io("reading", b, e))?,
    );
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let open = |p: &Path| std::fs::File::open(p).map_err(|e| Error::io("opening", p, e));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).map_err(|e| Error::io("reading", a, e))?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])
            .map_err(|e| Error::io("reading", b, e))?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// The first existing weights file of a component folder.
fn weights_file(dir: &Path, stem: &str) -> Option<std::path::PathBuf> {
    [
        format!("{stem}.safetensors"),
        format!("{stem}.fp16.safetensors"),
    ]
    .into_iter()
    .map(|f| dir.join(f))
    .find(|p| p.exists())
}

/// Load a DreamBooth folder beside `base`: its UNet and text encoder (each shared with the
/// base when byte-identical), its tokenizer; the VAE must be the base's (it is never loaded
/// twice) and the architecture must match.
pub fn load_dreambooth(base: &StableDiffusion, dir: &Path) -> Result<PersonalModel> {
    check_model_dir(dir)?;
    let dtype = base.unet.conv_in.weight.val().dtype();
    let device = &base.device;
    // VAE: shared; a different one is refused rather than silently mixed.
    if let (Some(a), Some(b)) = (
        weights_file(&dir.join("vae"), "diffusion_pytorch_model"),
        weights_file(&base.dir.join("vae"), "diffusion_pytorch_model"),
    ) && !same_file(&a, &b)?
    {
        return Err(Error::NotADiffusersFolder {
            path: dir.to_path_buf(),
            reason: format!(
                "its VAE ({}) differs from the base model's ({}); layret shares one VAE between the vanilla and personalized models",
                a.display(),
                b.display()
            ),
        });
    }
    let unet_file = weights_file(&dir.join("unet"), "diffusion_pytorch_model");
    let base_unet_file = weights_file(&base.dir.join("unet"), "diffusion_pytorch_model");
    let unet = match (&unet_file, &base_unet_file) {
        (Some(a), Some(b)) if same_file(a, b)? => None,
        (None, _) => None,
        (Some(_), _) => {
            let (unet, cfg): (UNet2DConditionModel, UNetConfig) = UNet2DConditionModel::from_dir(
                &dir.join("unet"),
                device,
                dtype,
                None,
            )
            .or_else(|e| {
                // Only an fp16 variant in the folder.
                if dir
                    .join("unet/diffusion_pytorch_model.fp16.safetensors")
                    .exists()
                {
                    UNet2DConditionModel::from_dir(&dir.join("unet"), device, dtype, Some("fp16"))
                } else {
                    Err(e)
                }
            })?;
            if cfg.block_out_channels != base.unet_config.block_out_channels
                || cfg.cross_attention_dim != base.unet_config.cross_attention_dim
            {
                return Err(Error::NotADiffusersFolder {
                    path: dir.to_path_buf(),
                    reason: "its UNet has another architecture than the base model's".into(),
                });
            }
            Some(unet)
        }
    };
    let te_dir = dir.join("text_encoder");
    let text_encoder = match (
        weights_file(&te_dir, "model"),
        weights_file(&base.dir.join("text_encoder"), "model"),
    ) {
        (Some(a), Some(b)) if same_file(&a, &b)? => base.text_encoder.clone(),
        (None, _) => base.text_encoder.clone(),
        (Some(_), _) => {
            let variant = if te_dir.join("model.safetensors").exists() {
                None
            } else {
                Some("fp16")
            };
            ClipTextEncoder::from_dir(&te_dir, device, dtype, variant)?.0
        }
    };
    let tokenizer = ClipTokenizer::from_model_dir(dir)?;
    if tokenizer.vocab_size() != text_encoder.vocab_size() {
        return Err(Error::NotADiffusersFolder {
            path: dir.to_path_buf(),
            reason: format!(
                "its tokenizer has {} tokens but its text encoder {} rows",
                tokenizer.vocab_size(),
                text_encoder.vocab_size()
            ),
        });
    }
    let mut sources = crate::tokenizer::tokenizer_files(dir);
    sources.extend(unet_file.into_iter().chain(weights_file(&te_dir, "model")));
    Ok(PersonalModel {
        tokenizer,
        text_encoder,
        unet,
        sources,
        label: "dreambooth".into(),
    })
}
