//! A user-written `LayoutStage`: instead of generating the context image, take one the user
//! supplies, DDIM-invert it, and hand its trajectory to the standard retouch stage. (Without
//! recorded keys/values the retouch stage recomputes the context branch.)
//!
//! ```sh
//! cargo run --release --example custom_layout_stage            # tiny fixtures, synthetic images
//! ```

use layret::attention::{KvPolicy, Router};
use layret::burn::tensor::{Device, Tensor};
use layret::core::image_io::{from_rgb8, save_png};
use layret::core::personalization::Personalization;
use layret::core::stable_diffusion::{LoadOptions, NoiseSource, StableDiffusion};
use layret::pipeline::*;

/// Uses `image` (`[1, 3, H, W]`) as the layout of every sample.
struct GivenContext {
    image: Tensor<4>,
}

impl LayoutStage for GivenContext {
    fn layout(
        &mut self,
        models: &ModelPair,
        request: &LayoutRequest,
        hooks: &mut Router,
        progress: &mut ProgressFn,
    ) -> layret::Result<LayoutResult> {
        let s = &request.settings;
        let n = request.noise.dims()[0];
        let x = models.base().encode_image(self.image.clone())?;
        // Invert with the vanilla model on the class prompt; z^c_k are the inverted latents in
        // sampling order, and z^c_N the image's own latent.
        let inv = models.base().invert(
            x.clone(),
            &request.prompts.class,
            s.steps,
            hooks, // the user's layout hooks see the inversion's passes
            progress,
        )?;
        let mut trajectory: Vec<Tensor<4>> = inv
            .into_iter()
            .rev()
            .map(|(_, z)| z.repeat_dim(0, n))
            .collect();
        trajectory.push(x.repeat_dim(0, n));
        Ok(LayoutResult {
            request: request.clone(),
            trajectory,
            maps: Vec::new(),
            kv: None, // the retouch stage recomputes the context branch
            lambda1: s.lambda1(),
        })
    }
}

fn disc(size: u32, color: [u8; 3], device: &Device) -> layret::Result<Tensor<4>> {
    let img = image::RgbImage::from_fn(size, size, |x, y| {
        let (dx, dy) = (x as i32 - 50, y as i32 - 70);
        if dx * dx + dy * dy < 900 {
            image::Rgb(color)
        } else {
            image::Rgb([40, (y / 2) as u8, 200])
        }
    });
    from_rgb8(&[img], device)
}

fn main() -> layret::Result<()> {
    let device = Device::flex();
    let fx = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let base = StableDiffusion::load(format!("{fx}/sd1-tiny"), &device, &LoadOptions::default())?;
    let models = ModelPair::new(
        base,
        &Personalization::parse(&format!("ti:{fx}/personalization/ti_cat_toy.safetensors"))?,
    )?;
    let subject = Subject {
        phrase: "<cat-toy>".into(),
        class_phrase: "cat toy".into(),
        references: vec![disc(128, [230, 140, 20], &device)?],
    };
    let request = GenerateRequest::new(["a <cat-toy> on the beach"], 128, 128)
        .with_samples(1)
        .with_noise(NoiseSource::Seed(3))
        .with_settings(
            MethodSettings::default()
                .with_steps(10)
                .with_mask_factor(2)
                .with_kv_policy(KvPolicy::Recompute),
        )
        .with_masks(false);
    let mut pipe = LayoutAndRetouch::new(
        GivenContext {
            image: disc(128, [20, 200, 60], &device)?,
        },
        MultiSourceRetouch::new(),
    );
    let out = pipe.generate(
        &models,
        &subject,
        &request,
        &mut layret::core::ignore_progress,
    )?;
    save_png(&out[0].image, "custom_layout.png".as_ref(), &[])?;
    println!("custom_layout.png");
    Ok(())
}
