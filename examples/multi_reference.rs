//! FreeCustom-style multi-reference self-attention (Ding et al., 2024): one target image
//! composed from two reference concepts, each given as a photo with a mask. The references
//! run beside the target in one batch — each pinned every step to its photo noised to the
//! current timestep — and the target's self-attention reads its own keys plus each
//! reference's keys inside that reference's mask, weighted by `w` through an additive bias
//! (`ln w` inside the mask, `−∞` outside): layret's attention kernel with a bias.
//!
//! ```sh
//! cargo run --release --example multi_reference              # tiny model → multi_reference.png
//! cargo run --release --example multi_reference -- out.png
//! ```

#![allow(clippy::single_range_in_vec_init)]

use std::path::Path;

use layret::attention::{Router, SiteSelector, masks, rows};
use layret::burn::tensor::{Device, Tensor};
use layret::core::image_io::from_rgb8;
use layret::core::nn::{AttentionMask, scaled_dot_product_attention};
use layret::core::noise::seeded_noise;
use layret::core::processor::{
    AttentionKind, AttentionProcessor, AttentionSite, BatchLayout, Branch, StepContext,
    default_attention,
};
use layret::core::sampling::{BatchText, SampleBatch, sample_with};
use layret::core::scheduler::Scheduler;
use layret::core::stable_diffusion::{LoadOptions, NoiseSource, StableDiffusion};

/// Multi-reference self-attention for branch [`Branch::Target`] over sources
/// `Source(0..R)`, each with a mask `[1, 1, h, w]` at any size.
pub struct MultiReference {
    /// The references' masks (1 = the concept).
    pub masks: Vec<Tensor<4>>,
    /// The weight `w` of reference tokens inside their masks.
    pub weight: f64,
    /// Calls handled.
    pub calls: usize,
}

impl AttentionProcessor for MultiReference {
    fn attend(
        &mut self,
        site: &AttentionSite,
        ctx: &StepContext,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> layret::Result<Tensor<4>> {
        let layout = &ctx.layout;
        let l = site.tokens();
        let device = q.device();
        // Bias over [K_t; K_0; …; K_{R-1}]: 0 on the target's own keys, ln w inside each
        // reference's mask, −∞ outside it.
        let mut parts = vec![Tensor::<2>::zeros([1, l], &device)];
        for m in &self.masks {
            let at = masks::mask_at_site(m.clone(), site); // [1, l] of 0/1
            let inside = at.clone().equal_elem(1.0);
            parts.push(
                Tensor::<2>::full([1, l], f32::NEG_INFINITY, &device)
                    .mask_fill(inside, self.weight.ln()),
            );
        }
        let bias = Tensor::cat(parts, 1).reshape([1, 1, 1, l * (self.masks.len() + 1)]);
        let mut out = default_attention(q.clone(), k.clone(), v.clone());
        for half in layout.half_list() {
            let tr = layout.rows(half, Branch::Target)?;
            let mut ks = vec![k.clone().slice([tr.clone()])];
            let mut vs = vec![v.clone().slice([tr.clone()])];
            for r in 0..self.masks.len() {
                let sr = layout.rows(half, Branch::Source(r as u16))?;
                ks.push(k.clone().slice([sr.clone()]));
                vs.push(v.clone().slice([sr]));
            }
            let o = scaled_dot_product_attention(
                q.clone().slice([tr.clone()]),
                Tensor::cat(ks, 2),
                Tensor::cat(vs, 2),
                AttentionMask::Bias(bias.clone()),
            );
            out = rows::put_rows(out, tr, o);
        }
        self.calls += 1;
        Ok(out)
    }
}

/// A synthetic reference photo: a colored disc (the concept) on a plain background, and its
/// mask.
pub fn reference(
    size: u32,
    color: [u8; 3],
    center: (i32, i32),
) -> (image::RgbImage, image::GrayImage) {
    let r2 = (size as i32 / 4).pow(2);
    let inside = |x: u32, y: u32| {
        let (dx, dy) = (x as i32 - center.0, y as i32 - center.1);
        dx * dx + dy * dy < r2
    };
    let img = image::RgbImage::from_fn(size, size, |x, y| {
        if inside(x, y) {
            image::Rgb(color)
        } else {
            image::Rgb([230, 230, 220])
        }
    });
    let mask = image::GrayImage::from_fn(size, size, |x, y| {
        image::Luma([if inside(x, y) { 255 } else { 0 }])
    });
    (img, mask)
}

/// Compose `target` from `references` (photo, mask, prompt); `weight = None` samples the
/// target alone (no multi-reference attention). Returns the target image.
pub fn run(
    model: &Path,
    target: &str,
    references: &[(image::RgbImage, image::GrayImage, &str)],
    steps: usize,
    weight: Option<f64>,
) -> layret::Result<image::RgbImage> {
    let device = Device::flex();
    let sd = StableDiffusion::load(model, &device, &LoadOptions::default())?;
    let (w, h) = references[0].0.dimensions();
    let (lh, lw) = sd.latent_size(w as usize, h as usize)?;
    let den = sd.denoiser();
    let r = references.len();
    let mut branches = vec![Branch::Target];
    branches.extend((0..r).map(|i| Branch::Source(i as u16)));
    let prompts: Vec<&str> = std::iter::once(target)
        .chain(references.iter().map(|x| x.2))
        .collect();
    let text = BatchText::encode(&den, &prompts, &vec![""; prompts.len()])?;
    let batch = SampleBatch::new(text, BatchLayout::new(branches, 1, true)?, 7.5);
    let sched = sd.ddim(steps, 0.0)?;
    // The references' clean latents and their fixed noise.
    let x_ref = sd.encode_image(from_rgb8(
        &references.iter().map(|x| x.0.clone()).collect::<Vec<_>>(),
        &device,
    )?)?;
    let eps_ref = seeded_noise(11, [r, 4, lh, lw], &device);
    let z0 = sd.initial_noise(&NoiseSource::Seed(5), 1 + r, lh, lw)? * sched.init_noise_sigma();
    let mut pin = |_: usize, t: f64, z: Tensor<4>| -> layret::Result<Tensor<4>> {
        // Source rows follow q(z_t | x_r): √ᾱ_t·x_r + √(1 − ᾱ_t)·ε.
        let a = sched.alpha_bar(t as i64) as f64; // DDIM: integer timesteps
        let noised = x_ref.clone() * a.sqrt() + eps_ref.clone() * (1.0 - a).sqrt();
        Ok(rows::put_rows(z, 1..1 + r, noised))
    };
    // The sampler keeps state while it runs; `pin` reads ᾱ from the original.
    let mut sampler = sched.clone();
    let latents = match weight {
        Some(weight) => {
            let masks = references
                .iter()
                .map(|x| {
                    let m = layret::core::array::gray_to_array(&x.1).mapv(|v| f32::from(v) / 255.0);
                    layret::core::array::array_to_tensor(&m, &device)
                        .reshape([1, 1, h as usize, w as usize])
                })
                .collect();
            let mut mrsa = MultiReference {
                masks,
                weight,
                calls: 0,
            };
            let mut router = Router::new();
            // Decoder self-attention, where appearance is formed.
            router.require(
                SiteSelector::new()
                    .path("up_blocks.*")
                    .kind(AttentionKind::SelfAttention),
                &mut mrsa,
            );
            sample_with(
                &den,
                &batch,
                &mut sampler,
                z0,
                &mut router,
                &mut pin,
                &mut layret::core::ignore_progress,
            )?
        }
        None => sample_with(
            &den,
            &batch,
            &mut sampler,
            z0,
            &mut layret::core::processor::DefaultAttention,
            &mut pin,
            &mut layret::core::ignore_progress,
        )?,
    };
    Ok(sd.decode_to_rgb8(latents.slice([0..1]))?.remove(0))
}

fn main() -> layret::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| "multi_reference.png".into());
    let model = args
        .next()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sd1-tiny").into());
    let (size, steps) = if model.ends_with("sd1-tiny") {
        (128, 6)
    } else {
        (512, 30)
    };
    let s = size as i32;
    let (toy, toy_mask) = reference(size, [220, 120, 30], (s / 2, 2 * s / 3));
    let (hat, hat_mask) = reference(size, [40, 60, 200], (s / 2, s / 4));
    let image = run(
        Path::new(&model),
        "a cat toy wearing a hat",
        &[
            (toy, toy_mask, "a photo of a cat toy"),
            (hat, hat_mask, "a photo of a hat"),
        ],
        steps,
        Some(3.0),
    )?;
    layret::core::image_io::save_png(
        &image,
        out.as_ref(),
        &[("method", "multi-reference self-attention".into())],
    )?;
    println!("{out}: a target composed from two masked references");
    Ok(())
}
