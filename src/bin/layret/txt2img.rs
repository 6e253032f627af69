use std::path::{Path, PathBuf};
use std::time::Instant;

use layret::burn::tensor::Tensor;
use layret::core::image_io::save_png;
use layret::core::noise::{load_tensor, save_tensors};
use layret::core::personalization::Personalization;
use layret::core::stable_diffusion::{NoiseSource, Txt2ImgRequest};

use crate::model_args::ModelArgs;

use crate::progress::Bars;

/// The library's request defaults, which the flags show.
fn defaults() -> layret::core::stable_diffusion::Txt2ImgRequest {
    layret::core::stable_diffusion::Txt2ImgRequest::new("")
}

/// Text-to-image with Stable Diffusion (DDIM, classifier-free guidance), as diffusers'
/// StableDiffusionPipeline.
///
/// Examples:
///   layret txt2img --model tests/fixtures/sd1-tiny --prompt "a dog" --steps 5 --width 128 --height 128
///   layret txt2img --model ~/models/stable-diffusion-v1-5 --prompt "a red fox in snow" --seed 7 --out fox.png
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Personalize the model first (repeatable, applied in order): KIND:PATH with KIND ti
    /// (embedding: .safetensors, .bin, A1111 .pt; ti:PATH#TOKEN), dreambooth (folder or
    /// single file), custom-diffusion, lora (lora:PATH@SCALE). The personalized model alone:
    /// the baseline Layout-and-Retouch is compared against.
    #[arg(long)]
    personalization: Vec<String>,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// What not to draw (the unconditional half of guidance).
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// DDIM steps.
    #[arg(long, default_value_t = defaults().steps)]
    steps: usize,
    /// Classifier-free guidance scale (≤ 1 turns guidance off).
    #[arg(long, default_value_t = defaults().guidance)]
    guidance: f64,
    /// Image width, a multiple of 8 (default: the model's size, 512 for SD 1.5).
    #[arg(long)]
    width: Option<usize>,
    /// Image height, a multiple of 8 (default: the model's size).
    #[arg(long)]
    height: Option<usize>,
    /// Images to make.
    #[arg(long, default_value_t = defaults().num_images)]
    num_images: usize,
    /// Seed of the initial noise (default: a random one, printed).
    #[arg(long, conflicts_with = "noise")]
    seed: Option<u64>,
    /// Initial noise from a safetensors file (key `noise`, shape [N, 4, H/8, W/8]).
    #[arg(long)]
    noise: Option<PathBuf>,
    /// DDIM eta (0 = deterministic; DDIM only).
    #[arg(long, default_value_t = defaults().eta)]
    eta: f64,
    /// The sampler: ddim, dpmpp-2m, euler, euler-a, unipc, pndm, or auto (the one the model's
    /// scheduler_config.json names). Each matches the diffusers class of the same name;
    /// typical steps: DDIM 50, DPM++ 2M 20–25, Euler/Euler a 30, UniPC 20, PNDM 50.
    #[arg(long, default_value_t = defaults().sampler)]
    scheduler: layret::core::scheduler::SamplerKind,
    /// Karras sigmas (with dpmpp-2m, euler, unipc).
    #[arg(long)]
    karras: bool,
    /// Output PNG; with several images, `-N` is added before the extension.
    #[arg(long, default_value = "out.png")]
    out: PathBuf,
    /// Also write the final latents (key `latents`, before VAE decoding) to this safetensors file.
    #[arg(long)]
    save_latents: Option<PathBuf>,
}

/// `out.png` → `out-3.png`.
pub fn numbered(path: &Path, i: usize, n: usize) -> PathBuf {
    if n == 1 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    path.with_file_name(format!("{stem}-{i}.{ext}"))
}

pub fn run(a: Args, quiet: bool) -> layret::Result<()> {
    let device = a.model.device()?;
    let mut bars = Bars::new(quiet);
    let t0 = Instant::now();
    let (dir, base) = a.model.load(&device)?;
    let stack = a
        .personalization
        .iter()
        .map(|s| Personalization::parse(s))
        .collect::<layret::Result<Vec<_>>>()?;
    let sd = if stack.is_empty() {
        base
    } else {
        Personalization::apply_all(&stack, &base)?.to_model(&base)?
    };
    bars.note(&format!(
        "loaded {}{} in {:.1}s",
        dir.display(),
        stack
            .iter()
            .map(|p| format!(" + {}", p.kind()))
            .collect::<String>(),
        t0.elapsed().as_secs_f64()
    ));
    let size = sd.default_size();
    let (width, height) = (a.width.unwrap_or(size), a.height.unwrap_or(size));
    let (h, w) = sd.latent_size(width, height)?;
    let (noise, seed_text) = match (&a.noise, a.seed) {
        (Some(path), _) => {
            let t: Tensor<4> = load_tensor(
                path,
                "noise",
                [a.num_images, sd.unet().in_channels, h, w],
                &device,
            )?;
            (
                NoiseSource::Tensor(t),
                format!("noise file {}", path.display()),
            )
        }
        (None, Some(s)) => (NoiseSource::Seed(s), s.to_string()),
        (None, None) => {
            let s = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            bars.note(&format!("seed: {s}"));
            (NoiseSource::Seed(s), s.to_string())
        }
    };
    let req = Txt2ImgRequest {
        prompt: a.prompt.clone(),
        negative_prompt: a.negative_prompt.clone(),
        guidance: a.guidance,
        steps: a.steps,
        width,
        height,
        num_images: a.num_images,
        noise,
        eta: a.eta,
        sampler: a.scheduler,
        karras: a.karras,
    };
    let sampler = a.scheduler.resolve(sd.scheduler_config());
    let sampler_name = sampler.display_name(
        a.karras || (sd.scheduler_config().use_karras_sigmas && sampler.supports_karras()),
    );
    let out = sd.txt2img(&req, &mut |p| bars.update(p))?;
    bars.finish();
    if let Some(path) = &a.save_latents {
        save_tensors(path, &[("latents", out.latents.clone())])?;
    }
    let mut fields = vec![
        ("Steps", a.steps.to_string()),
        ("Sampler", sampler_name.clone()),
        ("CFG scale", a.guidance.to_string()),
    ];
    if let Some(s) = a.seed.filter(|_| a.noise.is_none()) {
        fields.push(("Seed", s.to_string()));
    } else if a.noise.is_none() {
        fields.push(("Seed", seed_text.clone()));
    }
    fields.extend([
        ("Size", format!("{width}x{height}")),
        ("Model", a.model.model.clone()),
        ("Eta", a.eta.to_string()),
        ("Version", format!("layret {}", env!("CARGO_PKG_VERSION"))),
    ]);
    if !a.personalization.is_empty() {
        fields.push(("Personalization", a.personalization.join(" ")));
    }
    let text = [
        (
            "parameters",
            layret::core::image_io::a1111_parameters(&a.prompt, &a.negative_prompt, &fields),
        ),
        ("prompt", a.prompt.clone()),
        ("negative_prompt", a.negative_prompt.clone()),
        ("seed", seed_text),
        ("steps", a.steps.to_string()),
        ("guidance", a.guidance.to_string()),
        ("eta", a.eta.to_string()),
        ("size", format!("{width}x{height}")),
        ("model", a.model.model.clone()),
        ("personalization", a.personalization.join(" ")),
        ("sampler", sampler_name.clone()),
        ("scheduler", sampler.name().to_string()),
        ("software", format!("layret {}", env!("CARGO_PKG_VERSION"))),
    ];
    for (i, img) in out.images.iter().enumerate() {
        let path = numbered(&a.out, i, out.images.len());
        save_png(img, &path, &text)?;
        if !quiet {
            println!("{}", path.display());
        }
    }
    Ok(())
}
