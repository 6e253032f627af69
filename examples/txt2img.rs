//! Text-to-image with layret's Stable Diffusion stack.
//!
//! ```sh
//! cargo run --release --example txt2img                      # the committed tiny model
//! cargo run --release --example txt2img -- ~/models/sd-v1-5 "a red fox in the snow"
//! ```

use layret::burn::tensor::Device;
use layret::core::image_io::save_png;
use layret::core::stable_diffusion::{LoadOptions, NoiseSource, StableDiffusion, Txt2ImgRequest};

fn main() -> layret::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sd1-tiny").into());
    let prompt = args.next().unwrap_or_else(|| "a photo of a dog".into());
    let device = Device::flex();
    let sd = StableDiffusion::load(&model, &device, &LoadOptions::default())?;
    let tiny = model.ends_with("sd1-tiny");
    let mut req = Txt2ImgRequest::new(prompt);
    if tiny {
        (req.steps, req.width, req.height) = (10, 128, 128);
    }
    req.noise = NoiseSource::Seed(42);
    let out = sd.txt2img(&req, &mut |p| {
        eprint!("\r{} {}/{}", p.stage, p.step, p.total);
        std::ops::ControlFlow::Continue(())
    })?;
    eprintln!();
    save_png(
        &out.images[0],
        "txt2img.png".as_ref(),
        &[("prompt", req.prompt.clone())],
    )?;
    println!("txt2img.png");
    Ok(())
}
