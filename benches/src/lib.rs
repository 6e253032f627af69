//! Shared helpers of layret's benches and measurement tools: the SD 1.5 UNet and a whole
//! SD 1.5 model pair with random weights, and the device list benches run on.

use layret::burn::tensor::{DType, Device, Tensor};
use layret::core::clip::{ClipTextConfig, ClipTextEncoder};
use layret::core::noise::seeded_noise;
use layret::core::personalization::Personalization;
use layret::core::scheduler::SchedulerConfig;
use layret::core::stable_diffusion::{ModelParts, StableDiffusion};
use layret::core::tokenizer::ClipTokenizer;
use layret::core::unet::{UNet2DConditionModel, UNetConfig};
use layret::core::vae::{AutoencoderKL, VaeConfig};
use layret::core::weights::Weights;
use layret::pipeline::{ModelPair, Subject};

/// The devices compiled into this build: flex always, wgpu/cuda with their features.
pub fn devices() -> Vec<(&'static str, Device)> {
    #[allow(unused_mut)]
    let mut v = vec![("flex", Device::flex())];
    #[cfg(feature = "wgpu")]
    v.push((
        "wgpu",
        layret::device::parse_device("wgpu").expect("wgpu device"),
    ));
    #[cfg(feature = "cuda")]
    v.push((
        "cuda",
        layret::device::parse_device("cuda").expect("cuda device"),
    ));
    v
}

/// The repository's `tests/fixtures/` (or `$LAYRET_FIXTURES`, for binaries carried to
/// another machine).
pub fn fixtures_dir() -> String {
    std::env::var("LAYRET_FIXTURES")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures").to_string())
}

/// SD 1.5's UNet with N(0, 0.02²) random weights (seeded), and the weights it asked for.
pub fn sd15_unet(device: &Device, dtype: DType, seed: u64) -> (UNet2DConditionModel, Weights) {
    let w = Weights::random(device, dtype, seed, 0.02);
    let unet = UNet2DConditionModel::load(&w, &UNetConfig::v1_5()).expect("v1_5 preset loads");
    (unet, w)
}

/// SD 1.5 (text encoder, UNet, VAE) with random weights and the fixture's real tokenizer,
/// personalized by a random textual-inversion token `<tok>`, and a random `size`² reference
/// of a "dog": everything one Layout-and-Retouch image at SD 1.5 size needs.
pub fn sd15_textual_inversion(device: &Device, size: usize) -> (ModelPair, Subject) {
    sd15_textual_inversion_in(device, size, DType::F32)
}

/// [`sd15_textual_inversion`] with the text encoder and UNet in `dtype` (the VAE in f32, as
/// `LoadOptions`' default `vae_dtype`).
pub fn sd15_textual_inversion_in(
    device: &Device,
    size: usize,
    dtype: DType,
) -> (ModelPair, Subject) {
    let fx = fixtures_dir();
    let w = |seed| {
        Weights::random(
            device,
            if seed == 3 { DType::F32 } else { dtype },
            seed,
            0.02,
        )
    };
    let text_config = ClipTextConfig::v1_5();
    let unet_config = UNetConfig::v1_5();
    let vae_config = VaeConfig::sd();
    let base = StableDiffusion::from_parts(ModelParts {
        dir: format!("{fx}/sd1-tiny").into(),
        tokenizer: ClipTokenizer::from_model_dir(format!("{fx}/sd1-tiny")).expect("tokenizer"),
        text_encoder: ClipTextEncoder::load(&w(1), &text_config).expect("text encoder"),
        text_config,
        unet: UNet2DConditionModel::load(&w(2), &unet_config).expect("unet"),
        unet_config,
        vae: AutoencoderKL::load(&w(3), &vae_config).expect("vae"),
        vae_config,
        scheduler: SchedulerConfig::sd(),
        device: device.clone(),
        sources: Vec::new(),
        label: format!("random sd15 seeds 1 2 3 {dtype:?}"),
    });
    // A [768] embedding for `<tok>`, as diffusers' textual-inversion files store it.
    let ti = std::env::temp_dir().join(format!(
        "layret-bench-ti-{}.safetensors",
        std::process::id()
    ));
    let v: Tensor<4> = seeded_noise(5, [1, 1, 1, 768], device);
    let data: Vec<u8> = v
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32")
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![768], &data)
        .expect("view");
    safetensors::serialize_to_file(vec![("<tok>", view)], None, &ti).expect("write TI file");
    let models = ModelPair::new(
        base,
        &Personalization::TextualInversion {
            path: ti.clone(),
            token: None,
        },
    )
    .expect("textual inversion");
    let _ = std::fs::remove_file(&ti);
    let reference: Tensor<4> = seeded_noise(9, [1, 3, size, size], device).clamp(-1.0, 1.0);
    let subject = Subject {
        phrase: "<tok>".into(),
        class_phrase: "dog".into(),
        references: vec![reference],
    };
    (models, subject)
}

/// Run `f` five times; the median wall time in ms and the last output, read back to the host
/// inside the timing so every op has run.
pub fn median_of_5<const D: usize, F: FnMut() -> Tensor<D>>(mut f: F) -> (f64, Tensor<D>) {
    let mut ts = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        let o = f();
        let o = Tensor::<D>::from_data(o.into_data(), &Device::flex());
        ts.push(t0.elapsed().as_secs_f64() * 1e3);
        last = Some(o);
    }
    ts.sort_by(f64::total_cmp);
    (ts[2], last.expect("five runs"))
}
