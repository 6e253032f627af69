//! The method in half precision (bf16, f16) against method_reference.py run by PyTorch in the
//! same dtype with layret's precision policy (tools/reference/make_half.py: METHOD_BASE — TI
//! `<cat-toy>`, split mode, Otsu blending, 6 steps, 128², two samples — seed 4301).
//!
//! Tolerances come from PyTorch's own spread (max |PyTorch half − PyTorch f32| of the same
//! output), as in layret-core/tests/half.rs: layret's half latents within 1.2 × the spread of
//! PyTorch's f32 ones (as accurate as PyTorch in that dtype) and within 2 × of PyTorch's half
//! ones (two runs each within the spread of f32). Masks are thresholds of half-precision
//! attention maps, so a map within half-precision noise of its threshold may flip (PyTorch's
//! own bf16 run flips 19 elements against its f32 run): fewer than 1% of the mask elements
//! may differ, and where any did, the target latents (which then take the other branch's
//! latent at those pixels) are held to PyTorch's own mean spread instead of its maximum. The
//! f32 run of the same case is checked at 1e-4 with exact masks.

use burn::tensor::{DType, Tensor};
use layret_attention::{KvPolicy, Router};
use layret_core::personalization::Personalization;
use layret_core::stable_diffusion::{LoadOptions, StableDiffusion};
use layret_pipeline::*;
use layret_test_support::{fixtures, golden, golden_tensor, max_abs_diff, max_abs_diff_values};

const FILE: &str = "half_sd1-tiny.safetensors";

/// How many elements of `got` differ from the golden `key` (0/1 masks).
fn flips<const D: usize>(got: Tensor<D>, key: &str) -> usize {
    let want = golden(FILE, key);
    let got = layret_test_support::to_f64(got);
    assert_eq!(got.len(), want.values.len(), "{key}: size");
    got.iter().zip(&want.values).filter(|(a, b)| a != b).count()
}

/// Mean |a − b| (NaN-safe through `max_abs_diff_values`'s checks).
fn mean_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    let _ = max_abs_diff_values(a, b);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len().max(1) as f64
}

/// Mask elements of the `name` run that differ from the f32 run, in PyTorch's goldens.
fn reference_flips(name: &str, keys: &[String]) -> usize {
    keys.iter()
        .map(|k| {
            let h = golden(FILE, &format!("method/{name}/{k}"));
            let f = golden(FILE, &format!("method/f32/{k}"));
            h.values
                .iter()
                .zip(&f.values)
                .filter(|(a, b)| a != b)
                .count()
        })
        .sum()
}

fn run(dtype: DType, policy: KvPolicy) -> (Tensor<4>, RetouchResult, Vec<(String, Tensor<4>)>) {
    let base = StableDiffusion::load(
        fixtures().join("sd1-tiny"),
        &layret_test_support::device(),
        &LoadOptions::default().with_dtype(dtype),
    )
    .unwrap();
    let models = ModelPair::new(
        base,
        &Personalization::TextualInversion {
            path: fixtures().join("personalization/ti_cat_toy.safetensors"),
            token: None,
        },
    )
    .unwrap();
    let settings = MethodSettings::default()
        .with_steps(6)
        .with_guidance(7.5)
        .with_negative_prompt("")
        .with_layout_fraction(0.2)
        .with_swap_start(2)
        .with_mask_threshold(0.1)
        .with_mask_factor(2)
        .with_swap_divisor(2)
        .with_blend(Blend::Otsu)
        .with_blend_start(Some(1))
        .with_kv_policy(policy)
        .with_reference_prefix("a photo of ");
    let req = LayoutRequest {
        prompts: SubjectPrompts::new(
            "a <cat-toy> on the beach",
            "<cat-toy>",
            "cat toy",
            "a photo of ",
        )
        .unwrap(),
        noise: golden_tensor(FILE, "method/noise"),
        settings,
    };
    let layout = StepBlendedLayout
        .layout(
            &models,
            &req,
            &mut Router::new(),
            &mut layret_core::ignore_progress,
        )
        .unwrap();
    let mut retouch = MultiSourceRetouch {
        mask_log: Some(Vec::new()),
        ..Default::default()
    };
    let out = retouch
        .retouch(
            &models,
            &layout,
            &golden_tensor(FILE, "method/reference_image"),
            &mut PassHooks::none(),
            &mut layret_core::ignore_progress,
        )
        .unwrap();
    let mut masks = Vec::new();
    for (k, m) in retouch.mask_log.unwrap() {
        for (name, t) in [("t", m.target), ("c", m.context), ("r", m.reference)] {
            masks.push((format!("mask_{name}_step{k}"), t));
        }
        if let Some(b) = m.blend {
            masks.push((format!("blend_step{k}"), b));
        }
    }
    (layout.trajectory.last().unwrap().clone(), out, masks)
}

#[test]
fn the_method_in_half_precision_matches_pytorch_in_the_same_dtype() {
    let device = layret_test_support::device();
    for (name, dtype) in [
        ("f32", DType::F32),
        ("bf16", DType::BF16),
        ("f16", DType::F16),
    ] {
        if !device.supports_dtype(dtype) {
            // wgpu has no bf16 (its load is refused: tests/errors.rs r69).
            println!("method {name}: not supported by {device:?}; skipped");
            continue;
        }
        let (context, out, masks) = run(dtype, KvPolicy::KeepF32);
        assert_eq!(out.latents.dtype(), DType::F32, "{name}: latents stay f32");
        let keys: Vec<String> = masks.iter().map(|(k, _)| k.clone()).collect();
        let (mut to_half, mut to_f32) = (0, 0);
        let total: usize = masks
            .iter()
            .map(|(_, t)| t.dims().iter().product::<usize>())
            .sum();
        for (key, t) in masks {
            // Flattened in the same row-major order as the goldens ([n, h·w] / [n, 1, H, W]).
            to_half += flips(t.clone(), &format!("method/{name}/{key}"));
            to_f32 += flips(t, &format!("method/f32/{key}"));
        }
        for (what, got) in [("context_latents", context), ("latents", out.latents)] {
            let vs = |run: &str| {
                max_abs_diff(got.clone(), &golden(FILE, &format!("method/{run}/{what}")))
            };
            if name == "f32" {
                let err = vs("f32");
                println!("method f32 {what}: max error vs PyTorch f32 {err:.3e}");
                layret_test_support::assert_within(err, 1e-4, format_args!("method f32 {what}"));
                continue;
            }
            let h = golden(FILE, &format!("method/{name}/{what}"));
            let f = golden(FILE, &format!("method/f32/{what}"));
            let spread = max_abs_diff_values(&h.values, &f.values);
            let gpu = layret_test_support::half_tolerance_factor(name);
            let mean_spread = mean_abs_diff(&h.values, &f.values);
            let (e32, eh) = (vs("f32"), vs(name));
            let mean32 = mean_abs_diff(&layret_test_support::to_f64(got.clone()), &f.values);
            println!(
                "method {name} {what}: max error vs PyTorch f32 {e32:.3e} (PyTorch {name}'s own \
                 {spread:.3e}, ratio {:.2}), vs PyTorch {name} {eh:.3e}; mean error vs f32 \
                 {mean32:.3e} (PyTorch's own {mean_spread:.3e})",
                e32 / spread
            );
            if what == "context_latents" || to_f32 == 0 {
                // No mask decision of this run differs from f32's: the latents are compared
                // element by element.
                layret_test_support::assert_within(
                    e32,
                    1.2 * gpu * spread,
                    format_args!("method {name} {what} vs f32"),
                );
                layret_test_support::assert_within(
                    eh,
                    2.0 * gpu * spread,
                    format_args!("method {name} {what} vs PyTorch {name}"),
                );
            } else {
                // Where a mask element flipped, the blend takes the other latent there: the
                // target latents differ locally by the gap between the two, whatever the
                // precision. The mean error still must be PyTorch's own.
                layret_test_support::assert_within(
                    mean32,
                    1.5 * gpu * mean_spread,
                    format_args!("method {name} {what}: mean vs f32"),
                );
            }
        }
        if name == "f32" {
            assert_eq!(to_half, 0, "method f32: masks differ from PyTorch's");
            continue;
        }
        let own = reference_flips(name, &keys);
        // Flips happen only at map values within half-precision noise of a threshold: a few
        // elements, never a systematic difference.
        assert!(
            to_f32 * 100 <= total && to_half * 100 <= total,
            "method {name}: {to_f32} / {to_half} of {total} mask elements differ from PyTorch f32 / {name}"
        );
        println!(
            "method {name}: mask elements differing from PyTorch f32 {to_f32}, from PyTorch {name} \
             {to_half} (PyTorch {name}'s own vs f32: {own})"
        );
    }
}

#[test]
fn half_precision_keys_and_values_replay_in_the_model_dtype() {
    // Recorded K/V of a bf16 model kept as computed or "f16" (kept as computed: already half)
    // and recompute give the same image: no dtype mixing anywhere in replay.
    let device = layret_test_support::device();
    let dtype = if device.supports_dtype(DType::BF16) {
        DType::BF16
    } else {
        DType::F16
    };
    let (_, a, _) = run(dtype, KvPolicy::KeepF32);
    let (_, b, _) = run(dtype, KvPolicy::KeepF16);
    let (_, c, _) = run(dtype, KvPolicy::Recompute);
    let ab = layret_test_support::max_abs_diff_tensors(a.latents.clone(), b.latents);
    let ac = layret_test_support::max_abs_diff_tensors(a.latents, c.latents);
    assert_eq!(
        ab, 0.0,
        "{dtype:?}: the f16 policy keeps half K/V as computed"
    );
    assert!(ac <= 1e-3, "{dtype:?}: replay vs recompute differ by {ac}");
}
