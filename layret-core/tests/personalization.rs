//! Personalization loaders against diffusers: textual inversion (diffusers and A1111 files,
//! multi-vector), Custom Diffusion, LoRA (PEFT and kohya), DreamBooth folders; and their
//! error cases.

mod common;

use burn::tensor::Tensor;
use layret_core::Error;
use layret_core::personalization::{
    Lora, PersonalModel, Personalization, TextualInversion, apply_custom_diffusion,
};
use layret_core::processor::{DefaultAttention, StepContext};
use layret_core::stable_diffusion::{LoadOptions, StableDiffusion};
use serde_json::Value;

fn base() -> StableDiffusion {
    StableDiffusion::load(
        common::fixtures().join("sd1-tiny"),
        &common::device(),
        &LoadOptions::default(),
    )
    .unwrap()
}

fn pers(name: &str) -> std::path::PathBuf {
    common::fixtures().join("personalization").join(name)
}

#[test]
fn textual_inversion_matches_diffusers() {
    let sd = base();
    let dev = common::device();
    let mut tok = sd.tokenizer().clone();
    let a = TextualInversion::load(&pers("ti_cat_toy.safetensors"), None, &dev).unwrap();
    assert_eq!((a.token.as_str(), a.num_vectors()), ("<cat-toy>", 1));
    let te = a.apply(&mut tok, sd.text_encoder()).unwrap();
    let b =
        TextualInversion::load(&pers("ti_a1111_2vec.safetensors"), Some("<sks2>"), &dev).unwrap();
    assert_eq!(b.num_vectors(), 2);
    let te = b.apply(&mut tok, &te).unwrap();
    assert_eq!(tok.vocab_size(), 49411);
    let cases: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("golden/ti_sd1-tiny.json")).unwrap(),
    )
    .unwrap();
    for (i, c) in cases.iter().enumerate() {
        let prompt = c["prompt"].as_str().unwrap();
        let ids = tok.encode(prompt).unwrap();
        let want = common::golden("ti_sd1-tiny.safetensors", &format!("ids{i}")).values;
        let want: Vec<u32> = want.iter().map(|&v| v as u32).collect();
        assert_eq!(ids, want, "{prompt:?} (diffusers: {:?})", c["converted"]);
        let hidden = te.encode(&[ids], 0).unwrap();
        let err = common::max_abs_diff(
            hidden,
            &common::golden("ti_sd1-tiny.safetensors", &format!("hidden{i}")),
        );
        assert!(err <= 1e-4, "{prompt:?}: {err}");
    }
    // The base encoder is untouched (shares all other weights, but not the new rows).
    assert_eq!(sd.text_encoder().vocab_size(), 49408);
}

#[test]
fn textual_inversion_errors() {
    let sd = base();
    let dev = common::device();
    // An A1111 file names no token: its file stem is the token, as A1111 names embeddings.
    let a1111 = TextualInversion::load(&pers("ti_a1111_2vec.safetensors"), None, &dev).unwrap();
    assert_eq!(a1111.token, "ti_a1111_2vec");
    // Token already in the vocabulary.
    let mut tok = sd.tokenizer().clone();
    let ti =
        TextualInversion::load(&pers("ti_cat_toy.safetensors"), Some("dog</w>"), &dev).unwrap();
    assert!(
        matches!(ti.apply(&mut tok, sd.text_encoder()), Err(Error::Tokenizer { message, .. }) if message.contains("already"))
    );
    // Dimension mismatch names both numbers.
    let dir_guard = common::tempdir();
    let dir = dir_guard.path();
    let f = dir.join("wrong.safetensors");
    layret_core::noise::save_tensors(&f, &[("<x>", Tensor::<4>::zeros([1, 1, 1, 24], &dev))])
        .unwrap();
    // A [1,1,1,24] tensor is not an embedding shape.
    assert!(matches!(
        TextualInversion::load(&f, None, &dev),
        Err(Error::TensorShape { .. })
    ));
    let bytes: Vec<u8> = vec![0u8; 24 * 4];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![24], &bytes).unwrap();
    safetensors::serialize_to_file(vec![("<x>", view)], None, &f).unwrap();
    let ti = TextualInversion::load(&f, None, &dev).unwrap();
    let mut tok = sd.tokenizer().clone();
    match ti.apply(&mut tok, sd.text_encoder()) {
        Err(Error::InvalidArgument { message, .. }) => {
            assert!(
                message.contains("dimension 24") && message.contains("text encoder 16"),
                "{message}"
            )
        }
        other => panic!("expected a dimension error, got {other:?}"),
    }
    // A file with no embedding.
    let empty: Vec<(&str, safetensors::tensor::TensorView)> = vec![];
    safetensors::serialize_to_file(empty, None, &f).unwrap();
    assert!(matches!(
        TextualInversion::load(&f, None, &dev),
        Err(Error::InvalidArgument { message, .. }) if message.contains("no embedding")
    ));
}

fn unet_golden_eps(model: &layret_core::unet::UNet2DConditionModel) -> Tensor<4> {
    let sample: Tensor<4> = common::golden_tensor("unet_sd1-tiny.safetensors", "sample");
    let ctx: Tensor<3> =
        common::golden_tensor("unet_sd1-tiny.safetensors", "encoder_hidden_states");
    model
        .forward(
            sample,
            981.0,
            &ctx,
            &mut DefaultAttention,
            &StepContext::plain(0, 981.0, 2),
        )
        .unwrap()
}

#[test]
fn custom_diffusion_matches_diffusers() {
    let sd = base();
    let path = pers("custom_diffusion/pytorch_custom_diffusion_weights.safetensors");
    let unet = apply_custom_diffusion(sd.unet(), &path).unwrap();
    let err = common::max_abs_diff(
        unet_golden_eps(&unet),
        &common::golden("cd_sd1-tiny.safetensors", "eps_t981"),
    );
    assert!(err <= 1e-4, "custom diffusion eps: {err}");
    // The base UNet is unchanged.
    let err = common::max_abs_diff(
        unet_golden_eps(sd.unet()),
        &common::golden("unet_sd1-tiny.safetensors", "eps_t981"),
    );
    assert!(err <= 1e-4);
    // Through the Personalization description: the modifier token beside the file is added.
    let p = Personalization::parse(&format!("custom-diffusion:{}", path.display())).unwrap();
    let m: PersonalModel = p.apply(&sd).unwrap();
    assert_eq!(m.tokenizer.token_to_id("<new1>"), Some(49408));
    assert!(m.unet.is_some());
    // The modifier token's embedding is the file's vector, and the vocabulary before it is
    // the base's.
    let want = common::golden_file(&pers("custom_diffusion/new1.safetensors"), "<new1>");
    let err = common::max_abs_diff(m.text_encoder.token_embedding(49408).unwrap(), &want);
    assert_eq!(err, 0.0, "the <new1> row is the file's vector");
    let last_base = common::to_f64(sd.text_encoder().token_embedding(49407).unwrap());
    let last = common::to_f64(m.text_encoder.token_embedding(49407).unwrap());
    assert_eq!(last, last_base);
}

#[test]
fn lora_matches_diffusers_in_both_formats() {
    let sd = base();
    let ids = {
        let common::Golden {
            values: v,
            shape: s,
        } = common::golden("clip_sd1-tiny.safetensors", "input_ids");
        v.chunks(s[1])
            .map(|r| r.iter().map(|&x| x as u32).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    for (tag, file) in [
        ("peft", "lora_peft/pytorch_lora_weights.safetensors"),
        ("kohya", "lora_kohya.safetensors"),
    ] {
        let lora = Lora::load(&pers(file), &common::device()).unwrap();
        let unet = lora.merge_into_unet(sd.unet(), 0.7).unwrap();
        let err = common::max_abs_diff(
            unet_golden_eps(&unet),
            &common::golden("lora_sd1-tiny.safetensors", &format!("{tag}.eps_t981")),
        );
        assert!(err <= 1e-4, "{tag} unet: {err}");
        let te = lora
            .merge_into_text_encoder(sd.text_encoder(), 0.7)
            .unwrap();
        let err = common::max_abs_diff(
            te.encode(&ids, 0).unwrap(),
            &common::golden("lora_sd1-tiny.safetensors", &format!("{tag}.hidden")),
        );
        assert!(err <= 1e-4, "{tag} text encoder: {err}");
    }
}

/// Copy `src` into `dst`, recursively.
fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
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

#[test]
fn dreambooth_folder_shares_the_vae_and_loads_its_own_unet() {
    let sd = base();
    let p = Personalization::parse(&format!(
        "dreambooth:{}",
        common::fixtures().join("sd1-tiny-dreambooth").display()
    ))
    .unwrap();
    let m = p.apply(&sd).unwrap();
    let unet = m.unet.as_ref().expect("a fine-tuned UNet");
    let a = common::to_f64(unet_golden_eps(unet));
    let b = common::to_f64(unet_golden_eps(sd.unet()));
    assert!(
        a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-3),
        "the DreamBooth UNet differs"
    );
    // The VAE is the base's one object: the folder's own VAE is compared with the base's
    // file, never loaded — a copy whose VAE config is unreadable still loads.
    let tmp = common::tempdir();
    copy_dir(&common::fixtures().join("sd1-tiny-dreambooth"), &tmp);
    std::fs::write(tmp.join("vae/config.json"), "{ not json").unwrap();
    let m2 = Personalization::DreamBooth {
        dir: tmp.to_path_buf(),
    }
    .apply(&sd)
    .unwrap();
    let b2 = common::to_f64(unet_golden_eps(m2.unet.as_ref().unwrap()));
    assert_eq!(a, b2, "the same fine-tuned UNet");
    // A DreamBooth folder that is the base itself shares everything.
    let same = Personalization::DreamBooth {
        dir: common::fixtures().join("sd1-tiny"),
    }
    .apply(&sd)
    .unwrap();
    assert!(same.unet.is_none());
    // A folder with another VAE is refused.
    assert!(matches!(
        Personalization::DreamBooth { dir: common::fixtures().join("sd2-tiny") }.apply(&sd),
        Err(Error::NotADiffusersFolder { reason, .. }) if reason.contains("VAE")
    ));
}

#[test]
fn personalization_specs_parse() {
    assert_eq!(
        Personalization::parse("ti:emb.safetensors#<tok>").unwrap(),
        Personalization::TextualInversion {
            path: "emb.safetensors".into(),
            token: Some("<tok>".into())
        }
    );
    assert_eq!(
        Personalization::parse("lora:x.safetensors@0.5").unwrap(),
        Personalization::Lora {
            path: "x.safetensors".into(),
            scale: 0.5
        }
    );
    assert!(Personalization::parse("foo:bar").is_err());
    assert!(Personalization::parse("ti:").is_err());
    assert!(Personalization::parse("no-colon").is_err());
}
