//! The files users already have (tools/reference/make_formats.py wrote each with the tool
//! that writes that format): diffusers folders with `.bin` weights, LDM single-file
//! checkpoints (`.safetensors`, `.ckpt`; SD 1.x and 2.x), textual-inversion `.bin`/`.pt`,
//! LoRA in the kohya (LoCon), old diffusers, attention-processor and PEFT layouts — each
//! against diffusers' own loader (or, where diffusers drops layers, a merge by hand), and the
//! bad files refused by name.

mod common;

use burn::tensor::{DType, Tensor};
use layret_core::Error;
use layret_core::personalization::{Lora, Personalization};
use layret_core::processor::{DefaultAttention, StepContext};
use layret_core::stable_diffusion::{LoadOptions, NoiseSource, StableDiffusion, Txt2ImgRequest};
use layret_core::unet::UNet2DConditionModel;
use serde_json::Value;

fn fx(p: &str) -> std::path::PathBuf {
    common::fixtures().join(p)
}

fn load(path: &str, options: LoadOptions) -> StableDiffusion {
    StableDiffusion::load(fx(path), &common::device(), &options)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn cases() -> Vec<Value> {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(fx("golden/formats.json")).unwrap()).unwrap();
    doc["cases"].as_array().unwrap().clone()
}

fn case(name: &str) -> Value {
    cases()
        .into_iter()
        .find(|c| c["case"] == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

/// ε at t = 981 on the `unet_<model>` golden inputs.
fn eps(unet: &UNet2DConditionModel, model: &str) -> Tensor<4> {
    let file = format!("unet_{model}.safetensors");
    let sample: Tensor<4> = common::golden_tensor(&file, "sample");
    let ctx: Tensor<3> = common::golden_tensor(&file, "encoder_hidden_states");
    unet.forward(
        sample,
        981.0,
        &ctx,
        &mut DefaultAttention,
        &StepContext::plain(0, 981.0, 2),
    )
    .unwrap()
}

/// The `clip_<model>` golden input ids.
fn ids(model: &str) -> Vec<Vec<u32>> {
    let g = common::golden(&format!("clip_{model}.safetensors"), "input_ids");
    g.values
        .chunks(g.shape[1])
        .map(|r| r.iter().map(|&x| x as u32).collect())
        .collect()
}

/// UNet, text encoder, VAE decode and a 5-step txt2img of `sd` against `model`'s goldens.
fn check_model(sd: &StableDiffusion, model: &str, what: &str) {
    let err = common::max_abs_diff(
        eps(sd.unet(), model),
        &common::golden(&format!("unet_{model}.safetensors"), "eps_t981"),
    );
    assert!(err <= 1e-4, "{what}: UNet {err}");
    let hidden = sd.text_encoder().encode(&ids(model), 0).unwrap();
    let err = common::max_abs_diff(
        hidden,
        &common::golden(&format!("clip_{model}.safetensors"), "last_hidden_state"),
    );
    assert!(err <= 1e-4, "{what}: text encoder {err}");
    let vae = format!("vae_{model}.safetensors");
    let decoded = sd
        .vae()
        .decode(common::golden_tensor(&vae, "latents"))
        .unwrap();
    let err = common::max_abs_diff(decoded, &common::golden(&vae, "decoded"));
    assert!(err <= 1e-4, "{what}: VAE {err}");
    let file = format!("pipeline_{model}.safetensors");
    let req = Txt2ImgRequest {
        prompt: "a photo of a sks dog surfing".into(),
        negative_prompt: "blurry".into(),
        guidance: 7.5,
        steps: 5,
        width: 128,
        height: 128,
        num_images: 2,
        noise: NoiseSource::Tensor(common::golden_tensor(&file, "noise")),
        eta: 0.0,
        ..Txt2ImgRequest::new("")
    };
    let out = sd.txt2img(&req, &mut layret_core::ignore_progress).unwrap();
    let err = common::max_abs_diff(out.latents, &common::golden(&file, "latents"));
    assert!(err <= 1e-4, "{what}: txt2img latents {err}");
}

#[test]
fn diffusers_folder_with_pickled_weights() {
    let c = case("sd1-tiny-bin");
    let sd = load(c["file"].as_str().unwrap(), LoadOptions::default());
    check_model(&sd, "sd1-tiny", "sd1-tiny-bin");
    assert!(
        sd.source_files()
            .iter()
            .any(|f| f.ends_with("unet/diffusion_pytorch_model.bin")),
        "{:?}",
        sd.source_files()
    );
}

#[test]
fn single_file_checkpoints_sd1_and_sd2() {
    for (name, model) in [
        ("sd1-tiny-ldm.safetensors", "sd1-tiny"),
        ("sd1-tiny-ldm.ckpt", "sd1-tiny"),
        ("sd2-tiny-ldm.safetensors", "sd2-tiny"),
    ] {
        let c = case(name);
        let sd = load(
            c["file"].as_str().unwrap(),
            LoadOptions::default().with_config(fx(model)),
        );
        check_model(&sd, model, name);
    }
}

#[test]
fn single_file_family_is_detected_and_standard_configs_refuse_tiny_shapes() {
    use layret_core::single_file::{Family, detect};
    use layret_core::weights::TensorFile;
    let f1 = TensorFile::open(fx("formats/sd1-tiny-ldm.ckpt")).unwrap();
    let i1 = detect(&f1).unwrap();
    assert_eq!((i1.family, i1.linear_projection), (Family::Sd1, false));
    assert_eq!(
        i1.global_step,
        Some(470000),
        "the trainer's step from the pickle"
    );
    assert_eq!(i1.skipped, 21, "EMA copies, DDPM buffers, position_ids");
    let f2 = TensorFile::open(fx("formats/sd2-tiny-ldm.safetensors")).unwrap();
    let i2 = detect(&f2).unwrap();
    assert_eq!((i2.family, i2.linear_projection), (Family::Sd2, true));
    assert_eq!(
        i2.openclip_layers,
        Some(4),
        "3 text layers + the unused last resblock"
    );
    // Without --config the SD 1.5 layer plan does not fit the tiny tensors: an error naming
    // the mismatch, not a panic or a half-loaded model.
    let e = StableDiffusion::load(
        fx("formats/sd1-tiny-ldm.safetensors"),
        &common::device(),
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::NotASingleFile { reason, .. } if reason.contains("cross-attention width 16")),
        "{e}"
    );
}

#[test]
fn sd2_prediction_type_can_be_overridden() {
    use layret_core::scheduler::PredictionType;
    let sd = load(
        "formats/sd2-tiny-ldm.safetensors",
        LoadOptions::default()
            .with_config(fx("sd2-tiny"))
            .with_prediction_type(PredictionType::Epsilon),
    );
    assert_eq!(
        sd.scheduler_config().prediction_type,
        PredictionType::Epsilon
    );
}

#[test]
fn textual_inversion_bin_and_a1111_pt() {
    let sd = load("sd1-tiny", LoadOptions::default());
    let c = case("learned_embeds.bin");
    let stack: Vec<Personalization> = c["load_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| Personalization::TextualInversion {
            path: fx(&format!("formats/{}", f.as_str().unwrap())),
            token: None,
        })
        .collect();
    let m = Personalization::apply_all(&stack, &sd).unwrap();
    // The A1111 file's token is its stem, as A1111 names it.
    for (tok, id) in c["added_token_ids"].as_object().unwrap() {
        if !tok.ends_with("_1") {
            assert_eq!(
                m.tokenizer.token_to_id(tok),
                Some(id.as_u64().unwrap() as u32),
                "{tok}"
            );
        }
    }
    for (i, p) in c["prompts"].as_array().unwrap().iter().enumerate() {
        let prompt = p["prompt"].as_str().unwrap();
        let got = m.tokenizer.encode(prompt).unwrap();
        let want: Vec<u32> = common::golden("formats_ti.safetensors", &format!("ids{i}"))
            .values
            .iter()
            .map(|&v| v as u32)
            .collect();
        assert_eq!(got, want, "{prompt:?}");
        let err = common::max_abs_diff(
            m.text_encoder.encode(&[got], 0).unwrap(),
            &common::golden("formats_ti.safetensors", &format!("hidden{i}")),
        );
        assert!(err <= 1e-4, "{prompt:?}: {err}");
    }
}

#[test]
fn lora_in_every_layout() {
    for c in cases()
        .iter()
        .filter(|c| c["kind"].as_str().unwrap().starts_with("lora"))
    {
        let name = c["case"].as_str().unwrap();
        let model = c["base"].as_str().unwrap();
        let scale = c["scale"].as_f64().unwrap();
        let sd = load(model, LoadOptions::default());
        let lora = Lora::load(&fx(c["file"].as_str().unwrap()), &common::device())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let keys: Vec<&str> = c["golden_keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        let unet = lora.merge_into_unet(sd.unet(), scale).unwrap();
        let err = common::max_abs_diff(
            eps(&unet, model),
            &common::golden("formats_lora.safetensors", keys[0]),
        );
        assert!(err <= 1e-4, "{name}: UNet {err}");
        if let Some(k) = keys.get(1) {
            let want = common::golden("formats_lora.safetensors", k);
            let te = lora
                .merge_into_text_encoder(sd.text_encoder(), scale)
                .unwrap();
            let err = common::max_abs_diff(te.encode(&ids(model), 0).unwrap(), &want);
            assert!(err <= 1e-4, "{name}: text encoder {err}");
        }
    }
}

#[test]
fn dreambooth_single_file_is_read_with_the_base_architecture() {
    // A DreamBooth trainer's model.ckpt of the base (here: the base itself as a .ckpt).
    let sd = load("sd1-tiny", LoadOptions::default());
    let m = Personalization::DreamBooth {
        dir: fx("formats/sd1-tiny-ldm.ckpt"),
    }
    .apply(&sd)
    .unwrap();
    let err = common::max_abs_diff(
        eps(m.unet(&sd), "sd1-tiny"),
        &common::golden("unet_sd1-tiny.safetensors", "eps_t981"),
    );
    assert!(err <= 1e-4, "{err}");
    // Its VAE must be the base's: sd2-tiny's file has another one.
    let sd2 = load("sd2-tiny", LoadOptions::default());
    let e = Personalization::DreamBooth {
        dir: fx("formats/sd1-tiny-ldm.ckpt"),
    }
    .apply(&sd2)
    .unwrap_err();
    assert!(format!("{e}").contains("sd1-tiny-ldm.ckpt"), "{e}");
}

#[test]
fn stacked_personalizations_apply_in_order() {
    // A token then a LoRA: the same as applying the LoRA to the token's text encoder.
    let sd = load("sd1-tiny", LoadOptions::default());
    let ti = Personalization::TextualInversion {
        path: fx("formats/learned_embeds.bin"),
        token: None,
    };
    let lora = Personalization::Lora {
        path: fx("formats/lora_peft_alpha.safetensors"),
        scale: 0.7,
    };
    let both = Personalization::apply_all(&[ti.clone(), lora.clone()], &sd).unwrap();
    let first = ti.apply(&sd).unwrap();
    let l = Lora::load(
        &fx("formats/lora_peft_alpha.safetensors"),
        &common::device(),
    )
    .unwrap();
    let te = l.merge_into_text_encoder(&first.text_encoder, 0.7).unwrap();
    let ids = vec![both.tokenizer.encode("a <cat-toy> on the beach").unwrap()];
    assert_eq!(
        common::bits(both.text_encoder.encode(&ids, 0).unwrap()),
        common::bits(te.encode(&ids, 0).unwrap())
    );
    let err = common::max_abs_diff(
        eps(both.unet(&sd), "sd1-tiny"),
        &common::golden("formats_lora.safetensors", "peft_alpha.eps_t981"),
    );
    assert!(err <= 1e-4, "{err}");
    // DreamBooth replaces the models, so it cannot come after another personalization.
    let db = Personalization::DreamBooth {
        dir: fx("sd1-tiny-dreambooth"),
    };
    let e = Personalization::apply_all(&[ti, db], &sd).unwrap_err();
    assert!(format!("{e}").contains("must come first"), "{e}");
}

#[test]
fn another_vae_replaces_the_models_own() {
    // A diffusers vae/ folder, and a full single file's first_stage_model.* as the VAE.
    let sd = load(
        "sd1-tiny",
        LoadOptions::default().with_vae(fx("sd2-tiny/vae")),
    );
    let err = common::max_abs_diff(
        sd.vae()
            .decode(common::golden_tensor("vae_sd2-tiny.safetensors", "latents"))
            .unwrap(),
        &common::golden("vae_sd2-tiny.safetensors", "decoded"),
    );
    assert!(err <= 1e-4, "{err}");
    let sd = load(
        "sd2-tiny",
        LoadOptions::default().with_vae(fx("formats/sd1-tiny-ldm.safetensors")),
    );
    let err = common::max_abs_diff(
        sd.vae()
            .decode(common::golden_tensor("vae_sd1-tiny.safetensors", "latents"))
            .unwrap(),
        &common::golden("vae_sd1-tiny.safetensors", "decoded"),
    );
    assert!(err <= 1e-4, "{err}");
    // A standalone LDM VAE file (as vae-ft-mse-840000-ema-pruned.safetensors is laid out):
    // the single file's first_stage_model.* with the prefix removed.
    let tmp = common::tempdir();
    let f = tmp.join("vae-ldm.safetensors");
    let bytes = std::fs::read(fx("formats/sd1-tiny-ldm.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("first_stage_model.")?.to_string(), v)))
        .collect();
    safetensors::serialize_to_file(views, None, &f).unwrap();
    let sd = load("sd2-tiny", LoadOptions::default().with_vae(&f));
    let err = common::max_abs_diff(
        sd.vae()
            .decode(common::golden_tensor("vae_sd1-tiny.safetensors", "latents"))
            .unwrap(),
        &common::golden("vae_sd1-tiny.safetensors", "decoded"),
    );
    assert!(err <= 1e-4, "{err}");
}

#[test]
fn built_in_vocabulary_is_the_fixtures_clip_vocabulary() {
    use layret_core::tokenizer::ClipTokenizer;
    let builtin = ClipTokenizer::builtin("<|endoftext|>").unwrap();
    let folder = ClipTokenizer::from_model_dir(fx("sd1-tiny")).unwrap();
    assert_eq!(builtin.vocab_size(), 49408);
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(fx("golden/tokenizer_sd1-tiny.json")).unwrap(),
    )
    .unwrap();
    for c in golden["cases"].as_array().unwrap() {
        let p = c["prompt"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = builtin.encode_with(p, layret_core::tokenizer::Truncation::Truncate);
        assert_eq!(got.unwrap(), want, "{p:?}");
        assert_eq!(
            builtin.encode_phrase(p).unwrap(),
            folder.encode_phrase(p).unwrap()
        );
    }
    // SD 2.x pads with "!" (id 0).
    let sd2 = ClipTokenizer::builtin("!").unwrap();
    assert_eq!(sd2.pad_id(), 0);
    assert_eq!(sd2.encode("a dog").unwrap()[5], 0);
}

#[test]
fn pickles_are_read_as_data_and_bad_ones_refused() {
    use layret_core::weights::TensorFile;
    // A pickle referencing code (os.system) is refused, naming the global, never executed.
    let e = TensorFile::open(fx("formats/bad/code_global.pt")).unwrap_err();
    assert!(
        matches!(&e, Error::Pickle { file, message } if file.ends_with("code_global.pt") && message.contains("posix.system") && message.contains("payload")),
        "{e}"
    );
    // A truncated zip checkpoint is an error, not a partial read.
    let tmp = common::tempdir();
    let f = tmp.join("truncated.ckpt");
    let bytes = std::fs::read(fx("formats/sd1-tiny-ldm.ckpt")).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let e = TensorFile::open(&f).unwrap_err();
    assert!(
        matches!(&e, Error::Pickle { file, .. } if file == &f),
        "{e}"
    );
    // ... and a truncated legacy/pickle stream likewise.
    let g = tmp.join("truncated.bin");
    let bytes = std::fs::read(fx("formats/learned_embeds.bin")).unwrap();
    std::fs::write(&g, &bytes[..bytes.len() - 200]).unwrap();
    assert!(matches!(TensorFile::open(&g), Err(Error::Pickle { .. })));
}

#[test]
fn sdxl_and_other_files_are_named() {
    use layret_core::weights::TensorFile;
    let tmp = common::tempdir();
    let write = |name: &str, keys: &[&str]| {
        let data = vec![0u8; 16];
        let views: Vec<(String, safetensors::tensor::TensorView)> = keys
            .iter()
            .map(|k| {
                (
                    k.to_string(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &data)
                        .unwrap(),
                )
            })
            .collect();
        let f = tmp.join(name);
        safetensors::serialize_to_file(views, None, &f).unwrap();
        f
    };
    let sdxl = write(
        "sdxl.safetensors",
        &[
            "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
            "model.diffusion_model.label_emb.0.0.weight",
            "model.diffusion_model.input_blocks.0.0.weight",
        ],
    );
    let e = StableDiffusion::load(&sdxl, &common::device(), &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&e, Error::NotASingleFile { path, reason } if path == &sdxl && reason.contains("SDXL")),
        "{e}"
    );
    let other = write("other.safetensors", &["encoder.layer.0.weight"]);
    let e = StableDiffusion::load(&other, &common::device(), &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&e, Error::NotASingleFile { reason, .. } if reason.contains("model.diffusion_model")),
        "{e}"
    );
    let _ = TensorFile::open(&other).unwrap();
}

#[test]
fn lora_files_with_unknown_keys_rank_mismatches_or_lycoris_are_refused() {
    let tmp = common::tempdir();
    let write = |name: &str, items: &[(&str, Vec<usize>)]| {
        let bufs: Vec<Vec<u8>> = items
            .iter()
            .map(|(_, s)| vec![0u8; 4 * s.iter().product::<usize>()])
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = items
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
        let f = tmp.join(name);
        safetensors::serialize_to_file(views, None, &f).unwrap();
        f
    };
    let m = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q";
    let f = write(
        "rank.safetensors",
        &[
            (&format!("{m}.lora_down.weight"), vec![4, 16]),
            (&format!("{m}.lora_up.weight"), vec![16, 2]),
        ],
    );
    let e = Lora::load(&f, &common::device()).unwrap_err();
    assert!(
        format!("{e}").contains("rank mismatch") && format!("{e}").contains(m),
        "{e}"
    );
    let f = write(
        "unknown.safetensors",
        &[
            (&format!("{m}.lora_down.weight"), vec![4, 16]),
            (&format!("{m}.lora_up.weight"), vec![16, 4]),
            (&format!("{m}.lora_middle.weight"), vec![4]),
        ],
    );
    let e = Lora::load(&f, &common::device()).unwrap_err();
    assert!(format!("{e}").contains("lora_middle"), "{e}");
    let f = write(
        "loha.safetensors",
        &[(&format!("{m}.hada_w1_a"), vec![16, 4])],
    );
    let e = Lora::load(&f, &common::device()).unwrap_err();
    assert!(format!("{e}").contains("LoHa"), "{e}");
    let f = write(
        "dora.safetensors",
        &[
            (&format!("{m}.lora_down.weight"), vec![4, 16]),
            (&format!("{m}.lora_up.weight"), vec![16, 4]),
            (&format!("{m}.dora_scale"), vec![16]),
        ],
    );
    let e = Lora::load(&f, &common::device()).unwrap_err();
    assert!(format!("{e}").contains("DoRA"), "{e}");
    // A layer the UNet does not have: the merge names it.
    let f = write(
        "missing.safetensors",
        &[
            (
                "lora_unet_down_blocks_7_resnets_0_conv1.lora_down.weight",
                vec![4, 16],
            ),
            (
                "lora_unet_down_blocks_7_resnets_0_conv1.lora_up.weight",
                vec![16, 4],
            ),
        ],
    );
    let sd = load("sd1-tiny", LoadOptions::default());
    let e = Lora::load(&f, &common::device())
        .unwrap()
        .merge_into_unet(sd.unet(), 1.0)
        .unwrap_err();
    assert!(
        format!("{e}").contains("down_blocks_7_resnets_0_conv1"),
        "{e}"
    );
    let _ = DType::F32;
}
