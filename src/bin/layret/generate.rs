use std::path::PathBuf;
use std::time::Instant;

use layret::attention::{KvPolicy, SwapMode};
use layret::burn::tensor::Tensor;
use layret::core::image_io::save_png;
use layret::core::noise::{load_tensor, save_tensors};
use layret::core::personalization::Personalization;
use layret::core::stable_diffusion::NoiseSource;

use crate::model_args::ModelArgs;
use layret::manifest::{
    CacheRecord, ImageEntry, Manifest, RunKey, SettingsRecord, finished_images, image_key,
};
use layret::pipeline::{
    Blend, GenerateRequest, LayoutAndRetouch, MethodSettings, ModelPair, Subject,
    load_reference_tensor,
};
use layret::{Error, Result};
use std::collections::BTreeMap;

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
    #[arg(long, default_value_t = defaults().steps)]
    steps: usize,
    /// Guidance scale.
    #[arg(long, default_value_t = defaults().guidance)]
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
    #[arg(long, default_value_t = defaults().layout_fraction)]
    layout_fraction: f64,
    /// Steps of structure lock before the two-source swap (S).
    #[arg(long, default_value_t = defaults().swap_start)]
    swap_start: usize,
    /// Mask threshold τ on the normalized maps.
    #[arg(long, default_value_t = defaults().mask_threshold)]
    mask_threshold: f64,
    /// Mask level = latent / this factor.
    #[arg(long, default_value_t = defaults().mask_factor)]
    mask_factor: usize,
    /// Latent blending: otsu, off, or a fixed threshold.
    #[arg(long, default_value_t = defaults().blend)]
    blend: Blend,
    /// First blended step (default round(0.2·N)).
    #[arg(long)]
    blend_start: Option<usize>,
    /// split (two masked softmaxes) or concat (one softmax over target, context, reference).
    #[arg(long, default_value_t = defaults().mode)]
    mode: SwapMode,
    /// Context keys/values kept for replay: f32, f16, or recompute (also: none; recompute the
    /// context branch).
    #[arg(long, default_value_t = defaults().kv_policy)]
    kv: KvPolicy,
    /// Experimental: the sampler of the context and target branches (ddim, the method's
    /// default; dpmpp-2m, unipc, euler). The reference is DDIM-inverted onto its timesteps
    /// (docs/samplers.md); pndm and euler-a are refused.
    #[arg(long, default_value_t = defaults().sampler)]
    sampler: layret::core::scheduler::SamplerKind,
    /// Karras sigmas for --sampler dpmpp-2m or unipc.
    #[arg(long)]
    karras: bool,
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
    /// Output folder. Each image is written as soon as it is finished (atomically) and
    /// listed in manifest.json; running the same command again skips the images already
    /// there (a killed or cancelled run finishes where it stopped).
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Regenerate and overwrite images that already exist with the same settings.
    #[arg(long)]
    overwrite: bool,
}

/// The library's defaults, which the flags show and start from.
fn defaults() -> MethodSettings {
    MethodSettings::default()
}

fn settings(a: &Args) -> MethodSettings {
    defaults()
        .with_steps(a.steps)
        .with_guidance(a.guidance)
        .with_negative_prompt(a.negative_prompt.clone())
        .with_layout_fraction(a.layout_fraction)
        .with_swap_start(a.swap_start)
        .with_mask_threshold(a.mask_threshold)
        .with_mask_factor(a.mask_factor)
        .with_blend(a.blend)
        .with_blend_start(a.blend_start)
        .with_mode(a.mode)
        .with_kv_policy(a.kv)
        .with_sampler(a.sampler, a.karras)
}

impl Args {
    /// What identifies the models of a request (its model flags and personalizations).
    pub fn model_key(&self) -> String {
        format!("{:?}\n{:?}", self.model, self.personalization)
    }
}

/// Models loaded by earlier requests of this process (`layret batch`), by their flags.
#[derive(Default)]
pub struct LoadedModels {
    entries: std::collections::HashMap<String, ModelPair>,
}

pub fn run(a: Args, quiet: bool) -> Result<()> {
    run_with(a, quiet, &mut LoadedModels::default())
}

/// [`run`], reusing `loaded` models when the request's model flags match.
pub fn run_with(a: Args, quiet: bool, loaded: &mut LoadedModels) -> Result<()> {
    let settings = settings(&a);
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
    for r in &a.reference {
        if !r.is_file() {
            return Err(Error::MissingFile {
                what: "reference image".into(),
                path: r.clone(),
            });
        }
    }

    let mut bars = Bars::new(quiet);
    let t0 = Instant::now();
    let key = a.model_key();
    if !loaded.entries.contains_key(&key) {
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
        // One model pair at a time: a batch sorted by model reuses it, others reload.
        loaded.entries.clear();
        loaded.entries.insert(key.clone(), models);
    }
    let models = loaded
        .entries
        .get(&key)
        .ok_or_else(|| Error::invalid("models", "lost from the cache"))?;
    let size = models.base().default_size();
    let (width, height) = (a.width.unwrap_or(size), a.height.unwrap_or(size));
    let (h, w) = models.base().latent_size(width, height)?;
    let references = a
        .reference
        .iter()
        .map(|p| load_reference_tensor(p, width, height, &device))
        .collect::<Result<Vec<_>>>()?;
    let k = a.num_samples;
    if k == 0 {
        return Err(Error::invalid("num-samples", "0; must be at least 1"));
    }
    let c = models.base().unet().in_channels;
    let (noise, seed_text, seed): (Tensor<4>, String, Option<u64>) = match (&a.noise, a.seed) {
        (Some(p), _) => (
            load_tensor(p, "noise", [k, c, h, w], &device)?,
            format!("noise file {}", p.display()),
            None,
        ),
        (None, s) => {
            let seed = s.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0)
            });
            if s.is_none() {
                bars.note(&format!(
                    "seed: {seed} (pass --seed {seed} to resume or repeat this run)"
                ));
            }
            (
                models
                    .base()
                    .initial_noise(&NoiseSource::Seed(seed), k, h, w)?,
                seed.to_string(),
                Some(seed),
            )
        }
    };

    let request = GenerateRequest::new(a.prompt.clone(), width, height)
        .with_samples(k)
        .with_noise(NoiseSource::Tensor(noise.clone()))
        .with_settings(settings.clone())
        .with_masks(a.save_masks);
    for w in request.warnings() {
        bars.note(&format!("warning: {w}"));
    }

    let method = settings.summary();
    let sampler_name = settings
        .sampler
        .resolve(models.base().scheduler_config())
        .display_name(settings.karras);
    let dtype_names = (
        layret::core::host::dtype_name(models.base().unet().dtype()),
        layret::core::host::dtype_name(models.base().vae().dtype()),
    );
    let manifest = |entries: &BTreeMap<(usize, usize), ImageEntry>,
                    complete: bool,
                    cache: Option<CacheRecord>|
     -> Result<()> {
        Manifest {
            software: format!("layret {}", env!("CARGO_PKG_VERSION")),
            model: a.model.model.clone(),
            personalization: a.personalization.clone(),
            phrase: a.phrase.clone(),
            class: a.class_phrase.clone(),
            references: a.reference.clone(),
            prompts: a.prompt.clone(),
            num_samples: k,
            seed: seed_text.clone(),
            width,
            height,
            dtype: dtype_names.0.into(),
            vae_dtype: dtype_names.1.into(),
            settings: SettingsRecord::from(&settings),
            complete,
            reference_cache: cache,
            images: entries.values().cloned().collect(),
        }
        .write(&a.out)
    };

    // Resume: the images a previous run of the same command finished.
    let run = RunKey {
        models,
        phrase: &a.phrase,
        class_phrase: &a.class_phrase,
        references: &references,
        noise: &noise,
        settings: &settings,
        size: (width, height),
    }
    .text()?;
    let key_of = |p: usize, s: usize| a.prompt.get(p).map(|t| image_key(&run, t, s));
    let mut entries = if a.overwrite {
        Default::default()
    } else {
        finished_images(&a.out, &key_of)
    };
    let pending: Vec<usize> = (0..a.prompt.len())
        .filter(|&p| (0..k).any(|s| !entries.contains_key(&(p, s))))
        .collect();
    let resumed = entries.len();
    if resumed > 0 {
        bars.note(&format!(
            "resuming: {resumed} of {} images already in {} (--overwrite redoes them)",
            a.prompt.len() * k,
            a.out.display()
        ));
    }

    if pending.is_empty() {
        manifest(&entries, true, None)?;
        bars.note(&format!(
            "all {} images are already in {}; nothing to do (--overwrite redoes them)",
            entries.len(),
            a.out.display()
        ));
        return Ok(());
    }
    let mut pipe = LayoutAndRetouch::new(
        layret::pipeline::StepBlendedLayout,
        layret::pipeline::MultiSourceRetouch::with_cache(std::sync::Arc::new(
            match &a.reference_cache {
                Some(dir) => layret::pipeline::ReferenceCache::with_disk(dir),
                None => layret::pipeline::ReferenceCache::temporary_in(&a.out),
            },
        )),
    );
    let subject = Subject {
        phrase: a.phrase.clone(),
        class_phrase: a.class_phrase.clone(),
        references,
    };
    let mut sub_request = request;
    sub_request.prompts = pending.iter().map(|&p| a.prompt[p].clone()).collect();
    let mut generated: Vec<(
        usize,
        usize,
        Tensor<4>,
        Tensor<4>,
        image::RgbImage,
        image::RgbImage,
    )> = Vec::new();
    let mut saved = Vec::new();
    let shared = std::cell::RefCell::new(bars);
    let result = pipe.generate_each(
        models,
        &subject,
        &sub_request,
        &mut |p| shared.borrow_mut().update_request(p),
        &mut |g| {
            let p = pending[g.prompt_index];
            let s = g.sample;
            let r = g.reference_index;
            let prompt = &a.prompt[p];
            let mut fields = vec![
                ("Steps", settings.steps.to_string()),
                ("Sampler", sampler_name.clone()),
                ("CFG scale", settings.guidance.to_string()),
            ];
            if let Some(seed) = seed {
                fields.push(("Seed", seed.to_string()));
            }
            fields.extend([
                ("Size", format!("{width}x{height}")),
                ("Model", a.model.model.clone()),
                ("Personalization", a.personalization.join(" ")),
                ("Sample", s.to_string()),
                ("Layout-and-Retouch", method.clone()),
                ("Version", format!("layret {}", env!("CARGO_PKG_VERSION"))),
            ]);
            let text = [
                (
                    "parameters",
                    layret::core::image_io::a1111_parameters(prompt, &a.negative_prompt, &fields),
                ),
                ("prompt", prompt.clone()),
                ("negative_prompt", a.negative_prompt.clone()),
                ("phrase", a.phrase.clone()),
                ("class", a.class_phrase.clone()),
                ("reference", a.reference[r].display().to_string()),
                ("personalization", a.personalization.join(" ")),
                ("seed", seed_text.clone()),
                ("sample", s.to_string()),
                ("steps", settings.steps.to_string()),
                ("guidance", settings.guidance.to_string()),
                ("method", method.clone()),
                ("model", a.model.model.clone()),
                ("software", format!("layret {}", env!("CARGO_PKG_VERSION"))),
            ];
            let name = format!("p{p}_s{s}");
            let path = a.out.join(format!("{name}.png"));
            let mut entry = ImageEntry {
                prompt_index: p,
                prompt: prompt.clone(),
                sample: s,
                reference: a.reference[r].clone(),
                image: format!("{name}.png"),
                key: image_key(&run, prompt, s),
                context: None,
                mask_target: None,
                mask_context: None,
                mask_reference: None,
                mask_blend: None,
            };
            if a.save_context {
                let f = format!("{name}_context.png");
                save_png(&g.context_image, &a.out.join(&f), &text)?;
                entry.context = Some(f);
            }
            if let Some(m) = &g.masks {
                for (kind, img, slot) in [
                    ("target", Some(&m.target), &mut entry.mask_target),
                    ("context", Some(&m.context), &mut entry.mask_context),
                    ("reference", Some(&m.reference), &mut entry.mask_reference),
                    ("blend", m.blend.as_ref(), &mut entry.mask_blend),
                ] {
                    if let Some(img) = img {
                        let f = format!("{name}_mask_{kind}.png");
                        layret::core::image_io::save_gray_png(img, &a.out.join(&f), &[])?;
                        *slot = Some(f);
                    }
                }
            }
            // Listed first, then the image: every PNG present is in the manifest (a kill in
            // between leaves an entry whose image is missing, which a rerun redoes).
            entries.insert((p, s), entry);
            manifest(&entries, false, None)?;
            save_png(&g.image, &path, &text)?;
            if !quiet {
                shared.borrow_mut().println(&path.display().to_string());
            }
            saved.push(path);
            generated.push((p, s, g.latents, g.context_latents, g.image, g.context_image));
            Ok(())
        },
    );
    let mut bars = shared.into_inner();
    bars.finish();
    let cache = &pipe.retouch.cache;
    for w in cache.take_warnings() {
        bars.note(&format!("warning: {w}"));
    }
    let stats = Some(CacheRecord::from(cache.stats()));
    match result {
        Ok(()) => {}
        Err(e @ Error::Cancelled { .. }) => {
            manifest(&entries, false, stats)?;
            eprintln!(
                "cancelled: {} image(s) saved in this run, {} in all in {} (manifest.json lists them); run the same command again to finish",
                saved.len(),
                entries.len(),
                a.out.display()
            );
            return Err(e);
        }
        Err(e) => {
            manifest(&entries, false, stats)?;
            return Err(e);
        }
    }
    manifest(&entries, true, stats)?;
    generated.sort_by_key(|g| (g.0, g.1));
    if a.grid {
        // Rows in prompt, sample order: this run's images, or the files of resumed ones.
        let (gw, gh) = (width as u32, height as u32);
        let mut rows: Vec<(image::RgbImage, image::RgbImage)> = Vec::new();
        for p in 0..a.prompt.len() {
            for s in 0..k {
                if let Some(g) = generated.iter().find(|g| g.0 == p && g.1 == s) {
                    rows.push((g.5.clone(), g.4.clone()));
                    continue;
                }
                let file = |n: String| image::open(a.out.join(n)).ok().map(|i| i.to_rgb8());
                if let (Some(c), Some(f)) = (
                    file(format!("p{p}_s{s}_context.png")),
                    file(format!("p{p}_s{s}.png")),
                ) {
                    rows.push((c, f));
                }
            }
        }
        if rows.len() == a.prompt.len() * k {
            let mut grid = image::RgbImage::new(2 * gw, gh * rows.len() as u32);
            for (i, (context, image)) in rows.iter().enumerate() {
                image::imageops::replace(&mut grid, context, 0, (i as u32 * gh) as i64);
                image::imageops::replace(&mut grid, image, gw as i64, (i as u32 * gh) as i64);
            }
            save_png(
                &grid,
                &a.out.join("grid.png"),
                &[("layout", "one row per image: context | final".into())],
            )?;
        } else {
            bars.note("grid.png not written: the context images of resumed prompts were not saved (--save-context)");
        }
    }
    if let Some(path) = &a.save_latents {
        if resumed == 0 {
            let lat = Tensor::cat(generated.iter().map(|g| g.2.clone()).collect(), 0);
            let ctx = Tensor::cat(generated.iter().map(|g| g.3.clone()).collect(), 0);
            save_tensors(path, &[("latents", lat), ("context", ctx)])?;
        } else {
            bars.note(&format!(
                "{} not written: {resumed} image(s) were resumed, not generated (--overwrite regenerates all)",
                path.display()
            ));
        }
    }
    Ok(())
}
