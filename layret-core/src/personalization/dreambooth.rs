use std::path::{Path, PathBuf};

use super::PersonalModel;
use crate::clip::ClipTextEncoder;
use crate::error::{Error, Result};
use crate::model_files::{Component, weights_file};
use crate::stable_diffusion::{StableDiffusion, check_model_dir};
use crate::tokenizer::ClipTokenizer;
use crate::unet::UNet2DConditionModel;
use crate::vae::AutoencoderKL;

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

/// The weights file of `component` in the base model's folder, when the base is a folder.
fn base_file(base: &StableDiffusion, sub: &str, component: Component) -> Option<PathBuf> {
    base.dir
        .is_dir()
        .then(|| weights_file(&base.dir.join(sub), component, None).ok())
        .flatten()
}

/// Whether `vae` is the base's VAE: the values of its input and output layers (rounded to
/// f16, so an fp16 copy of the same VAE counts as the same) equal the base's. A fine-tuned
/// VAE (e.g. ft-MSE, which retrains the decoder) differs there.
fn same_vae(base: &AutoencoderKL, vae: &AutoencoderKL) -> Result<bool> {
    let probe = |v: &AutoencoderKL| -> Result<Vec<u16>> {
        let mut out = Vec::new();
        for w in [
            v.encoder.conv_in.weight.val(),
            v.encoder.conv_out.weight.val(),
            v.decoder.conv_in.weight.val(),
            v.decoder.conv_out.weight.val(),
            v.quant_conv.weight.val(),
            v.post_quant_conv.weight.val(),
        ] {
            let vals = crate::host::to_f32_vec(w, "VAE weight")?;
            out.extend(vals.into_iter().map(|x| half::f16::from_f32(x).to_bits()));
        }
        Ok(out)
    };
    Ok(probe(base)? == probe(vae)?)
}

/// The refusal of a DreamBooth model whose VAE is not the base's.
fn other_vae(path: &Path, what: String) -> Error {
    Error::NotADiffusersFolder {
        path: path.to_path_buf(),
        reason: format!(
            "its VAE ({what}) differs from the base model's; layret shares one VAE between the vanilla and personalized models (use `--vae` to pick one for both)"
        ),
    }
}

/// Load a DreamBooth model beside `base`: a diffusers folder (its UNet and text encoder,
/// each shared with the base when byte-identical, and its tokenizer) or a single-file
/// checkpoint of the base's architecture (its UNet and text encoder; the base's tokenizer).
/// The VAE must be the base's (it is never loaded twice) and the architecture must match.
pub fn load_dreambooth(base: &StableDiffusion, path: &Path) -> Result<PersonalModel> {
    if path.is_file() {
        return load_dreambooth_file(base, path);
    }
    let dir = path;
    check_model_dir(dir)?;
    let dtype = base.unet.conv_in.weight.val().dtype();
    let device = &base.device;
    // VAE: shared; a different one is refused rather than silently mixed.
    if let Ok(a) = weights_file(&dir.join("vae"), Component::Vae, None) {
        let same = match base_file(base, "vae", Component::Vae) {
            Some(b) => same_file(&a, &b)?,
            None => {
                let (vae, _) = AutoencoderKL::from_dir(&dir.join("vae"), device, dtype, None)?;
                same_vae(&base.vae, &vae)?
            }
        };
        if !same {
            return Err(other_vae(dir, a.display().to_string()));
        }
    }
    let unet_file = weights_file(&dir.join("unet"), Component::Unet, None)
        .or_else(|_| weights_file(&dir.join("unet"), Component::Unet, Some("fp16")))
        .ok();
    let unet = match (&unet_file, base_file(base, "unet", Component::Unet)) {
        (Some(a), Some(b)) if same_file(a, &b)? => None,
        (None, _) => None,
        (Some(f), _) => {
            let variant = f.to_string_lossy().contains(".fp16.").then_some("fp16");
            let (unet, cfg) =
                UNet2DConditionModel::from_dir(&dir.join("unet"), device, dtype, variant)?;
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
    let te_file = weights_file(&te_dir, Component::TextEncoder, None)
        .or_else(|_| weights_file(&te_dir, Component::TextEncoder, Some("fp16")))
        .ok();
    let text_encoder = match (
        &te_file,
        base_file(base, "text_encoder", Component::TextEncoder),
    ) {
        (Some(a), Some(b)) if same_file(a, &b)? => base.text_encoder.clone(),
        (None, _) => base.text_encoder.clone(),
        (Some(f), _) => {
            let variant = f.to_string_lossy().contains(".fp16.").then_some("fp16");
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
    sources.extend(unet_file.into_iter().chain(te_file));
    Ok(PersonalModel {
        tokenizer,
        text_encoder,
        unet,
        sources,
        label: "dreambooth".into(),
        content: 0,
    })
}

/// A DreamBooth single file (a trainer's `model.ckpt`): read with the base's configs.
fn load_dreambooth_file(base: &StableDiffusion, path: &Path) -> Result<PersonalModel> {
    let db = StableDiffusion::load_single_file_like(path, base)?;
    if !same_vae(&base.vae, &db.vae)? {
        return Err(other_vae(path, "first_stage_model.* of the file".into()));
    }
    Ok(PersonalModel {
        tokenizer: base.tokenizer.clone(),
        text_encoder: db.text_encoder,
        unet: Some(db.unet),
        sources: vec![path.to_path_buf()],
        label: "dreambooth".into(),
        content: 0,
    })
}
