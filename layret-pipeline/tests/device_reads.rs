//! Device→host reads per sampling step (layret_core::host::device_reads counts every read of
//! tensor values by the library). On a GPU backend (`LAYRET_TEST_DEVICE=wgpu`,
//! tools/gpu/parity.sh) a step of txt2img and of Layout-and-Retouch reads nothing back: the
//! NaN guard's flags are read once per pass, Otsu, masks, indices and the timestep embedding
//! stay on the device. On the flex CPU, where tensors live in host memory, the guard checks
//! each step at once (so a run stops at its first bad step) and Otsu runs in f64 on the host.
//!
//! One test in its own binary: the counter is per process, and parallel tests would add to it.

mod common;

use layret_attention::Router;
use layret_core::host::device_reads;
use layret_core::stable_diffusion::{NoiseSource, Txt2ImgRequest};
use layret_pipeline::*;
use layret_test_support::{golden_tensor, on_gpu_backend};

/// Reads made by `f`.
fn reads(f: impl FnOnce()) -> u64 {
    let before = device_reads();
    f();
    device_reads() - before
}

/// (reads at N = 3, reads at N = 6, reads per extra step), `run(N)` returning its reads.
fn per_step(run: impl Fn(usize) -> u64) -> (u64, u64, f64) {
    let r3 = run(3);
    let r6 = run(6);
    assert!(
        r6 >= r3,
        "more reads with fewer steps: {r3} at N = 3, {r6} at N = 6"
    );
    (r3, r6, (r6 - r3) as f64 / 3.0)
}

#[test]
fn a_sampling_step_reads_nothing_back_on_a_gpu_backend() {
    let models = common::models();
    let gpu = on_gpu_backend();

    // txt2img (decoding and the PNG conversion read once per run, at the end).
    let sd = models.base();
    let txt = per_step(|steps| {
        let req = Txt2ImgRequest {
            steps,
            width: 64,
            height: 64,
            num_images: 2,
            noise: NoiseSource::Seed(7),
            ..Txt2ImgRequest::new("a photo of a cat toy")
        };
        reads(|| {
            sd.txt2img(&req, &mut layret_core::ignore_progress).unwrap();
        })
    });

    // Layout and Retouch, with Otsu blending from step 1. The first run of each N computes the
    // subject's reference (streamed to a memory-mapped file: its keys and values are written
    // step by step, which reads them back); the second, measured run finds it cached.
    let reference = golden_tensor::<4>("method_ti.safetensors", "reference_image");
    let noise = golden_tensor::<4>("method_ti.safetensors", "noise");
    let first_runs = std::cell::RefCell::new(Vec::new());
    let method = per_step(|steps| {
        let settings = MethodSettings::default()
            .with_steps(steps)
            .with_blend_start(Some(1));
        let req = LayoutRequest {
            prompts: SubjectPrompts::new(
                "a photo of <cat-toy> on a beach",
                "<cat-toy>",
                "cat toy",
                &settings.reference_prefix,
            )
            .unwrap(),
            noise: noise.clone(),
            settings,
        };
        let mut retouch = MultiSourceRetouch::new();
        let mut generate = || {
            let layout = StepBlendedLayout
                .layout(
                    &models,
                    &req,
                    &mut Router::new(),
                    &mut layret_core::ignore_progress,
                )
                .unwrap();
            retouch
                .retouch(
                    &models,
                    &layout,
                    &reference,
                    &mut PassHooks::none(),
                    &mut layret_core::ignore_progress,
                )
                .unwrap();
        };
        first_runs.borrow_mut().push(reads(&mut generate));
        let second = reads(&mut generate);
        assert_eq!(
            retouch.cache.stats().hits,
            1,
            "the second run reuses the reference"
        );
        second
    });
    // Reads of the reference pass: first run − second run, at N = 3 and N = 6.
    let first = first_runs.borrow().clone();
    let reference_per_step = ((first[1] - method.1) as f64 - (first[0] - method.0) as f64) / 3.0;
    eprintln!(
        "device {:?}: txt2img reads {} at N = 3, {} at N = 6 ({} per step); \
         Layout-and-Retouch (reference cached) reads {} at N = 3, {} at N = 6 ({} per step); \
         computing the reference reads {} per step more (its keys/values written to disk)",
        layret_test_support::device(),
        txt.0,
        txt.1,
        txt.2,
        method.0,
        method.1,
        method.2,
        reference_per_step
    );
    if gpu {
        assert_eq!(
            txt.2,
            0.0,
            "txt2img reads per step on {:?}",
            layret_test_support::device()
        );
        assert_eq!(method.2, 0.0, "method reads per step");
        // The reference's step: its map and keys/values written to disk in one batch.
        assert_eq!(reference_per_step, 1.0, "reference reads per step");
    } else {
        // Flex: the NaN guard per step (txt2img 1; the method's context and target 2) and
        // Otsu's f64 pass on the host per blended step (1); the reference adds its inversion's
        // guard (1) and the batch written to disk (1).
        assert_eq!(txt.2, 1.0, "txt2img reads per step on flex");
        assert_eq!(method.2, 3.0, "method reads per step on flex");
        assert_eq!(reference_per_step, 2.0, "reference reads per step on flex");
    }
}
