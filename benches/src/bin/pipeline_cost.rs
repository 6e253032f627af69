//! Cost of Layout-and-Retouch at SD 1.5 architecture (random weights, textual inversion):
//! UNet evaluations and seconds per image, with the reference cached vs not.
//!
//! Usage: pipeline_cost SIZE STEPS PROMPTS SAMPLES [ROUNDS]   (e.g. 256 4 4 2)
//!
//! The first prompt computes the subject's reference; the others reuse it from the cache.
//! A second round (ROUNDS = 2) repeats every prompt with the reference cached.

use std::time::Instant;

use layret::burn::tensor::{DType, Device, Tensor};
use layret::core::clip::{ClipTextConfig, ClipTextEncoder};
use layret::core::noise::{save_tensors, seeded_noise};
use layret::core::personalization::Personalization;
use layret::core::scheduler::SchedulerConfig;
use layret::core::stable_diffusion::{NoiseSource, StableDiffusion};
use layret::core::tokenizer::ClipTokenizer;
use layret::core::unet::{UNet2DConditionModel, UNetConfig};
use layret::core::vae::{AutoencoderKL, VaeConfig};
use layret::core::weights::Weights;
use layret::pipeline::{GenerateRequest, LayoutAndRetouch, MethodSettings, ModelPair, Subject};

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("numbers"))
        .collect();
    let (size, steps, prompts, samples) = (a[0], a[1], a[2], a[3]);
    let dev = Device::flex();
    let fx = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");
    let w = |seed| Weights::random(&dev, DType::F32, seed, 0.02);
    let text_config = ClipTextConfig::v1_5();
    let unet_config = UNetConfig::v1_5();
    let vae_config = VaeConfig::sd();
    let base = StableDiffusion {
        dir: format!("{fx}/sd1-tiny").into(),
        tokenizer: ClipTokenizer::from_model_dir(format!("{fx}/sd1-tiny")).unwrap(),
        text_encoder: ClipTextEncoder::load(&w(1), &text_config).unwrap(),
        text_config,
        unet: UNet2DConditionModel::load(&w(2), &unet_config).unwrap(),
        unet_config,
        vae: AutoencoderKL::load(&w(3), &vae_config).unwrap(),
        vae_config,
        scheduler: SchedulerConfig::sd(),
        device: dev.clone(),
    };
    let ti = std::env::temp_dir().join("layret-cost-ti.safetensors");
    let v: Tensor<4> = seeded_noise(5, [1, 1, 1, 768], &dev);
    save_tensors(&ti, &[("<tok>", v)]).unwrap();
    // save_tensors writes 4-D; rewrite as [768].
    let bytes = std::fs::read(&ti).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let data = st.tensor("<tok>").unwrap().data().to_vec();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![768], &data).unwrap();
    safetensors::serialize_to_file(vec![("<tok>", view)], None, &ti).unwrap();
    let models = ModelPair::new(
        base,
        &Personalization::TextualInversion {
            path: ti,
            token: None,
        },
    )
    .unwrap();
    let reference: Tensor<4> = seeded_noise(9, [1, 3, size, size], &dev).clamp(-1.0, 1.0);
    let subject = Subject {
        phrase: "<tok>".into(),
        class_phrase: "dog".into(),
        reference,
    };
    let mut pipe = LayoutAndRetouch::default();
    let all = [
        "a <tok> on the beach",
        "a <tok> in the snow",
        "a <tok> in a bucket",
        "a <tok> wearing a hat",
    ];
    let rounds = a.get(4).copied().unwrap_or(1);
    for round in 0..rounds {
        for p in 0..prompts {
            let req = GenerateRequest {
                prompts: vec![all[p % all.len()].into()],
                num_samples: samples,
                width: size,
                height: size,
                noise: NoiseSource::Seed(1),
                settings: MethodSettings {
                    steps,
                    ..MethodSettings::default()
                },
                return_masks: false,
            };
            let mut stage_t: Vec<(&'static str, f64)> = Vec::new();
            let mut last = Instant::now();
            let t0 = Instant::now();
            pipe.generate(&models, &subject, &req, &mut |pp| {
                let now = Instant::now();
                let dt = now.duration_since(last).as_secs_f64();
                last = now;
                match stage_t.iter_mut().find(|(s, _)| *s == pp.stage.stage) {
                    Some(e) => e.1 += dt,
                    None => stage_t.push((pp.stage.stage, dt)),
                }
            })
            .unwrap();
            let total = t0.elapsed().as_secs_f64();
            println!(
                "{size}px N={steps} K={samples} round {round} prompt {p} [reference cache hits {} misses {}]: {total:.1}s total, {:.1}s/image; stages {:?}",
                pipe.retouch.cache.hits,
                pipe.retouch.cache.misses,
                total / samples as f64,
                stage_t
                    .iter()
                    .map(|(s, t)| format!("{s} {t:.1}s"))
                    .collect::<Vec<_>>()
            );
        }
    }
}
