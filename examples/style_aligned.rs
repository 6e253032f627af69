//! StyleAligned (Hertz et al., 2024) shared attention: a batch of prompts generated together,
//! every image's self-attention also reading the first (reference) image's keys and values,
//! with AdaIN aligning each image's queries and keys to the reference's statistics — so the
//! batch shares one style. Runs on layret's public sampling loop with a multi-row batch whose
//! rows have their own prompts.
//!
//! ```sh
//! cargo run --release --example style_aligned                  # tiny model → style_aligned.png
//! cargo run --release --example style_aligned -- out.png ~/models/sd-v1-5
//! ```

#![allow(clippy::single_range_in_vec_init)]

use std::path::Path;

use layret::attention::rows;
use layret::burn::tensor::{Device, Tensor};
use layret::core::processor::{
    AttentionProcessor, AttentionSite, BatchLayout, Branch, StepContext, default_attention,
};
use layret::core::sampling::{BatchText, SampleBatch, sample};
use layret::core::scheduler::Scheduler;
use layret::core::stable_diffusion::{LoadOptions, NoiseSource, StableDiffusion};

/// `(x − μ_x) / σ_x · σ_y + μ_y` over the token axis, per row, head and channel.
///
/// # Shapes
/// `x` `[n, H, L, d]`, `y` `[1, H, L', d]` → `[n, H, L, d]`.
pub fn adain(x: Tensor<4>, y: Tensor<4>) -> Tensor<4> {
    let eps = 1e-5;
    let stats = |t: Tensor<4>| {
        let mean = t.clone().mean_dim(2);
        let var = (t - mean.clone()).powi_scalar(2).mean_dim(2);
        (mean, (var + eps).sqrt())
    };
    let (mx, sx) = stats(x.clone());
    let (my, sy) = stats(y);
    (x - mx) / sx * sy + my
}

/// Shared attention: image 0 attends as usual; every other image attends over
/// `[K_0; AdaIN(K_i)]`, `[V_0; V_i]` with `AdaIN(Q_i)` (per CFG half).
#[derive(Default)]
pub struct SharedAttention {
    /// Calls that shared (for reporting).
    pub shared_calls: usize,
}

impl AttentionProcessor for SharedAttention {
    fn attend(
        &mut self,
        _site: &AttentionSite,
        ctx: &StepContext,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> layret::Result<Tensor<4>> {
        let layout = &ctx.layout;
        let mut halves = Vec::new();
        for half in layout.half_list() {
            let (q, k, v) = (
                rows::half(q.clone(), layout, half)?,
                rows::half(k.clone(), layout, half)?,
                rows::half(v.clone(), layout, half)?,
            );
            let n = q.dims()[0];
            let first = |t: &Tensor<4>| t.clone().slice([0..1]);
            let rest = |t: &Tensor<4>| t.clone().slice([1..n]);
            let (q0, k0, v0) = (first(&q), first(&k), first(&v));
            let own = default_attention(q0.clone(), k0.clone(), v0.clone());
            if n == 1 {
                halves.push(own);
                continue;
            }
            let qa = adain(rest(&q), q0);
            let ka = adain(rest(&k), k0.clone());
            let keys = Tensor::cat(vec![k0.repeat_dim(0, n - 1), ka], 2);
            let values = Tensor::cat(vec![v0.repeat_dim(0, n - 1), rest(&v)], 2);
            let shared = default_attention(qa, keys, values);
            halves.push(Tensor::cat(vec![own, shared], 0));
            self.shared_calls += 1;
        }
        Ok(Tensor::cat(halves, 0))
    }
}

/// Generate `prompts` (the first is the style reference) together with shared attention
/// (or independently, `share = false`); returns the images and the final latents.
pub fn run(
    model: &Path,
    prompts: &[&str],
    steps: usize,
    size: usize,
    share: bool,
) -> layret::Result<(Vec<image::RgbImage>, Tensor<4>)> {
    let sd = StableDiffusion::load(model, &Device::flex(), &LoadOptions::default())?;
    let den = sd.denoiser();
    let n = prompts.len();
    let text = BatchText::encode(&den, prompts, &vec![""; n])?;
    let batch = SampleBatch::new(text, BatchLayout::single(Branch::Main, n, true), 7.5);
    let mut sched = sd.ddim(steps, 0.0)?;
    let (h, w) = sd.latent_size(size, size)?;
    // Every image starts from the same noise, as StyleAligned's examples do.
    let noise = sd
        .initial_noise(&NoiseSource::Seed(7), 1, h, w)?
        .repeat_dim(0, n)
        * sched.init_noise_sigma();
    let latents = if share {
        let mut shared = SharedAttention::default();
        // Self-attention only: cross-attention keeps each image's own prompt.
        let mut router = layret::attention::Router::new();
        router.require(
            layret::attention::SiteSelector::new()
                .kind(layret::core::processor::AttentionKind::SelfAttention),
            &mut shared,
        );
        sample(
            &den,
            &batch,
            &mut sched,
            noise,
            &mut router,
            &mut layret::core::ignore_progress,
        )?
    } else {
        sample(
            &den,
            &batch,
            &mut sched,
            noise,
            &mut layret::core::processor::DefaultAttention,
            &mut layret::core::ignore_progress,
        )?
    };
    Ok((sd.decode_to_rgb8(latents.clone())?, latents))
}

fn main() -> layret::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| "style_aligned.png".into());
    let model = args
        .next()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sd1-tiny").into());
    let (steps, size) = if model.ends_with("sd1-tiny") {
        (6, 128)
    } else {
        (30, 512)
    };
    let prompts = [
        "a house, watercolor painting",
        "a cat, watercolor painting",
        "a bicycle, watercolor painting",
    ];
    let (images, _) = run(Path::new(&model), &prompts, steps, size, true)?;
    let s = size as u32;
    let mut strip = image::RgbImage::new(s * images.len() as u32, s);
    for (i, img) in images.iter().enumerate() {
        image::imageops::replace(&mut strip, img, (i as u32 * s) as i64, 0);
    }
    layret::core::image_io::save_png(&strip, out.as_ref(), &[("prompts", prompts.join(" | "))])?;
    println!(
        "{out}: {} images sharing the style of the first",
        images.len()
    );
    Ok(())
}
