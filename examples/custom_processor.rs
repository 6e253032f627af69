//! A user-written attention processor plugged into the UNet through the router: attention
//! temperature on the decoder's self-attention (values > 1 soften, < 1 sharpen), leaving
//! every other site on the fused default kernel.
//!
//! ```sh
//! cargo run --release --example custom_processor               # tiny model
//! cargo run --release --example custom_processor -- ~/models/sd-v1-5 1.5
//! ```

use layret::attention::{Router, SiteSelector};
use layret::burn::tensor::{Device, Tensor};
use layret::core::image_io::save_png;
use layret::core::processor::{
    AttentionKind, AttentionProcessor, AttentionSite, StepContext, default_attention,
};
use layret::core::stable_diffusion::{LoadOptions, NoiseSource, StableDiffusion, Txt2ImgRequest};

/// `softmax(q kᵀ / (√d · T)) v`.
struct Temperature {
    t: f64,
    calls: usize,
}

impl AttentionProcessor for Temperature {
    fn attend(
        &mut self,
        _site: &AttentionSite,
        _ctx: &StepContext,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> layret::Result<Tensor<4>> {
        self.calls += 1;
        Ok(default_attention(q / self.t, k, v))
    }
}

fn main() -> layret::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sd1-tiny").into());
    let t: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1.5);
    let sd = StableDiffusion::load(&model, &Device::flex(), &LoadOptions::default())?;
    let mut req = Txt2ImgRequest::new("a photo of a dog");
    req.noise = NoiseSource::Seed(1);
    if model.ends_with("sd1-tiny") {
        (req.steps, req.width, req.height) = (10, 128, 128);
    }
    let mut temperature = Temperature { t, calls: 0 };
    let latents = {
        let mut router = Router::new();
        router.route(
            SiteSelector::new()
                .path("up_blocks.*")
                .kind(AttentionKind::SelfAttention),
            &mut temperature,
        );
        sd.txt2img_latents(&req, &mut router, &mut layret::core::ignore_progress)?
    };
    let img = &sd.decode_to_rgb8(latents)?[0];
    save_png(
        img,
        "custom_processor.png".as_ref(),
        &[("temperature", t.to_string())],
    )?;
    println!(
        "custom_processor.png ({} decoder self-attention calls at temperature {t})",
        temperature.calls
    );
    Ok(())
}
