//! Cost of Layout-and-Retouch at SD 1.5 architecture (random weights, textual inversion):
//! UNet evaluations and seconds per image, with the reference cached vs not.
//!
//! Usage: pipeline_cost SIZE STEPS PROMPTS SAMPLES [ROUNDS] [KV] [DTYPE]   (e.g. 256 4 4 2)
//!
//! The first prompt computes the subject's reference; the others reuse it from the cache.
//! A second round (ROUNDS = 2) repeats every prompt with the reference cached. KV is the
//! context K/V policy: `f32` (default), `f16` or `none` (recompute). DTYPE is the text
//! encoder's and UNet's: `f32` (default) or `bf16` (the VAE stays f32). The last line is the
//! process's peak RSS.

use std::time::Instant;

use layret::attention::KvPolicy;
use layret::burn::tensor::Device;
use layret::core::stable_diffusion::NoiseSource;
use layret::pipeline::{GenerateRequest, LayoutAndRetouch, MethodSettings};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<usize> = args
        .iter()
        .take(5)
        .map(|s| s.parse().expect("numbers"))
        .collect();
    let kv_policy = match args.get(5).map(String::as_str) {
        None | Some("f32") => KvPolicy::KeepF32,
        Some("f16") => KvPolicy::KeepF16,
        Some("none") => KvPolicy::Recompute,
        Some(other) => panic!("KV must be f32, f16 or none, got {other}"),
    };
    let dtype = match args.get(6).map(String::as_str) {
        None | Some("f32") => layret::burn::tensor::DType::F32,
        Some("bf16") => layret::burn::tensor::DType::BF16,
        Some(other) => panic!("DTYPE must be f32 or bf16, got {other}"),
    };
    let (size, steps, prompts, samples) = (a[0], a[1], a[2], a[3]);
    layret::allocator::keep_freed_memory();
    let dev = Device::flex();
    let (models, subject) = layret_benches::sd15_textual_inversion_in(&dev, size, dtype);
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
            let req = GenerateRequest::new([all[p % all.len()]], size, size)
                .with_samples(samples)
                .with_noise(NoiseSource::Seed(1))
                .with_settings(
                    MethodSettings::default()
                        .with_steps(steps)
                        .with_kv_policy(kv_policy),
                )
                .with_masks(false);
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
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
            let total = t0.elapsed().as_secs_f64();
            println!(
                "{size}px N={steps} K={samples} round {round} prompt {p} [reference cache hits {} misses {}]: {total:.1}s total, {:.1}s/image; stages {:?}",
                pipe.retouch.cache.stats().hits,
                pipe.retouch.cache.stats().misses,
                total / samples as f64,
                stage_t
                    .iter()
                    .map(|(s, t)| format!("{s} {t:.1}s"))
                    .collect::<Vec<_>>()
            );
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: unknown");
    println!(
        "kv {kv_policy:?}; peak RSS {}",
        peak.trim_start_matches("VmHWM:").trim()
    );
}
