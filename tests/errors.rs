//! The bad-input table of docs/errors.md: one test per row, each asserting the exact `Error`
//! variant and that the message names the culprit. Rows are numbered as in the table.

#![allow(clippy::single_range_in_vec_init)]

use std::path::{Path, PathBuf};
use std::process::Command;

use layret::Error;
use layret::burn::tensor::{Device, Tensor};
use layret::core::clip::ClipTextEncoder;
use layret::core::personalization::{
    Lora, Personalization, TextualInversion, apply_custom_diffusion,
};
use layret::core::scheduler::SchedulerConfig;
use layret::core::stable_diffusion::{LoadOptions, NoiseSource, StableDiffusion, Txt2ImgRequest};
use layret::core::tokenizer::ClipTokenizer;
use layret::core::unet::{UNet2DConditionModel, UNetConfig};
use layret::pipeline::{
    GenerateRequest, LayoutAndRetouch, MethodSettings, ModelPair, Subject, load_reference,
};
use layret_test_support::{TestDir, tempdir};

fn fx(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

fn dev() -> Device {
    Device::flex()
}

/// A fresh folder of this test's own (never shared between tests running in parallel).
fn tmp() -> TestDir {
    tempdir()
}

fn load(dir: &Path) -> Result<StableDiffusion, Error> {
    StableDiffusion::load(dir, &dev(), &LoadOptions::default())
}

fn sd1() -> StableDiffusion {
    load(&fx("sd1-tiny")).unwrap()
}

/// Copy `src` into a fresh folder, recursively.
fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

/// A copy of sd1-tiny's UNet folder with its weights edited.
fn unet_with(
    edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) -> TestDir {
    let src = fx("sd1-tiny/unet");
    let dst = tmp();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("diffusion_pytorch_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut items: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut items);
    let views: Vec<_> = items
        .iter()
        .map(|(k, d, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(
        views,
        None,
        &dst.join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    dst
}

fn unet_err(dir: &Path) -> Error {
    UNet2DConditionModel::from_dir(dir, &dev(), layret::burn::tensor::DType::F32, None).unwrap_err()
}

/// The error of a UNet config edited by `json_edit`, and the config file's path.
fn unet_config_err(json_edit: impl FnOnce(&mut serde_json::Value)) -> (Error, PathBuf) {
    let d = tmp();
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx("sd1-tiny/unet/config.json")).unwrap())
            .unwrap();
    json_edit(&mut v);
    let f = d.join("config.json");
    std::fs::write(&f, v.to_string()).unwrap();
    (UNetConfig::from_file(&f).unwrap_err(), f)
}

/// The UNet weights file of a folder made by [`unet_with`].
fn weights_of(d: &Path) -> PathBuf {
    d.join("diffusion_pytorch_model.safetensors")
}

#[test]
fn r01_missing_model_folder() {
    let e = load(&fx("no-such-model")).unwrap_err();
    assert!(
        matches!(&e, Error::MissingFile { path, .. } if path.ends_with("no-such-model")),
        "{e}"
    );
    assert!(e.to_string().contains("no-such-model"));
}

#[test]
fn r02_not_a_diffusers_folder() {
    let e = load(&fx("golden")).unwrap_err();
    assert!(
        matches!(&e, Error::NotADiffusersFolder { reason, .. } if reason.contains("model_index.json")),
        "{e}"
    );
}

#[test]
fn r03_missing_component_folder() {
    let d = tmp();
    copy_dir(&fx("sd1-tiny"), &d);
    std::fs::remove_dir_all(d.join("vae")).unwrap();
    let e = load(&d).unwrap_err();
    assert!(
        matches!(&e, Error::NotADiffusersFolder { reason, .. } if reason.contains("vae/")),
        "{e}"
    );
}

#[test]
fn r04_missing_weights_file() {
    let d = tmp();
    copy_dir(&fx("sd1-tiny"), &d);
    std::fs::remove_file(d.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let e = load(&d).unwrap_err();
    assert!(
        matches!(&e, Error::MissingFile { path, .. } if path.ends_with("diffusion_pytorch_model.safetensors")),
        "{e}"
    );
}

#[test]
fn r05_truncated_safetensors() {
    let d = unet_with(|_| {});
    let f = d.join("diffusion_pytorch_model.safetensors");
    let b = std::fs::read(&f).unwrap();
    std::fs::write(&f, &b[..b.len() - 100]).unwrap();
    let e = unet_err(&d);
    assert!(
        matches!(&e, Error::Safetensors { file, .. } if file == &f),
        "{e}"
    );
}

#[test]
fn r06_tensor_wrong_shape() {
    let d = unet_with(|t| {
        let e = t.iter_mut().find(|(k, ..)| k == "conv_in.bias").unwrap();
        e.2 = vec![8];
        e.3.truncate(32);
    });
    let e = unet_err(&d);
    assert!(
        matches!(&e, Error::TensorShape { file, key, expected, got } if file == &weights_of(&d) && key == "conv_in.bias" && expected == &vec![16] && got == &vec![8]),
        "{e}"
    );
    assert!(
        e.to_string().contains("[16]") && e.to_string().contains("[8]"),
        "{e}"
    );
}

#[test]
fn r07_tensor_wrong_dtype() {
    let d = unet_with(|t| {
        let e = t.iter_mut().find(|(k, ..)| k == "conv_in.bias").unwrap();
        e.1 = safetensors::Dtype::I32;
    });
    let e = unet_err(&d);
    assert!(
        matches!(&e, Error::TensorDtype { file, key, dtype } if file == &weights_of(&d) && key == "conv_in.bias" && dtype.contains("I32")),
        "{e}"
    );
}

#[test]
fn r08_tensor_missing() {
    let d = unet_with(|t| t.retain(|(k, ..)| k != "conv_out.weight"));
    let e = unet_err(&d);
    assert!(
        matches!(&e, Error::MissingTensor { file, key } if file == &weights_of(&d) && key == "conv_out.weight"),
        "{e}"
    );
}

#[test]
fn r09_tensor_nan_or_inf() {
    let d = unet_with(|t| {
        let e = t.iter_mut().find(|(k, ..)| k == "conv_in.bias").unwrap();
        e.3[0..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
        e.3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let e = unet_err(&d);
    assert!(
        matches!(&e, Error::NonFiniteTensor { file, key, count: 2 } if file == &weights_of(&d) && key == "conv_in.bias"),
        "{e}"
    );
}

#[test]
fn r68_tensor_beyond_f16_range() {
    // An f32 checkpoint with a value f16 cannot hold, loaded with `--dtype f16`: refused, not
    // loaded as Inf. bf16 (f32's range) and f32 load it.
    let d = unet_with(|t| {
        let e = t.iter_mut().find(|(k, ..)| k == "conv_in.bias").unwrap();
        e.3[0..4].copy_from_slice(&1.0e5f32.to_le_bytes());
        e.3[4..8].copy_from_slice(&(-7.0e4f32).to_le_bytes());
    });
    let dtype = layret::burn::tensor::DType::F16;
    let e = UNet2DConditionModel::from_dir(&d, &dev(), dtype, None).unwrap_err();
    assert!(
        matches!(&e, Error::DtypeOverflow { file, key, dtype, count: 2, max }
            if file == &weights_of(&d) && key == "conv_in.bias" && dtype == "f16" && *max == 1.0e5),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("conv_in.bias") && msg.contains("f32 or bf16"),
        "{msg}"
    );
    for ok in [
        layret::burn::tensor::DType::BF16,
        layret::burn::tensor::DType::F32,
    ] {
        UNet2DConditionModel::from_dir(&d, &dev(), ok, None).unwrap();
    }
}

#[test]
fn r69_dtype_the_device_cannot_compute_in() {
    // flex computes in f32, f16 and bf16; wgpu has no bf16 (WGSL). On a device that lacks a
    // dtype the load is refused before any weight is created, naming what it can use; on one
    // that has it, the same load succeeds. (CI's lavapipe run takes the refusal branch.)
    let device = dev();
    for dtype in [
        layret::burn::tensor::DType::BF16,
        layret::burn::tensor::DType::F16,
    ] {
        let opts = LoadOptions::default().with_dtype(dtype);
        let got = StableDiffusion::load(fx("sd1-tiny"), &device, &opts);
        if device.supports_dtype(dtype) {
            got.unwrap();
        } else {
            let e = got.unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(&e, Error::UnsupportedDtype { dtype: d, .. } if d == layret::core::host::dtype_name(dtype))
                    && msg.contains("f32"),
                "{msg}"
            );
        }
    }
    // The refusal itself on any machine: a device like wgpu (no bf16).
    use layret::burn::tensor::DType;
    let e = layret::core::host::check_dtype_with("wgpu", DType::BF16, |d| d != DType::BF16)
        .unwrap_err();
    assert!(
        matches!(&e, Error::UnsupportedDtype { device, dtype, alternatives }
            if device == "wgpu" && dtype == "bf16" && alternatives == "f16 or f32"),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "device `wgpu` cannot compute in bf16; use f16 or f32"
    );
}

#[test]
fn r10_unexpected_tensor() {
    let d = unet_with(|t| {
        t.push((
            "down_blocks.9.extra.weight".into(),
            safetensors::Dtype::F32,
            vec![1],
            vec![0; 4],
        ))
    });
    let e = unet_err(&d);
    assert!(
        matches!(&e, Error::UnexpectedTensors { file, count: 1, keys } if file == &weights_of(&d) && keys == &vec!["down_blocks.9.extra.weight".to_string()]),
        "{e}"
    );
}

#[test]
fn r11_config_unknown_block_type() {
    let (e, f) =
        unet_config_err(|v| v["down_block_types"][0] = "SimpleCrossAttnDownBlock2D".into());
    assert!(
        matches!(&e, Error::UnsupportedConfig { file, key, value, supported } if file == &f && key == "down_block_types" && value.contains("SimpleCrossAttn") && supported.contains("CrossAttnDownBlock2D")),
        "{e}"
    );
}

#[test]
fn r12_config_missing_field() {
    let (e, f) = unet_config_err(|v| {
        v.as_object_mut().unwrap().remove("block_out_channels");
    });
    assert!(
        matches!(&e, Error::Config { file, message } if file == &f && message.contains("block_out_channels")),
        "{e}"
    );
}

#[test]
fn r13_config_malformed_json() {
    let d = tmp();
    std::fs::write(d.join("config.json"), "{\"block_out_channels\": [16, 32,").unwrap();
    let e = UNetConfig::from_file(&d.join("config.json")).unwrap_err();
    assert!(
        matches!(&e, Error::Config { file, message } if file == &d.join("config.json") && message.contains("line") && message.contains("column")),
        "{e}"
    );
}

#[test]
fn r14_config_unsupported_setting() {
    let (e, f) = unet_config_err(|v| v["class_embed_type"] = "timestep".into());
    assert!(
        matches!(&e, Error::UnsupportedConfig { file, key, value, .. } if file == &f && key == "class_embed_type" && value == "\"timestep\""),
        "{e}"
    );
    let (e, f) = unet_config_err(|v| v["brand_new_option"] = 3.into());
    assert!(
        matches!(&e, Error::UnsupportedConfig { file, key, value, .. } if file == &f && key == "brand_new_option" && value == "3"),
        "{e}"
    );
}

#[test]
fn r15_tokenizer_files_missing() {
    let d = tmp();
    std::fs::copy(fx("sd1-tiny/tokenizer/vocab.json"), d.join("vocab.json")).unwrap();
    let e = ClipTokenizer::from_dir(&d).unwrap_err();
    assert!(
        matches!(&e, Error::MissingFile { path, .. } if path == &d.join("merges.txt")),
        "{e}"
    );
}

#[test]
fn r16_tokenizer_malformed() {
    let d = tmp();
    std::fs::write(
        d.join("tokenizer.json"),
        "{\"version\": \"1.0\", \"model\": 5}",
    )
    .unwrap();
    let e = ClipTokenizer::from_dir(&d).unwrap_err();
    assert!(
        matches!(&e, Error::Tokenizer { path, .. } if path.ends_with("tokenizer.json")),
        "{e}"
    );
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    std::fs::write(d.join("vocab.json"), "[1, 2]").unwrap();
    std::fs::write(d.join("merges.txt"), "").unwrap();
    let e = ClipTokenizer::from_dir(&d).unwrap_err();
    assert!(
        matches!(&e, Error::Tokenizer { path, .. } if path.ends_with("vocab.json")),
        "{e}"
    );
}

#[test]
fn r17_prompt_over_77_tokens() {
    let e = sd1().encode_prompts(&[&"a ".repeat(76)]).unwrap_err();
    assert!(
        matches!(
            &e,
            Error::PromptTooLong {
                tokens: 78,
                max: 77,
                ..
            }
        ),
        "{e}"
    );
}

fn ti_pair() -> ModelPair {
    ModelPair::new(
        sd1(),
        &Personalization::TextualInversion {
            path: fx("personalization/ti_cat_toy.safetensors"),
            token: None,
        },
    )
    .unwrap()
}

fn reference() -> Tensor<4> {
    let img = image::RgbImage::from_fn(128, 128, |x, y| image::Rgb([x as u8, y as u8, 100]));
    layret::core::image_io::from_rgb8(&[img], &dev()).unwrap()
}

fn gen_request(prompt: &str) -> GenerateRequest {
    GenerateRequest::new([prompt], 128, 128)
        .with_samples(1)
        .with_noise(NoiseSource::Seed(1))
        .with_settings(MethodSettings::default().with_steps(2).with_mask_factor(2))
        .with_masks(false)
}

#[test]
fn r18_phrase_not_in_prompt() {
    let s = Subject {
        phrase: "<cat-toy>".into(),
        class_phrase: "cat toy".into(),
        references: vec![reference()],
    };
    let e = LayoutAndRetouch::default()
        .generate(
            &ti_pair(),
            &s,
            &gen_request("a dog"),
            &mut layret::core::ignore_progress,
        )
        .unwrap_err();
    assert!(
        matches!(&e, Error::PhraseNotInPrompt { phrase, prompt } if phrase == "<cat-toy>" && prompt == "a dog"),
        "{e}"
    );
}

#[test]
fn r19_class_phrase_empty() {
    let s = Subject {
        phrase: "<cat-toy>".into(),
        class_phrase: " ".into(),
        references: vec![reference()],
    };
    let e = LayoutAndRetouch::default()
        .generate(
            &ti_pair(),
            &s,
            &gen_request("a <cat-toy>"),
            &mut layret::core::ignore_progress,
        )
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { name, .. } if name == "class"),
        "{e}"
    );
}

#[test]
fn r20_textual_inversion_wrong_dimension() {
    let d = tmp();
    let bytes = vec![0u8; 24 * 4];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![24], &bytes).unwrap();
    safetensors::serialize_to_file(vec![("<x>", view)], None, &d.join("x.safetensors")).unwrap();
    let sd = sd1();
    let ti = TextualInversion::load(&d.join("x.safetensors"), None, &dev()).unwrap();
    let e = ti
        .apply(&mut sd.tokenizer().clone(), sd.text_encoder())
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { message, .. } if message.contains("dimension 24") && message.contains("text encoder 16")),
        "{e}"
    );
}

#[test]
fn r21_textual_inversion_token_exists() {
    let sd = sd1();
    let ti = TextualInversion::load(
        &fx("personalization/ti_cat_toy.safetensors"),
        Some("<|endoftext|>"),
        &dev(),
    )
    .unwrap();
    let e = ti
        .apply(&mut sd.tokenizer().clone(), sd.text_encoder())
        .unwrap_err();
    assert!(
        matches!(&e, Error::Tokenizer { message, .. } if message.contains("<|endoftext|>") && message.contains("already")),
        "{e}"
    );
}

#[test]
fn r22_textual_inversion_without_embedding() {
    let d = tmp();
    let none: Vec<(&str, safetensors::tensor::TensorView)> = vec![];
    safetensors::serialize_to_file(none, None, &d.join("e.safetensors")).unwrap();
    let e = TextualInversion::load(&d.join("e.safetensors"), None, &dev()).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { message, .. } if message.contains("no embedding") && message.contains("e.safetensors")),
        "{e}"
    );
}

fn ref_err(path: &Path) -> Error {
    load_reference(path, 128, 128).unwrap_err()
}

#[test]
fn r23_reference_unreadable() {
    let d = tmp();
    std::fs::write(d.join("x.png"), b"\x89PNG not really").unwrap();
    let e = ref_err(&d.join("x.png"));
    assert!(
        matches!(&e, Error::Image { path, message } if path.ends_with("x.png") && message.contains("decode")),
        "{e}"
    );
}

#[test]
fn r24_reference_grayscale_is_converted() {
    // PIL's convert("RGB"): the gray value in all three channels.
    let d = tmp();
    image::GrayImage::from_pixel(128, 128, image::Luma([77]))
        .save(d.join("g.png"))
        .unwrap();
    let img = load_reference(&d.join("g.png"), 128, 128).unwrap();
    assert!(img.pixels().all(|p| p.0 == [77, 77, 77]));
}

#[test]
fn r25_reference_rgba_drops_alpha() {
    // PIL's convert("RGB") drops alpha (no compositing over white).
    let d = tmp();
    image::RgbaImage::from_pixel(128, 128, image::Rgba([10, 20, 30, 0]))
        .save(d.join("a.png"))
        .unwrap();
    let img = load_reference(&d.join("a.png"), 128, 128).unwrap();
    assert!(
        img.pixels().all(|p| p.0 == [10, 20, 30]),
        "alpha dropped, color kept"
    );
}

#[test]
fn r26_reference_16_bit_is_reduced_to_8_bit() {
    let d = tmp();
    image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_pixel(
        128,
        128,
        image::Rgb([65535, 32896, 0]),
    )
    .save(d.join("w.png"))
    .unwrap();
    let img = load_reference(&d.join("w.png"), 128, 128).unwrap();
    assert!(
        img.pixels().all(|p| p.0 == [255, 128, 0]),
        "{:?}",
        img.get_pixel(0, 0)
    );
}

#[test]
fn r27_reference_tiny() {
    let d = tmp();
    image::RgbImage::new(32, 32).save(d.join("t.png")).unwrap();
    let e = ref_err(&d.join("t.png"));
    assert!(
        matches!(&e, Error::Image { message, .. } if message.contains("32×32") && message.contains("64")),
        "{e}"
    );
}

#[test]
fn r28_reference_huge() {
    let d = tmp();
    image::RgbImage::new(8200, 64)
        .save(d.join("h.png"))
        .unwrap();
    let e = ref_err(&d.join("h.png"));
    assert!(
        matches!(&e, Error::Image { message, .. } if message.contains("8200×64") && message.contains("8192")),
        "{e}"
    );
}

#[test]
fn r29_reference_non_square_is_cropped() {
    let d = tmp();
    image::RgbImage::from_fn(300, 200, |x, _| {
        image::Rgb([if !(50..250).contains(&x) { 255 } else { 0 }, 0, 0])
    })
    .save(d.join("w.png"))
    .unwrap();
    let img = load_reference(&d.join("w.png"), 128, 128).unwrap();
    assert_eq!(img.dimensions(), (128, 128));
    // The centered 200×200 crop drops the red side bands.
    assert!(
        img.pixels().all(|p| p.0[0] < 30),
        "center crop kept the borders"
    );
}

fn txt(f: impl FnOnce(&mut Txt2ImgRequest)) -> Error {
    let mut r = Txt2ImgRequest::new("a dog");
    (r.steps, r.width, r.height) = (1, 64, 64);
    f(&mut r);
    sd1()
        .txt2img(&r, &mut layret::core::ignore_progress)
        .unwrap_err()
}

#[test]
fn r30_size_not_multiple_of_8() {
    let e = txt(|r| r.height = 100);
    assert!(
        matches!(&e, Error::InvalidArgument { name, message } if name == "height" && message.contains("100")),
        "{e}"
    );
}

#[test]
fn r31_zero_steps() {
    let e = txt(|r| r.steps = 0);
    assert!(
        matches!(&e, Error::InvalidArgument { name, .. } if name == "steps"),
        "{e}"
    );
}

#[test]
fn r32_guidance_nan() {
    let e = txt(|r| r.guidance = f64::NAN);
    assert!(
        matches!(&e, Error::InvalidArgument { name, message } if name == "guidance" && message.contains("NaN")),
        "{e}"
    );
    for inf in [f64::INFINITY, f64::NEG_INFINITY] {
        let e = txt(|r| r.guidance = inf);
        assert!(
            matches!(&e, Error::InvalidArgument { name, message } if name == "guidance" && message.contains("inf")),
            "{e}"
        );
    }
}

#[test]
fn r33_noise_wrong_shape() {
    let e = txt(|r| r.noise = NoiseSource::Tensor(Tensor::zeros([1, 4, 8, 9], &dev())));
    assert!(
        matches!(&e, Error::Shape { what, got, .. } if what == "initial noise" && got == &vec![1, 4, 8, 9]),
        "{e}"
    );
    let f = fx("golden/pipeline_sd1-tiny.safetensors");
    let e = layret::core::noise::load_tensor::<4>(&f, "noise", [1, 4, 8, 8], &dev()).unwrap_err();
    assert!(
        matches!(&e, Error::Shape { what, .. } if what.contains("`noise`") && what.contains("pipeline_sd1-tiny")),
        "{e}"
    );
}

fn cli(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_layret"))
        .args(args)
        .arg("-q")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn r34_output_folder_not_writable() {
    let d = tmp();
    std::fs::write(d.join("file"), b"").unwrap();
    let out = d.join("file/sub");
    let ti = format!(
        "ti:{}",
        fx("personalization/ti_cat_toy.safetensors").display()
    );
    let model = fx("sd1-tiny").display().to_string();
    let err = cli(&[
        "generate",
        "--model",
        &model,
        "--personalization",
        &ti,
        "--phrase",
        "<cat-toy>",
        "--class",
        "toy",
        "--reference",
        "x.png",
        "--prompt",
        "a <cat-toy>",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        err.contains("error: creating") && err.contains("file/sub"),
        "{err}"
    );
}

#[test]
fn r35_device_not_built_in() {
    let e = layret::device::parse_device("cuda:1").unwrap_err();
    assert!(
        matches!(&e, Error::DeviceUnavailable { device, message } if device == "cuda:1" && message.contains("--features cuda")),
        "{e}"
    );
    let e = layret::device::parse_device("tpu").unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { name, .. } if name == "device"),
        "{e}"
    );
}

#[test]
fn r36_scheduler_unsupported() {
    let d = tmp();
    std::fs::write(d.join("s.json"), r#"{"trained_betas": [0.1, 0.2]}"#).unwrap();
    let e = SchedulerConfig::from_file(&d.join("s.json")).unwrap_err();
    assert!(
        matches!(&e, Error::UnsupportedConfig { file, key, .. } if file == &d.join("s.json") && key == "trained_betas"),
        "{e}"
    );
}

#[test]
fn r37_lora_unrecognized() {
    let d = tmp();
    let bytes = vec![0u8; 16];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &bytes).unwrap();
    safetensors::serialize_to_file(
        vec![("model.diffusion_model.foo", view)],
        None,
        &d.join("l.safetensors"),
    )
    .unwrap();
    let e = Lora::load(&d.join("l.safetensors"), &dev()).unwrap_err();
    let file = d.join("l.safetensors").display().to_string();
    assert!(
        matches!(&e, Error::InvalidArgument { message, .. } if message.contains("model.diffusion_model.foo") && message.contains(&file)),
        "{e}"
    );
}

#[test]
fn r38_custom_diffusion_for_another_model() {
    // Weights naming a layer this UNet does not have.
    let sd2 = load(&fx("sd2-tiny")).unwrap();
    let d = tmp();
    let bytes = vec![0u8; 16 * 16 * 4];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![16, 16], &bytes)
        .unwrap();
    safetensors::serialize_to_file(
        vec![("up_blocks.7.attentions.0.transformer_blocks.0.attn2.processor.to_k_custom_diffusion.weight", view)],
        None,
        &d.join("cd.safetensors"),
    )
    .unwrap();
    let e = apply_custom_diffusion(sd2.unet(), &d.join("cd.safetensors")).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { message, .. } if message.contains("up_blocks.7")),
        "{e}"
    );
}

#[test]
fn r39_dreambooth_with_another_vae() {
    let e = Personalization::DreamBooth {
        dir: fx("sd2-tiny"),
    }
    .apply(&sd1())
    .unwrap_err();
    assert!(
        matches!(&e, Error::NotADiffusersFolder { reason, .. } if reason.contains("VAE")),
        "{e}"
    );
}

#[test]
fn r40_non_finite_latents_stop_with_the_step() {
    // A UNet whose output overflows: conv_out's bias set to 3e38.
    let d = tmp();
    copy_dir(&fx("sd1-tiny"), &d);
    let unet = unet_with(|t| {
        let e = t.iter_mut().find(|(k, ..)| k == "conv_out.bias").unwrap();
        for c in e.3.chunks_exact_mut(4) {
            c.copy_from_slice(&3.0e38f32.to_le_bytes());
        }
    });
    std::fs::copy(
        unet.join("diffusion_pytorch_model.safetensors"),
        d.join("unet/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    let sd = load(&d).unwrap();
    let mut r = Txt2ImgRequest::new("a dog");
    (r.steps, r.width, r.height) = (3, 64, 64);
    let e = sd
        .txt2img(&r, &mut layret::core::ignore_progress)
        .unwrap_err();
    assert!(
        matches!(&e, Error::NonFinite { step: 0, suggestion, .. } if suggestion.contains("f32")),
        "{e}"
    );
}

#[test]
fn r41_mask_factor_not_dividing_the_latent() {
    let s = Subject {
        phrase: "<cat-toy>".into(),
        class_phrase: "cat toy".into(),
        references: vec![reference()],
    };
    let mut req = gen_request("a <cat-toy>");
    req.settings.mask_factor = 3;
    let e = LayoutAndRetouch::default()
        .generate(&ti_pair(), &s, &req, &mut layret::core::ignore_progress)
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { name, message } if name == "mask_factor" && message.contains("16×16")),
        "{e}"
    );
}

#[test]
fn r42_text_encoder_ids_out_of_range() {
    let te: ClipTextEncoder = sd1().text_encoder().clone();
    let e = te.encode(&[vec![60000; 77]], 0).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { message, .. } if message.contains("60000")),
        "{e}"
    );
}

#[test]
fn determinism_same_seed_same_pngs() {
    let d = tmp();
    let model = fx("sd1-tiny").display().to_string();
    let run = |out: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_layret"))
            .args([
                "txt2img", "--model", &model, "--prompt", "a dog", "--steps", "3", "--width", "64",
                "--height", "64", "--seed", "11", "-q", "--out",
            ])
            .arg(d.join(out))
            .output()
            .unwrap();
        assert!(o.status.success());
        std::fs::read(d.join(out)).unwrap()
    };
    assert_eq!(
        run("a.png"),
        run("b.png"),
        "same seed, same settings: bit-identical PNGs"
    );
}

#[test]
fn r43_pickle_referencing_code() {
    let f = fx("formats/bad/code_global.pt");
    let e = layret::core::weights::TensorFile::open(&f).unwrap_err();
    assert!(
        matches!(&e, Error::Pickle { file, message } if file == &f && message.contains("`posix.system`") && message.contains("`payload`")),
        "{e}"
    );
}

#[test]
fn r44_truncated_pickle() {
    let d = tmp();
    let f = d.join("model.ckpt");
    let b = std::fs::read(fx("formats/sd1-tiny-ldm.ckpt")).unwrap();
    std::fs::write(&f, &b[..b.len() / 3]).unwrap();
    let e = load(&f).unwrap_err();
    assert!(
        matches!(&e, Error::Pickle { file, .. } if file == &f),
        "{e}"
    );
}

/// A safetensors file with zero-filled f32 tensors of these keys and shapes.
fn tensors_file(path: &Path, items: &[(&str, Vec<usize>)]) {
    let bufs: Vec<Vec<u8>> = items
        .iter()
        .map(|(_, s)| vec![0u8; 4 * s.iter().product::<usize>()])
        .collect();
    let views: Vec<_> = items
        .iter()
        .zip(&bufs)
        .map(|((k, s), b)| {
            (
                k.to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn r45_single_file_not_sd1_or_sd2() {
    let d = tmp();
    let f = d.join("sdxl.safetensors");
    tensors_file(
        &f,
        &[
            ("conditioner.embedders.1.model.ln_final.weight", vec![4]),
            (
                "model.diffusion_model.input_blocks.0.0.weight",
                vec![4, 4, 3, 3],
            ),
        ],
    );
    let e = load(&f).unwrap_err();
    assert!(
        matches!(&e, Error::NotASingleFile { path, reason } if path == &f && reason.contains("SDXL")),
        "{e}"
    );
    let g = d.join("inpaint.safetensors");
    tensors_file(
        &g,
        &[(
            "model.diffusion_model.input_blocks.0.0.weight",
            vec![320, 9, 3, 3],
        )],
    );
    let e = load(&g).unwrap_err();
    assert!(
        matches!(&e, Error::NotASingleFile { reason, .. } if reason.contains("9 input channels") && reason.contains("inpainting")),
        "{e}"
    );
}

#[test]
fn r46_single_file_of_a_non_standard_architecture() {
    let f = fx("formats/sd1-tiny-ldm.safetensors");
    let e = load(&f).unwrap_err();
    assert!(
        matches!(&e, Error::NotASingleFile { path, reason } if path == &f && reason.contains("cross-attention width 16") && reason.contains("768")),
        "{e}"
    );
}

#[test]
fn r47_single_file_with_unknown_tensors() {
    let d = tmp();
    let f = d.join("extra.safetensors");
    let b = std::fs::read(fx("formats/sd1-tiny-ldm.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&b).unwrap();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().collect();
    let extra = vec![0u8; 4];
    views.push((
        "cond_stage_model.hypernetwork.weight".into(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &extra).unwrap(),
    ));
    safetensors::serialize_to_file(views, None, &f).unwrap();
    let e = StableDiffusion::load(
        &f,
        &dev(),
        &LoadOptions::default().with_config(fx("sd1-tiny")),
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::UnexpectedTensors { file, keys, .. } if file == &f && keys == &vec!["cond_stage_model.hypernetwork.weight".to_string()]),
        "{e}"
    );
}

#[test]
fn r48_lora_rank_mismatch() {
    let d = tmp();
    let f = d.join("l.safetensors");
    let m = "lora_unet_down_blocks_0_attentions_0_proj_in";
    tensors_file(
        &f,
        &[
            (&format!("{m}.lora_down.weight"), vec![4, 16, 1, 1]),
            (&format!("{m}.lora_up.weight"), vec![16, 8, 1, 1]),
        ],
    );
    let e = Lora::load(&f, &dev()).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { message, .. } if message.contains("rank mismatch") && message.contains("[4, 16, 1, 1]") && message.contains("[16, 8, 1, 1]") && message.contains("l.safetensors")),
        "{e}"
    );
}

#[test]
fn r49_lora_of_an_unsupported_algorithm() {
    let d = tmp();
    let f = d.join("lokr.safetensors");
    tensors_file(
        &f,
        &[(
            "lora_unet_down_blocks_0_attentions_0_proj_in.lokr_w1",
            vec![4, 4],
        )],
    );
    let e = Lora::load(&f, &dev()).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { message, .. } if message.contains("LoKr") && message.contains("lokr_w1")),
        "{e}"
    );
}

#[test]
fn r50_dreambooth_after_another_personalization() {
    let ti = Personalization::TextualInversion {
        path: fx("personalization/ti_cat_toy.safetensors"),
        token: None,
    };
    let db = Personalization::DreamBooth {
        dir: fx("sd1-tiny-dreambooth"),
    };
    let e = Personalization::apply_all(&[ti, db], &sd1()).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { name, message } if name == "personalization" && message.contains("must come first") && message.contains("sd1-tiny-dreambooth")),
        "{e}"
    );
}

#[test]
fn r51_sharded_weights() {
    let d = tmp();
    copy_dir(&fx("sd1-tiny"), &d);
    std::fs::remove_file(d.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let index = d.join("unet/diffusion_pytorch_model.safetensors.index.json");
    std::fs::write(&index, r#"{"weight_map": {}}"#).unwrap();
    let e = load(&d).unwrap_err();
    assert!(
        matches!(&e, Error::UnsupportedConfig { file, value, .. } if file == &index && value.contains("sharded")),
        "{e}"
    );
}

#[test]
fn r52_reference_image_truncated() {
    let d = tmp();
    let mut jpeg = Vec::new();
    image::RgbImage::from_pixel(128, 128, image::Rgb([40, 90, 200]))
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    let f = d.join("cut.jpg");
    std::fs::write(&f, &jpeg[..jpeg.len() / 2]).unwrap();
    let e = ref_err(&f);
    assert!(
        matches!(&e, Error::Image { path, message } if path == &f && message.contains("truncated")),
        "{e}"
    );
}

#[test]
fn r53_cancelled() {
    let mut r = Txt2ImgRequest::new("a dog");
    (r.steps, r.width, r.height) = (5, 64, 64);
    let mut calls = 0;
    let e = sd1()
        .txt2img(&r, &mut |_| {
            calls += 1;
            if calls == 2 {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        })
        .unwrap_err();
    assert!(
        matches!(&e, Error::Cancelled { stage, step: 2, total: 5 } if stage == "denoise"),
        "{e}"
    );
    assert_eq!(calls, 2, "stopped at the step boundary it was asked at");
}

/// One CFG UNet pass of sd1-tiny at a 16×16 latent with `layout` (its rows) and `processor`.
fn unet_pass(
    layout: layret::core::processor::BatchLayout,
    processor: &mut dyn layret::core::processor::AttentionProcessor,
) -> Result<Tensor<4>, Error> {
    use layret::core::sampling::{BatchText, GuidedPass};
    let sd = sd1();
    let rows = layout.rows_per_half();
    let model = sd.denoiser();
    let text = BatchText::repeated(
        model.encode(&["a dog"]).unwrap(),
        model.encode(&[""]).unwrap(),
        rows,
    );
    let x = layret::core::noise::seeded_noise(1, [rows, 4, 16, 16], &dev());
    let pass = GuidedPass {
        step: 5,
        timestep: 501.0,
        kind: layret::core::processor::Pass::Sample,
        layout,
        guidance: 7.5,
    };
    model.guided_eps(&pass, x, &text, processor)
}

fn swapped() -> layret::attention::SiteSelector {
    layret::pipeline::swapped_sites(2)
}

#[test]
fn r54_processor_asks_for_a_branch_the_batch_lacks() {
    use layret::attention::{MutualSelfAttention, Router};
    use layret::core::processor::{BatchLayout, Branch};
    let mut msa = MutualSelfAttention::new(Branch::Source(0), Branch::Target, 0);
    let mut router = Router::new();
    router.route(swapped(), &mut msa);
    let layout = BatchLayout::new(vec![Branch::Context, Branch::Target], 1, true).unwrap();
    let e = unet_pass(layout, &mut router).unwrap_err();
    assert!(
        matches!(&e, Error::UnknownBranch { branch, branches } if branch == "source 0" && branches == "context, target"),
        "{e}"
    );
}

#[test]
fn r55_replayed_keys_values_missing() {
    use layret::attention::{KvPolicy, KvSource, KvStore, MultiSourceSwap, Router, SwapMode};
    use layret::core::processor::{BatchLayout, Branch};
    let empty = KvStore::new(KvPolicy::KeepF32);
    let mut swap = MultiSourceSwap::new(
        Branch::Target,
        KvSource::Replay {
            context: &empty,
            reference: &empty,
        },
        0,
        SwapMode::Split,
    );
    let mut router = Router::new();
    router.route(swapped(), &mut swap);
    let e = unet_pass(BatchLayout::single(Branch::Target, 1, true), &mut router).unwrap_err();
    assert!(
        matches!(&e, Error::MissingKv { branch, site, step: 5, .. } if branch == "context" && site.starts_with("up_blocks.")),
        "{e}"
    );
}

#[test]
fn r56_replayed_keys_values_of_the_wrong_shape() {
    use layret::attention::{KvPolicy, KvSource, KvStore, MultiSourceSwap, Router, SwapMode};
    use layret::core::processor::{BatchLayout, Branch};
    // Recorded at an 8×8 latent, replayed into a 16×16 pass: the token count differs.
    let sd = sd1();
    let mut store = KvStore::new(KvPolicy::KeepF32);
    for s in sd.unet().sites(16, 16).iter().filter(|s| {
        s.path.starts_with("up_blocks")
            && s.kind == layret::core::processor::AttentionKind::SelfAttention
    }) {
        let t = Tensor::<4>::zeros([2, s.heads, s.height * s.width / 4, s.head_dim], &dev());
        store.insert(s.path, 5, t.clone(), t);
    }
    let mut swap = MultiSourceSwap::new(
        Branch::Target,
        KvSource::Replay {
            context: &store,
            reference: &store,
        },
        0,
        SwapMode::Split,
    );
    let mut router = Router::new();
    router.route(swapped(), &mut swap);
    let e = unet_pass(BatchLayout::single(Branch::Target, 1, true), &mut router).unwrap_err();
    assert!(
        matches!(&e, Error::Shape { what, expected, .. } if what.contains("replayed context keys at up_blocks.") && expected.contains("tokens")),
        "{e}"
    );
}

#[test]
fn r57_required_route_matching_nothing() {
    use layret::attention::{Router, SiteSelector};
    use layret::core::processor::{BatchLayout, Branch, DefaultAttention};
    let mut p = DefaultAttention;
    let mut router = Router::new();
    router.require(SiteSelector::new().path("up_blokcs.*"), &mut p);
    let e = unet_pass(BatchLayout::single(Branch::Main, 1, true), &mut router).unwrap_err();
    assert!(
        matches!(&e, Error::UnmatchedRoute { route, pass } if route == "[path up_blokcs.*]" && pass == "sample"),
        "{e}"
    );
    drop(router);
    // A plain route that never matched is listed, not an error.
    let mut router = Router::new();
    router.route(SiteSelector::new().path("up_blokcs.*"), &mut p);
    unet_pass(BatchLayout::single(Branch::Main, 1, true), &mut router).unwrap();
    assert_eq!(
        router.unmatched(),
        vec!["route [path up_blokcs.*]".to_string()]
    );
}

/// A user processor that fails at its third call, or returns a wrongly shaped output.
struct Failing {
    calls: usize,
    bad_shape: bool,
}

impl layret::core::processor::AttentionProcessor for Failing {
    fn attend(
        &mut self,
        site: &layret::core::processor::AttentionSite,
        _ctx: &layret::core::processor::StepContext,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> Result<Tensor<4>, Error> {
        self.calls += 1;
        if self.bad_shape {
            return Ok(layret::core::processor::default_attention(q, k, v).slice([0..1]));
        }
        if self.calls == 3 {
            return Err(Error::Processor {
                site: site.path.into(),
                message: "my statistics overflowed".into(),
            });
        }
        Ok(layret::core::processor::default_attention(q, k, v))
    }
}

#[test]
fn r58_user_processor_fails_or_returns_a_wrong_shape() {
    let mut r = Txt2ImgRequest::new("a dog");
    (r.steps, r.width, r.height) = (2, 64, 64);
    let sd = sd1();
    let mut f = Failing {
        calls: 0,
        bad_shape: false,
    };
    let e = sd
        .txt2img_latents(&r, &mut f, &mut layret::core::ignore_progress)
        .unwrap_err();
    assert!(
        matches!(&e, Error::Processor { site, message } if site.starts_with("down_blocks.0") && message == "my statistics overflowed"),
        "{e}"
    );
    assert_eq!(f.calls, 3, "the pass stopped at the failing call");
    let mut f = Failing {
        calls: 0,
        bad_shape: true,
    };
    let e = sd
        .txt2img_latents(&r, &mut f, &mut layret::core::ignore_progress)
        .unwrap_err();
    assert!(
        matches!(&e, Error::Shape { what, expected, got } if what.contains("attention processor output at down_blocks.0") && expected.starts_with("[2,") && got[0] == 1),
        "{e}"
    );
}

#[test]
fn r59_multistep_sampler_stepped_out_of_order() {
    use layret::core::scheduler::{SamplerKind, SamplerOptions};
    let cfg = SchedulerConfig::sd();
    let mut s = SamplerKind::DpmPp2m
        .build(&cfg, 4, SamplerOptions::default())
        .unwrap();
    let x: Tensor<4> = layret::core::noise::seeded_noise(1, [1, 4, 2, 2], &dev());
    s.step(x.clone(), 0, x.clone(), None).unwrap();
    s.step(x.clone(), 1, x.clone(), None).unwrap();
    // Reused for a second run without reset(): step 0 again.
    let e = s.step(x.clone(), 0, x, None).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { name, message } if name == "step_index"
            && message.contains("DPM-Solver++") && message.contains("expects step 2")),
        "{e}"
    );
}

#[test]
fn r60_unknown_sampler_or_option_it_lacks() {
    use layret::core::scheduler::{SamplerKind, SamplerOptions};
    let e = "dpm++".parse::<SamplerKind>().unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { message, .. } if message.contains("\"dpm++\"") && message.contains("dpmpp-2m")),
        "{e}"
    );
    let cfg = SchedulerConfig::sd();
    let karras = SamplerOptions {
        karras: true,
        eta: 0.0,
    };
    let e = SamplerKind::Pndm.build(&cfg, 5, karras).err().unwrap();
    assert!(
        matches!(&e, Error::InvalidArgument { name, message } if name == "karras" && message.contains("pndm")),
        "{e}"
    );
    let eta = SamplerOptions {
        karras: false,
        eta: 0.3,
    };
    let e = SamplerKind::UniPc.build(&cfg, 5, eta).err().unwrap();
    assert!(
        matches!(&e, Error::InvalidArgument { name, .. } if name == "eta"),
        "{e}"
    );
    // On the command line: clap's usage error (exit 2) with the same message.
    let out = Command::new(env!("CARGO_BIN_EXE_layret"))
        .args([
            "txt2img",
            "--model",
            "m",
            "--prompt",
            "a dog",
            "--scheduler",
            "dpm++",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("dpmpp-2m") && err.contains("euler-a"), "{err}");
}

fn batch_manifest(text: &str) -> Result<Vec<layret::batch::BatchRequest>, Error> {
    let d = tmp();
    let p = d.join("requests.jsonl");
    std::fs::write(&p, text).unwrap();
    let kind = |f: &str| match f {
        "prompt" => Some(layret::batch::FlagKind::Repeatable),
        "steps" => Some(layret::batch::FlagKind::Value),
        _ => None,
    };
    layret::batch::read_manifest(&p, &kind)
}

#[test]
fn r61_batch_manifest_lines() {
    let e = batch_manifest("{\"steps\": 2}\n{\"steps\": 2, \"sampling\": 1}\n").unwrap_err();
    assert!(
        matches!(&e, Error::Config { file, message } if file.ends_with("requests.jsonl")
            && message.starts_with("line 2:") && message.contains("`sampling`")),
        "{e}"
    );
    let e = batch_manifest("{\"steps\": 2}\nnot json\n").unwrap_err();
    assert!(
        matches!(&e, Error::Config { message, .. } if message.starts_with("line 2: not JSON")),
        "{e}"
    );
    let e = batch_manifest("{\"id\": \"a/b\"}").unwrap_err();
    assert!(
        matches!(&e, Error::Config { message, .. } if message.contains("\"a/b\"")),
        "{e}"
    );
}

#[test]
fn r62_batch_manifest_values_generate_refuses() {
    let d = tmp();
    let m = d.join("m.jsonl");
    std::fs::write(
        &m,
        format!(
            "{{\"model\": \"{}\", \"personalization\": [\"ti:x\"], \"phrase\": \"p\", \"class\": \"c\", \"prompt\": [\"p\"], \"reference\": [\"missing.png\"]}}\n",
            fx("sd1-tiny").display()
        ),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_layret"))
        .arg("batch")
        .arg(&m)
        .arg("--out")
        .arg(d.join("out"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(
        err.contains("m.jsonl") && err.contains("line 1: `reference` missing.png is not a file"),
        "{err}"
    );
}

#[test]
fn r63_batch_shard() {
    use layret::batch::Shard;
    let e = "4/4".parse::<Shard>().unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { name, message } if name == "shard" && message.contains("4/4")),
        "{e}"
    );
    let e = Shard::from_env(&|k| (k == "JOB_COMPLETION_INDEX").then(|| "2".into())).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { message, .. } if message.contains("JOB_COMPLETIONS")),
        "{e}"
    );
    let e = Shard::from_env(&|_| None).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { message, .. } if message.contains("SLURM_ARRAY_TASK_ID")),
        "{e}"
    );
}
// Row 64 (a failing request recorded in failures.jsonl while the shard goes on):
// tests/batch.rs, a_failing_request_is_recorded_and_the_shard_goes_on.
