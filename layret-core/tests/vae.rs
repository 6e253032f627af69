//! Parity of `AutoencoderKL` with diffusers on the tiny fixtures.

mod common;

use burn::tensor::{DType, Tensor};
use layret_core::Error;
use layret_core::vae::AutoencoderKL;

fn load(name: &str) -> AutoencoderKL {
    let dir = common::fixtures().join(name).join("vae");
    AutoencoderKL::from_dir(&dir, &common::device(), DType::F32, None)
        .unwrap()
        .0
}

fn check(vae: &AutoencoderKL, name: &str) {
    let file = format!("vae_{name}.safetensors");
    let image: Tensor<4> = common::golden_tensor(&file, "image");
    let dist = vae.encode(image).unwrap();
    let err = common::max_abs_diff(dist.mean.clone(), &common::golden(&file, "latent_mean"));
    layret_test_support::assert_within(err, 1e-4, format_args!("{name} encode mean"));
    let err = common::max_abs_diff(dist.std(), &common::golden(&file, "latent_std"));
    layret_test_support::assert_within(err, 1e-4, format_args!("{name} encode std"));
    let noise: Tensor<4> = common::golden_tensor(&file, "sample_noise");
    let err = common::max_abs_diff(
        dist.sample_with(noise),
        &common::golden(&file, "latent_sample"),
    );
    layret_test_support::assert_within(err, 1e-4, format_args!("{name} encode sample"));
    let latents: Tensor<4> = common::golden_tensor(&file, "latents");
    let err = common::max_abs_diff(
        vae.decode(latents).unwrap(),
        &common::golden(&file, "decoded"),
    );
    layret_test_support::assert_within(err, 1e-4, format_args!("{name} decode"));
}

#[test]
fn vae_matches_diffusers() {
    for name in ["sd1-tiny", "sd2-tiny"] {
        let vae = load(name);
        assert_eq!(vae.downsample_factor, 8);
        assert_eq!(vae.scaling_factor, 0.18215);
        check(&vae, name);
    }
}

#[test]
fn legacy_attention_key_names_load() {
    // Old VAE checkpoints name the mid-block attention query/key/value/proj_attn.
    let src = common::fixtures().join("sd1-tiny/vae");
    let dst_guard = common::tempdir();
    let dst = dst_guard.path();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("diffusion_pytorch_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let renamed: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            let k = k
                .replace("attentions.0.to_q.", "attentions.0.query.")
                .replace("attentions.0.to_k.", "attentions.0.key.")
                .replace("attentions.0.to_v.", "attentions.0.value.")
                .replace("attentions.0.to_out.0.", "attentions.0.proj_attn.");
            (k, v)
        })
        .collect();
    assert!(renamed.iter().any(|(k, _)| k.ends_with("proj_attn.weight")));
    safetensors::serialize_to_file(
        renamed,
        None,
        &dst.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let vae = AutoencoderKL::from_dir(dst, &common::device(), DType::F32, None)
        .unwrap()
        .0;
    check(&vae, "sd1-tiny");
}

#[test]
fn wrong_image_size_is_an_error() {
    let vae = load("sd1-tiny");
    let img = Tensor::<4>::zeros([1, 3, 36, 32], &common::device());
    assert!(matches!(vae.encode(img), Err(Error::Shape { .. })));
    let lat = Tensor::<4>::zeros([1, 3, 4, 4], &common::device());
    assert!(matches!(vae.decode(lat), Err(Error::Shape { .. })));
}
