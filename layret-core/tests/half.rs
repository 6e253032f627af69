//! Half precision (bf16, f16) against PyTorch run in the same dtype, with layret's precision
//! policy (`tools/reference/make_half.py`: weights and compute in the half dtype, latents and
//! the scheduler in f32, the VAE in f32).
//!
//! The tolerances come from PyTorch's own spread: `spread` = max |PyTorch half − PyTorch f32|
//! of the same output, read from the golden file. Two checks per output:
//! - accuracy: max |layret half − PyTorch f32| ≤ 1.2 × spread (layret's half run is as close to
//!   f32 as PyTorch's, the peer rule of benches/peer/compare.py);
//! - agreement: max |layret half − PyTorch half| ≤ 2 × spread (two runs each within the spread
//!   of f32 are within twice it of each other; half-precision rounding differs between any two
//!   implementations, so closer than that cannot be asked).
//!
//! The same file's f32 runs are checked at 1e-4 (they reproduce the f32 goldens: same case).

mod common;

use burn::tensor::{DType, Tensor};
use layret_core::processor::{DefaultAttention, StepContext};
use layret_core::stable_diffusion::{
    LoadOptions, ModelParts, NoiseSource, StableDiffusion, Txt2ImgRequest,
};
use layret_core::unet::UNet2DConditionModel;

const FILE: &str = "half_sd1-tiny.safetensors";
const HALF: [(&str, DType); 2] = [("bf16", DType::BF16), ("f16", DType::F16)];

/// f32 and the half dtypes the test device computes in (wgpu has no bf16: its load is refused
/// with `UnsupportedDtype`, tests/errors.rs r69).
fn dtypes() -> Vec<(&'static str, DType)> {
    let device = common::device();
    [("f32", DType::F32)]
        .into_iter()
        .chain(HALF)
        .filter(|&(name, d)| {
            let ok = device.supports_dtype(d);
            if !ok {
                // Refused up front, naming the alternatives (not a panic in a shader compiler).
                let e = StableDiffusion::load(
                    common::fixtures().join("sd1-tiny"),
                    &device,
                    &LoadOptions::default().with_dtype(d),
                )
                .unwrap_err();
                assert!(
                    matches!(e, layret_core::Error::UnsupportedDtype { .. }),
                    "{e}"
                );
                println!("{name}: not supported by {device:?} ({e}); skipped");
            }
            ok
        })
        .collect()
}

/// PyTorch's f32-vs-`name` spread of the golden `key` (`<what>/<dtype>/<rest>`).
fn spread(what: &str, name: &str, rest: &str) -> f64 {
    let half = common::golden(FILE, &format!("{what}/{name}/{rest}"));
    let f32 = common::golden(FILE, &format!("{what}/f32/{rest}"));
    common::max_abs_diff_values(&half.values, &f32.values)
}

/// Check `got` (layret's `name` run of `<what>/…/<rest>`) against PyTorch's f32 and `name`
/// runs with the module's tolerances; f32 at 1e-4.
fn check<const D: usize>(got: Tensor<D>, what: &str, name: &str, rest: &str, label: &str) {
    let vs = |run: &str| {
        common::max_abs_diff(
            got.clone(),
            &common::golden(FILE, &format!("{what}/{run}/{rest}")),
        )
    };
    if name == "f32" {
        let err = vs("f32");
        println!("{label} f32: max error vs PyTorch f32 {err:.3e}");
        layret_test_support::assert_within(err, 1e-4, format_args!("{label} f32"));
        return;
    }
    let s = spread(what, name, rest);
    let gpu = layret_test_support::half_tolerance_factor(name);
    let (to_f32, to_half) = (vs("f32"), vs(name));
    println!(
        "{label} {name}: max error vs PyTorch f32 {to_f32:.3e} (PyTorch {name}'s own: {s:.3e}, \
         ratio {:.2}), vs PyTorch {name} {to_half:.3e}",
        to_f32 / s
    );
    layret_test_support::assert_within(
        to_f32,
        1.2 * gpu * s,
        format_args!("{label} {name} vs f32"),
    );
    layret_test_support::assert_within(
        to_half,
        2.0 * gpu * s,
        format_args!("{label} {name} vs PyTorch {name}"),
    );
}

#[test]
fn unet_in_half_precision_matches_pytorch_in_the_same_dtype() {
    let dir = common::fixtures().join("sd1-tiny/unet");
    let sample: Tensor<4> = common::golden_tensor("unet_sd1-tiny.safetensors", "sample");
    let context: Tensor<3> =
        common::golden_tensor("unet_sd1-tiny.safetensors", "encoder_hidden_states");
    for (name, dtype) in dtypes() {
        let (unet, _) =
            UNet2DConditionModel::from_dir(&dir, &common::device(), dtype, None).unwrap();
        // The weights really are held in the dtype asked for.
        assert_eq!(unet.dtype(), dtype, "{name}: weights dtype");
        assert_eq!(
            unet.conv_out.weight.val().dtype(),
            dtype,
            "{name}: conv_out"
        );
        for t in [981, 1] {
            let ctx = StepContext::plain(0, t as f64, 2);
            let eps = unet
                .forward(
                    sample.clone(),
                    t as f64,
                    &context,
                    &mut DefaultAttention,
                    &ctx,
                )
                .unwrap();
            assert_eq!(
                eps.dtype(),
                DType::F32,
                "{name}: the prediction comes back in f32"
            );
            check(
                eps,
                "unet",
                name,
                &format!("eps_t{t}"),
                &format!("UNet t={t}"),
            );
        }
    }
}

#[test]
fn txt2img_in_half_precision_matches_pytorch_in_the_same_dtype() {
    let noise: Tensor<4> = common::golden_tensor("pipeline_sd1-tiny.safetensors", "noise");
    for (name, dtype) in dtypes() {
        let sd = StableDiffusion::load(
            common::fixtures().join("sd1-tiny"),
            &common::device(),
            &LoadOptions::default().with_dtype(dtype),
        )
        .unwrap();
        assert_eq!(sd.unet().dtype(), dtype, "{name}: UNet weights");
        assert_eq!(
            sd.text_encoder()
                .embeddings
                .token_embedding
                .weight
                .val()
                .dtype(),
            dtype,
            "{name}: text encoder weights"
        );
        assert_eq!(
            sd.vae().dtype(),
            DType::F32,
            "{name}: the VAE stays f32 by default"
        );
        let req = Txt2ImgRequest {
            prompt: "a photo of a sks dog surfing".into(),
            negative_prompt: "blurry".into(),
            guidance: 7.5,
            steps: 5,
            width: 128,
            height: 128,
            num_images: 2,
            noise: NoiseSource::Tensor(noise.clone()),
            eta: 0.0,
            ..Txt2ImgRequest::new("")
        };
        let out = sd.txt2img(&req, &mut layret_core::ignore_progress).unwrap();
        assert_eq!(out.latents.dtype(), DType::F32, "{name}: latents stay f32");
        check(
            out.latents.clone(),
            "txt2img",
            name,
            "latents",
            "txt2img latents",
        );
        assert_eq!(out.images.len(), 2);
    }
}

#[test]
fn a_half_precision_vae_that_overflows_is_refused_naming_the_fix() {
    // The VAE in f16 with weights scaled up until its activations pass 65504: the decoded
    // image is not written as garbage, the error names `--vae-dtype f32`.
    let sd = StableDiffusion::load(
        common::fixtures().join("sd1-tiny"),
        &common::device(),
        &LoadOptions::default().with_vae_dtype(DType::F16),
    )
    .unwrap();
    assert_eq!(sd.vae().dtype(), DType::F16);
    assert_eq!(
        sd.unet().dtype(),
        DType::F32,
        "--vae-dtype leaves the UNet alone"
    );
    let mut vae = sd.vae().clone();
    let w = vae.decoder.conv_in.weight.val();
    vae.decoder.conv_in.weight = burn::module::Param::from_tensor(w * 3.0e4);
    let sd = StableDiffusion::from_parts(ModelParts {
        dir: common::fixtures().join("sd1-tiny"),
        tokenizer: sd.tokenizer().clone(),
        text_encoder: sd.text_encoder().clone(),
        text_config: sd.text_config().clone(),
        unet: sd.unet().clone(),
        unet_config: sd.unet_config().clone(),
        vae,
        vae_config: sd.vae_config().clone(),
        scheduler: sd.scheduler_config().clone(),
        device: common::device(),
        sources: Vec::new(),
        label: "overflowing f16 VAE".into(),
    });
    let latents = Tensor::<4>::ones([1, 4, 8, 8], &common::device());
    let e = sd.decode(latents).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, layret_core::Error::NonFinite { .. }) && msg.contains("--vae-dtype f32"),
        "{msg}"
    );
}
