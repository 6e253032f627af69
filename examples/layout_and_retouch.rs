//! Personalized generation with Layout-and-Retouch.
//!
//! ```sh
//! cargo run --release --example layout_and_retouch              # tiny fixtures, synthetic photo
//! cargo run --release --example layout_and_retouch -- ~/models/sd-v1-5 dreambooth:~/models/sks-dog \
//!     "sks dog" dog photo.jpg "a sks dog surfing a wave"
//! ```

use layret::burn::tensor::Device;
use layret::core::image_io::{from_rgb8, save_png};
use layret::core::personalization::Personalization;
use layret::core::stable_diffusion::{LoadOptions, NoiseSource, StableDiffusion};
use layret::pipeline::*;

fn main() -> layret::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let device = Device::flex();
    let fx = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let (model, pers, phrase, class, reference, prompt, size, steps) = if a.len() >= 6 {
        (
            a[0].clone(),
            a[1].clone(),
            a[2].clone(),
            a[3].clone(),
            Some(a[4].clone()),
            a[5].clone(),
            512,
            50,
        )
    } else {
        (
            format!("{fx}/sd1-tiny"),
            format!("ti:{fx}/personalization/ti_cat_toy.safetensors"),
            "<cat-toy>".into(),
            "cat toy".into(),
            None,
            "a <cat-toy> on the beach".into(),
            128,
            10,
        )
    };
    let base = StableDiffusion::load(&model, &device, &LoadOptions::default())?;
    let models = ModelPair::new(base, &Personalization::parse(&pers)?)?;
    let reference = match reference {
        Some(path) => load_reference_tensor(path.as_ref(), size, size, &device)?,
        // No photo given: a synthetic one (an orange disc on a gradient).
        None => {
            let img = image::RgbImage::from_fn(size as u32, size as u32, |x, y| {
                let (dx, dy) = (x as i32 - 64, y as i32 - 64);
                if dx * dx + dy * dy < 1600 {
                    image::Rgb([220, 120, 30])
                } else {
                    image::Rgb([x as u8, y as u8, 128])
                }
            });
            from_rgb8(&[img], &device)?
        }
    };
    let subject = Subject {
        phrase,
        class_phrase: class,
        references: vec![reference],
    };
    let mut settings = MethodSettings::default().with_steps(steps);
    if size == 128 {
        settings.mask_factor = 2; // the tiny UNet has cross-attention at 8×8, not 4×4
    }
    let request = GenerateRequest::new(vec![prompt], size, size)
        .with_samples(2)
        .with_noise(NoiseSource::Seed(7))
        .with_settings(settings)
        .with_masks(false);
    let out = LayoutAndRetouch::default().generate(&models, &subject, &request, &mut |p| {
        eprint!(
            "\r{:>9} {}/{}  (request {}/{})   ",
            p.stage.stage, p.stage.step, p.stage.total, p.done, p.total
        );
        std::ops::ControlFlow::Continue(())
    })?;
    eprintln!();
    for g in &out {
        let name = format!("lar_s{}.png", g.sample);
        save_png(&g.image, name.as_ref(), &[])?;
        save_png(
            &g.context_image,
            format!("lar_s{}_context.png", g.sample).as_ref(),
            &[],
        )?;
        println!("{name}");
    }
    Ok(())
}
