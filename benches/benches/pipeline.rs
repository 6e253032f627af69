//! One full Layout-and-Retouch image on the tiny fixture (textual inversion, 10 steps, 128²),
//! with the context branch replayed vs recomputed, and with the reference cached; and one at
//! SD 1.5 size (random weights, 2 steps, 128², reference cached) on every enabled device.

use criterion::{Criterion, criterion_group, criterion_main};
use layret::attention::KvPolicy;
use layret::burn::tensor::{Device, Distribution, Tensor};
use layret::core::personalization::Personalization;
use layret::core::stable_diffusion::{LoadOptions, NoiseSource, StableDiffusion};
use layret::pipeline::{GenerateRequest, LayoutAndRetouch, MethodSettings, ModelPair, Subject};

fn pipeline(c: &mut Criterion) {
    let device = Device::flex();
    let fx = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");
    let base = StableDiffusion::load(format!("{fx}/sd1-tiny"), &device, &LoadOptions::default())
        .expect("fixture");
    let p = Personalization::TextualInversion {
        path: format!("{fx}/personalization/ti_cat_toy.safetensors").into(),
        token: None,
    };
    let models = ModelPair::new(base, &p).expect("ti");
    let reference =
        Tensor::<4>::random([1, 3, 128, 128], Distribution::Uniform(-1.0, 1.0), &device);
    let subject = Subject {
        phrase: "<cat-toy>".into(),
        class_phrase: "cat toy".into(),
        references: vec![reference],
    };
    let mut g = c.benchmark_group("layout_and_retouch_tiny");
    for (name, kv) in [
        ("replay", KvPolicy::KeepF32),
        ("recompute", KvPolicy::Recompute),
    ] {
        let req = GenerateRequest::new(["a <cat-toy> on the beach"], 128, 128)
            .with_samples(1)
            .with_noise(NoiseSource::Seed(1))
            .with_settings(
                MethodSettings::default()
                    .with_steps(10)
                    .with_mask_factor(2)
                    .with_kv_policy(kv),
            )
            .with_masks(false);
        let mut pipe = LayoutAndRetouch::default();
        g.bench_function(format!("{name}_cached_reference"), |b| {
            b.iter(|| {
                pipe.generate(&models, &subject, &req, &mut layret::core::ignore_progress)
                    .expect("generate")
            })
        });
        g.bench_function(format!("{name}_uncached"), |b| {
            b.iter(|| {
                LayoutAndRetouch::default()
                    .generate(&models, &subject, &req, &mut layret::core::ignore_progress)
                    .expect("generate")
            })
        });
    }
    g.finish();
}

fn pipeline_sd15(c: &mut Criterion) {
    let mut g = c.benchmark_group("layout_and_retouch_sd15");
    g.sample_size(10);
    for (name, device) in layret_benches::devices() {
        let (models, subject) = layret_benches::sd15_textual_inversion(&device, 128);
        let req = GenerateRequest::new(["a <tok> on the beach"], 128, 128)
            .with_samples(1)
            .with_noise(NoiseSource::Seed(1))
            .with_settings(MethodSettings::default().with_steps(2))
            .with_masks(false);
        let mut pipe = LayoutAndRetouch::default();
        g.bench_function(format!("{name}_128x128_2_steps_cached_reference"), |b| {
            b.iter(|| {
                pipe.generate(&models, &subject, &req, &mut layret::core::ignore_progress)
                    .expect("generate")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, pipeline, pipeline_sd15);
criterion_main!(benches);
