use std::path::PathBuf;
use std::time::Instant;

use layret::attention::{KvPolicy, SwapMode};
use layret::burn::tensor::Tensor;
use layret::core::image_io::save_png;
use layret::core::noise::{load_tensor, save_tensors};
use layret::core::personalization::Personalization;
use layret::core::stable_diffusion::NoiseSource;

use crate::model_args::ModelArgs;
use layret::pipeline::{
    Blend, GenerateRequest, LayoutAndRetouch, MethodSettings, ModelPair, Subject,
    load_reference_tensor,
};
use layret::{Error, Result};
use serde_json::json;

use crate::progress::Bars;

/// Personalized generation with Layout-and-Retouch: stage 1 lays out a context image with the
/// vanilla model's diversity, stage 2 retouches the subject from a reference photo.
///
/// Writes p<P>_s<K>.png per prompt P and sample K into --out (with the parameters in PNG text
/// chunks), optional context images and masks, and manifest.json.
///
/// Example (the committed tiny model, offline):
///   layret generate --model tests/fixtures/sd1-tiny
///     --personalization ti:tests/fixtures/personalization/ti_cat_toy.safetensors
///     --phrase "<cat-toy>" --class "cat toy" --reference photo.png
///     --prompt "a <cat-toy> on the beach" --steps 10 --width 128 --height 128 --out out
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The base (vanilla) model and how to load it.
    #[command(flatten)]
    model: ModelArgs,
    /// The personalization (repeatable, applied in order, e.g. a token then a LoRA): KIND:PATH
    /// with KIND ti (embedding: .safetensors, .bin, A1111 .pt; ti:PATH#TOKEN names the token,
    /// default the file's own or its stem), dreambooth (folder or single file),
    /// custom-diffusion (weights file), lora (kohya, diffusers or PEFT file; lora:PATH@SCALE).
    #[arg(long, required = true)]
    personalization: Vec<String>,
    /// The personal phrase P as the personalized model knows it ("sks dog", "<cat-toy>").
    #[arg(long)]
    phrase: String,
    /// The class phrase C ("dog", "cat toy").
    #[arg(long = "class")]
    class_phrase: String,
    /// Reference photo(s) of the subject (8-bit RGB PNG/JPEG); sample k uses reference
    /// k mod R.
    #[arg(long, required = true)]
    reference: Vec<PathBuf>,
    /// Prompt(s), each containing the phrase.
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// Samples per prompt.
    #[arg(long, default_value_t = 1)]
    num_samples: usize,
    /// Seed of the initial noise, the same for every prompt (default: random, printed).
    #[arg(long, conflicts_with = "noise")]
    seed: Option<u64>,
    /// Initial noise file (key `noise`, [K, 4, H/8, W/8]); the K samples of each prompt use its rows.
    #[arg(long)]
    noise: Option<PathBuf>,
    /// DDIM steps N.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Guidance scale.
    #[arg(long, default_value_t = 7.5)]
    guidance: f64,
    /// Negative (unconditional) prompt.
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// Image width (default: the model's size).
    #[arg(long)]
    width: Option<usize>,
    /// Image height (default: the model's size).
    #[arg(long)]
    height: Option<usize>,
    /// Fraction of the steps run by the vanilla model (λ1 = round(fraction·N)).
    #[arg(long, default_value_t = 0.2)]
    layout_fraction: f64,
    /// Steps of structure lock before the two-source swap (S).
    #[arg(long, default_value_t = 4)]
    swap_start: usize,
    /// Mask threshold τ on the normalized maps.
    #[arg(long, default_value_t = 0.1)]
    mask_threshold: f64,
    /// Mask level = latent / this factor.
    #[arg(long, default_value_t = 4)]
    mask_factor: usize,
    /// Latent blending: otsu, off, or a fixed threshold.
    #[arg(long, default_value = "otsu")]
    blend: String,
    /// First blended step (default round(0.2·N)).
    #[arg(long)]
    blend_start: Option<usize>,
    /// split (two masked softmaxes) or concat (one softmax over target, context, reference).
    #[arg(long, default_value = "split")]
    mode: String,
    /// Context keys/values kept for replay: f32, f16, or none (recompute the context branch).
    #[arg(long, default_value = "f32")]
    kv: String,
    /// Write final target latents (key `latents`) and context latents (key `context`) here.
    #[arg(long)]
    save_latents: Option<PathBuf>,
    /// Also write the context (layout) images.
    #[arg(long)]
    save_context: bool,
    /// Also write grid.png: one row per image, context | final.
    #[arg(long)]
    grid: bool,
    /// Keep reference inversions (and their keys/values and maps) in this folder and reuse
    /// them in later runs with the same model, photo, steps and knobs.
    #[arg(long)]
    reference_cache: Option<PathBuf>,
    /// Also write the last step's masks (target, context, reference, blend) as PNGs.
    #[arg(long)]
    save_masks: bool,
    /// Output folder.
    #[arg(long, default_value = "out")]
    out: PathBuf,
}

fn settings(a: &Args) -> Result<MethodSettings> {
    Ok(MethodSettings {
        steps: a.steps,
        guidance: a.guidance,
        negative_prompt: a.negative_prompt.clone(),
        layout_fraction: a.layout_fraction,
        swap_start: a.swap_start,
        mask_threshold: a.mask_threshold,
        mask_factor: a.mask_factor,
        blend: a.blend.parse::<Blend>()?,
        blend_start: a.blend_start,
        mode: match a.mode.as_str() {
            "split" => SwapMode::Split,
            "concat" => SwapMode::Concat,
            m => {
                return Err(Error::invalid(
                    "mode",
                    format!("{m:?}; expected split or concat"),
                ));
            }
        },
        kv_policy: match a.kv.as_str() {
            "f32" => KvPolicy::KeepF32,
            "f16" => KvPolicy::KeepF16,
            "none" => KvPolicy::DontKeep,
            k => {
                return Err(Error::invalid(
                    "kv",
                    format!("{k:?}; expected f32, f16 or none"),
                ));
            }
        },
        ..MethodSettings::default()
    })
}

pub fn run(a: Args, quiet: bool) -> Result<()> {
    let settings = settings(&a)?;
    settings.validate()?;
    let stack = a
        .personalization
        .iter()
        .map(|s| Personalization::parse(s))
        .collect::<Result<Vec<_>>>()?;
    let device = a.model.device()?;
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io("creating", &a.out, e))?;
    let probe = a.out.join(".layret-write-test");
    std::fs::write(&probe, b"").map_err(|e| Error::io("writing to", &a.out, e))?;
    let _ = std::fs::remove_file(&probe);

    let mut bars = Bars::new(quiet);
    let t0 = Instant::now();
    let (dir, base) = a.model.load(&device)?;
    let models = ModelPair::stacked(base, &stack)?;
    bars.note(&format!(
        "loaded {}{} in {:.1}s",
        dir.display(),
        stack
            .iter()
            .map(|p| format!(" + {}", p.kind()))
            .collect::<String>(),
        t0.elapsed().as_secs_f64()
    ));
    let size = models.base.default_size();
    let (width, height) = (a.width.unwrap_or(size), a.height.unwrap_or(size));
    let (h, w) = models.base.latent_size(width, height)?;
    let references = a
        .reference
        .iter()
        .map(|p| load_reference_tensor(p, width, height, &device))
        .collect::<Result<Vec<_>>>()?;
    let k = a.num_samples;
    if k == 0 {
        return Err(Error::invalid("num-samples", "0; must be at least 1"));
    }
    let (noise, seed_text): (Tensor<4>, String) = match (&a.noise, a.seed) {
        (Some(p), _) => (
            load_tensor(p, "noise", [k, 4, h, w], &device)?,
            format!("noise file {}", p.display()),
        ),
        (None, s) => {
            let seed = s.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0)
            });
            if s.is_none() {
                bars.note(&format!("seed: {seed}"));
            }
            (
                models
                    .base
                    .initial_noise(&NoiseSource::Seed(seed), k, h, w)?,
                seed.to_string(),
            )
        }
    };

    let mut pipe = LayoutAndRetouch::new(
        layret::pipeline::StepBlendedLayout,
        layret::pipeline::MultiSourceRetouch {
            cache: match &a.reference_cache {
                Some(dir) => layret::pipeline::ReferenceCache::with_disk(dir),
                None => layret::pipeline::ReferenceCache::new(),
            },
            mask_log: None,
        },
    );
    let subject = Subject {
        phrase: a.phrase.clone(),
        class_phrase: a.class_phrase.clone(),
        references,
    };
    let request = GenerateRequest {
        prompts: a.prompt.clone(),
        num_samples: k,
        width,
        height,
        noise: NoiseSource::Tensor(noise),
        settings: settings.clone(),
        return_masks: a.save_masks,
    };
    let out = pipe.generate(&models, &subject, &request, &mut |p| bars.update(p.stage))?;
    let mut results: Vec<_> = out
        .into_iter()
        .map(|g| (g.prompt_index, g.sample, g.reference_index, g))
        .collect();
    bars.finish();
    results.sort_by_key(|(p, s, _, _)| (*p, *s));

    let mut files = Vec::new();
    for (p, s, r, g) in &results {
        let text = [
            ("prompt", a.prompt[*p].clone()),
            ("phrase", a.phrase.clone()),
            ("class", a.class_phrase.clone()),
            ("reference", a.reference[*r].display().to_string()),
            ("personalization", a.personalization.join(" ")),
            ("seed", seed_text.clone()),
            ("sample", s.to_string()),
            ("steps", a.steps.to_string()),
            ("guidance", a.guidance.to_string()),
            (
                "method",
                format!(
                    "layout-and-retouch layout_fraction={} swap_start={} mask_threshold={} mask_factor={} blend={} mode={}",
                    a.layout_fraction,
                    a.swap_start,
                    a.mask_threshold,
                    a.mask_factor,
                    a.blend,
                    a.mode
                ),
            ),
            ("model", a.model.model.clone()),
            ("software", format!("layret {}", env!("CARGO_PKG_VERSION"))),
        ];
        let name = format!("p{p}_s{s}");
        let path = a.out.join(format!("{name}.png"));
        save_png(&g.image, &path, &text)?;
        let mut entry = json!({"prompt_index": p, "prompt": a.prompt[*p], "sample": s, "reference": a.reference[*r], "image": format!("{name}.png")});
        if a.save_context {
            let f = format!("{name}_context.png");
            save_png(&g.context_image, &a.out.join(&f), &text)?;
            entry["context"] = json!(f);
        }
        if let Some(m) = &g.masks {
            for (kind, img) in [
                ("target", Some(&m.target)),
                ("context", Some(&m.context)),
                ("reference", Some(&m.reference)),
                ("blend", m.blend.as_ref()),
            ] {
                if let Some(img) = img {
                    let f = format!("{name}_mask_{kind}.png");
                    img.save(a.out.join(&f)).map_err(|e| Error::Image {
                        path: a.out.join(&f),
                        message: e.to_string(),
                    })?;
                    entry[format!("mask_{kind}")] = json!(f);
                }
            }
        }
        if !quiet {
            println!("{}", path.display());
        }
        files.push(entry);
    }
    if a.grid && !results.is_empty() {
        let (w, h) = (width as u32, height as u32);
        let mut grid = image::RgbImage::new(2 * w, h * results.len() as u32);
        for (row, (_, _, _, g)) in results.iter().enumerate() {
            image::imageops::replace(&mut grid, &g.context_image, 0, (row as u32 * h) as i64);
            image::imageops::replace(&mut grid, &g.image, w as i64, (row as u32 * h) as i64);
        }
        save_png(
            &grid,
            &a.out.join("grid.png"),
            &[("layout", "one row per image: context | final".into())],
        )?;
    }
    if let Some(path) = &a.save_latents {
        let lat = Tensor::cat(
            results
                .iter()
                .map(|(_, _, _, g)| g.latents.clone())
                .collect(),
            0,
        );
        let ctx = Tensor::cat(
            results
                .iter()
                .map(|(_, _, _, g)| g.context_latents.clone())
                .collect(),
            0,
        );
        save_tensors(path, &[("latents", lat), ("context", ctx)])?;
    }
    let manifest = json!({
        "software": format!("layret {}", env!("CARGO_PKG_VERSION")),
        "model": a.model.model,
        "personalization": a.personalization,
        "phrase": a.phrase,
        "class": a.class_phrase,
        "references": a.reference,
        "prompts": a.prompt,
        "num_samples": k,
        "seed": seed_text,
        "width": width,
        "height": height,
        "settings": {
            "steps": a.steps, "guidance": a.guidance, "negative_prompt": a.negative_prompt,
            "layout_fraction": a.layout_fraction, "lambda1": settings.lambda1(),
            "swap_start": a.swap_start, "mask_threshold": a.mask_threshold, "mask_factor": a.mask_factor,
            "blend": a.blend, "blend_start": settings.blend_start(), "mode": a.mode, "kv": a.kv,
        },
        "reference_cache": {"hits": pipe.retouch.cache.hits, "disk_hits": pipe.retouch.cache.disk_hits, "misses": pipe.retouch.cache.misses},
        "seconds": t0.elapsed().as_secs_f64(),
        "images": files,
    });
    let mpath = a.out.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| Error::invalid("manifest", e.to_string()))?;
    std::fs::write(&mpath, text).map_err(|e| Error::io("writing", &mpath, e))?;
    Ok(())
}
