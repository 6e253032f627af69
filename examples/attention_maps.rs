//! Cross-attention heat maps: one PNG per prompt token and sampling step, showing where in the
//! image each word attends (the maps Prompt-to-Prompt and Layout-and-Retouch's masks are made
//! from). An [`AttentionStore`] records the cond half's probabilities at every
//! cross-attention site during text-to-image; the maps are averaged over heads and layers
//! (each resized to the latent size), min-max normalized and colored.
//!
//! ```sh
//! cargo run --release --example attention_maps                      # tiny model → attention_maps/
//! cargo run --release --example attention_maps -- maps/ ~/models/sd-v1-5 "a dog on a bike"
//! ```

#![allow(clippy::single_range_in_vec_init)]

use std::path::{Path, PathBuf};

use layret::attention::{AttentionStore, Router, SiteSelector};
use layret::burn::tensor::{Device, Tensor};
use layret::core::processor::AttentionKind;
use layret::core::stable_diffusion::{LoadOptions, NoiseSource, StableDiffusion, Txt2ImgRequest};

/// Heat maps written by [`run`]: `(step, token position, file)`.
pub type Maps = Vec<(usize, usize, PathBuf)>;

/// A black → red → yellow → white color for `v` in [0, 1].
fn heat(v: f32) -> image::Rgb<u8> {
    let v = v.clamp(0.0, 1.0);
    let c = |x: f32| (x.clamp(0.0, 1.0) * 255.0).round() as u8;
    image::Rgb([c(3.0 * v), c(3.0 * v - 1.0), c(3.0 * v - 2.0)])
}

/// Generate `prompt` on the model in `model` and write its heat maps into `out`.
pub fn run(
    model: &Path,
    prompt: &str,
    out: &Path,
    steps: usize,
    size: usize,
) -> layret::Result<Maps> {
    let device = Device::flex();
    let sd = StableDiffusion::load(model, &device, &LoadOptions::default())?;
    let mut req = Txt2ImgRequest::new(prompt);
    (req.steps, req.width, req.height, req.noise) = (steps, size, size, NoiseSource::Seed(1));
    let mut store = AttentionStore::new(true);
    let latents = {
        let mut router = Router::new();
        router.require(
            SiteSelector::new().kind(AttentionKind::CrossAttention),
            &mut store,
        );
        sd.txt2img_latents(&req, &mut router, &mut layret::core::ignore_progress)?
    };
    std::fs::create_dir_all(out).map_err(|e| layret::Error::io("creating", out, e))?;
    layret::core::image_io::save_png(
        &sd.decode_to_rgb8(latents)?[0],
        &out.join("image.png"),
        &[("prompt", prompt.to_string())],
    )?;
    // The prompt's tokens (positions 1..=n; 0 is BOS), named by the vocabulary.
    let ids = sd.tokenizer().encode(prompt)?;
    let eos = ids
        .iter()
        .position(|&i| i == sd.tokenizer().eos_id())
        .unwrap_or(ids.len());
    let tokens: Vec<(usize, String)> = (1..eos)
        .map(|p| {
            let t = sd.tokenizer().id_to_token(ids[p]).unwrap_or_default();
            let word: String = t
                .trim_end_matches("</w>")
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .collect();
            (p, word)
        })
        .collect();
    let (lh, lw) = (size / sd.vae_factor(), size / sd.vae_factor());
    let mut written = Vec::new();
    for step in 0..steps {
        let records: Vec<_> = store.records().iter().filter(|r| r.step == step).collect();
        // [1, 1, Lq, Lk] per site → [1, Lk, lh, lw] at the latent size, averaged over sites.
        let mut sum: Option<Tensor<4>> = None;
        for r in &records {
            let [_, _, lq, lk] = r.probs.dims();
            let per_token = r
                .probs
                .clone()
                .slice([0..1])
                .reshape([1, lq, lk])
                .swap_dims(1, 2)
                .reshape([1, lk, r.height, r.width]);
            let m = layret::core::nn::resize_nearest(per_token, lh, lw);
            sum = Some(match sum {
                Some(s) => s + m,
                None => m,
            });
        }
        let Some(avg) = sum.map(|s| s / records.len() as f64) else {
            continue;
        };
        let maps = layret::core::array::tensor_to_array4(avg, "attention maps")?;
        for (pos, word) in &tokens {
            let m = maps.index_axis(ndarray_axis(1), *pos);
            let m = m.index_axis(ndarray_axis(0), 0);
            let (lo, hi) = m
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let f = sd.vae_factor() as u32;
            let img = image::RgbImage::from_fn((lw as u32) * f, (lh as u32) * f, |x, y| {
                let v = m[[(y / f) as usize, (x / f) as usize]];
                heat(if hi > lo { (v - lo) / (hi - lo) } else { 0.0 })
            });
            let file = out.join(format!("step{step:02}_token{pos:02}_{word}.png"));
            layret::core::image_io::save_png(
                &img,
                &file,
                &[
                    ("prompt", prompt.to_string()),
                    ("token", word.clone()),
                    ("step", step.to_string()),
                ],
            )?;
            written.push((step, *pos, file));
        }
    }
    Ok(written)
}

fn ndarray_axis(i: usize) -> layret::core::array::ndarray::Axis {
    layret::core::array::ndarray::Axis(i)
}

fn main() -> layret::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().unwrap_or_else(|| "attention_maps".into()));
    let model = args
        .next()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sd1-tiny").into());
    let prompt = args
        .next()
        .unwrap_or_else(|| "a photo of a dog on a beach".into());
    let tiny = model.ends_with("sd1-tiny");
    let (steps, size) = if tiny { (4, 128) } else { (30, 512) };
    let maps = run(Path::new(&model), &prompt, &out, steps, size)?;
    println!(
        "{} heat maps ({} steps × {} tokens) and image.png in {}",
        maps.len(),
        steps,
        maps.len() / steps.max(1),
        out.display()
    );
    Ok(())
}
