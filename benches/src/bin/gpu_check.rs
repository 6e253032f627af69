//! The timing half of the lent-GPU device check (tools/gpu/device_check.sh runs it): one SD 1.5
//! UNet step (random weights, 64² latents, batch 2 — one CFG pair) in f32 and f16, and one
//! 512² Layout-and-Retouch image (random SD 1.5 weights, textual inversion, reference computed),
//! on the device named. Prints one JSON object; every timing waits for the device (a read of
//! one value) before the clock stops.
//!
//! Usage: gpu_check [DEVICE] [STEPS]   (default: wgpu 50)

use std::time::Instant;

use layret::burn::tensor::{DType, Tensor};
use layret::core::noise::seeded_noise;
use layret::core::processor::{DefaultAttention, StepContext};
use layret::core::stable_diffusion::NoiseSource;
use layret::pipeline::{GenerateRequest, LayoutAndRetouch, MethodSettings};
use serde_json::json;

/// Median of `runs` timed calls of `f` after one warm-up call, in seconds.
fn median_s(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let spec = args.first().map(String::as_str).unwrap_or("wgpu");
    let steps: usize = args
        .get(1)
        .map_or(50, |s| s.parse().expect("STEPS is a number"));
    let device = layret::device::parse_device(spec).unwrap_or_else(|e| panic!("{e}"));
    let mut unet_steps = Vec::new();
    for dtype in [DType::F32, DType::F16] {
        let t0 = Instant::now();
        let (unet, _) = layret_benches::sd15_unet(&device, dtype, 0);
        let load_s = t0.elapsed().as_secs_f64();
        let held = unet.conv_in.weight.val().dtype();
        let context: Tensor<3> = seeded_noise(2, [2, 77, 768], &device).cast(held);
        let sample: Tensor<4> = seeded_noise(1, [2, 4, 64, 64], &device).cast(held);
        let ctx = StepContext::plain(0, 500.0, 2);
        let s = median_s(5, || {
            let eps = unet
                .forward(sample.clone(), 500.0, &context, &mut DefaultAttention, &ctx)
                .expect("UNet step");
            let _ = eps.slice([0..1, 0..1, 0..1, 0..1]).into_data();
        });
        unet_steps.push(json!({
            "dtype": format!("{dtype:?}"),
            "weights_held_as": format!("{held:?}"),
            "load_s": load_s,
            "unet_step_s": s,
        }));
        eprintln!("UNet step {dtype:?} (held {held:?}): {s:.4} s");
    }
    let (models, subject) = layret_benches::sd15_textual_inversion(&device, 512);
    let mut pipe = LayoutAndRetouch::default();
    let req = GenerateRequest::new(["a <tok> on the beach"], 512, 512)
        .with_samples(1)
        .with_noise(NoiseSource::Seed(1))
        .with_settings(MethodSettings::default().with_steps(steps))
        .with_masks(false);
    let mut stages: Vec<(String, f64)> = Vec::new();
    let mut last = Instant::now();
    let t0 = Instant::now();
    pipe.generate(&models, &subject, &req, &mut |p| {
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64();
        last = now;
        match stages.iter_mut().find(|(s, _)| s.as_str() == p.stage.stage) {
            Some(e) => e.1 += dt,
            None => stages.push((p.stage.stage.to_string(), dt)),
        }
        std::ops::ControlFlow::Continue(())
    })
    .expect("Layout-and-Retouch image");
    let image_s = t0.elapsed().as_secs_f64();
    eprintln!("512² Layout-and-Retouch image, N = {steps}: {image_s:.1} s");
    let out = json!({
        "device": format!("{device:?}"),
        "unet_sd15_64x64_b2": unet_steps,
        "layout_and_retouch_512": {
            "steps": steps,
            "seconds": image_s,
            "stages_s": stages.iter().map(|(s, t)| json!({"stage": s, "seconds": t})).collect::<Vec<_>>(),
        },
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
}
