//! The pipeline against an independent PyTorch implementation of docs/method.md
//! (tools/reference/method_reference.py) on the tiny personalized fixtures: context latents,
//! final target latents and the masks of every step, for textual inversion (split and concat)
//! and DreamBooth; replay vs recompute; the prompt rules.

use burn::tensor::Tensor;
use layret_attention::{KvPolicy, Router, SwapMode};
use layret_core::Error;
use layret_core::personalization::Personalization;
use layret_core::processor::ModelRole;
use layret_core::stable_diffusion::{LoadOptions, NoiseSource, StableDiffusion};
use layret_pipeline::*;
use layret_test_support::{
    Golden, bits, fixtures, golden_tensor, max_abs_diff, tempdir, try_golden,
};
use serde_json::Value;

fn golden(tag: &str, key: &str) -> Option<Golden> {
    try_golden(&format!("method_{tag}.safetensors"), key)
}

fn tensor4(tag: &str, key: &str) -> Tensor<4> {
    golden_tensor(&format!("method_{tag}.safetensors"), key)
}

fn max_abs<const D: usize>(a: Tensor<D>, want: &Golden) -> f64 {
    max_abs_diff(a, want)
}

fn base() -> StableDiffusion {
    StableDiffusion::load(
        fixtures().join("sd1-tiny"),
        &layret_test_support::device(),
        &LoadOptions::default(),
    )
    .unwrap()
}

fn personalization(tag: &str) -> Personalization {
    if tag.starts_with("ti") {
        Personalization::TextualInversion {
            path: fixtures().join("personalization/ti_cat_toy.safetensors"),
            token: None,
        }
    } else {
        Personalization::DreamBooth {
            dir: fixtures().join("sd1-tiny-dreambooth"),
        }
    }
}

fn case(tag: &str) -> (MethodSettings, String, String, String) {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("golden/method_cases.json")).unwrap(),
    )
    .unwrap();
    let s = &doc["settings"];
    let c = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["tag"] == tag)
        .unwrap();
    let settings = MethodSettings::default()
        .with_steps(s["N"].as_u64().unwrap() as usize)
        .with_guidance(s["guidance"].as_f64().unwrap())
        .with_swap_start(s["S"].as_u64().unwrap() as usize)
        .with_mask_threshold(
            c.get("tau")
                .and_then(Value::as_f64)
                .unwrap_or(s["tau"].as_f64().unwrap()),
        )
        .with_mask_factor(s["mf"].as_u64().unwrap() as usize)
        .with_layout_fraction(s["layout_fraction"].as_f64().unwrap())
        .with_mode(if c.get("mode").and_then(Value::as_str) == Some("concat") {
            SwapMode::Concat
        } else {
            SwapMode::Split
        });
    let str_of = |k: &str| c[k].as_str().unwrap().to_string();
    (
        settings,
        str_of("phrase"),
        str_of("class"),
        str_of("prompt"),
    )
}

/// Runs both stages; returns (context latents, final latents, per-step masks).
fn run(
    models: &ModelPair,
    tag: &str,
    settings: MethodSettings,
) -> (Tensor<4>, Tensor<4>, Vec<(usize, StepMasks)>) {
    let (_, phrase, class, prompt) = case(tag);
    let req = LayoutRequest {
        prompts: SubjectPrompts::new(&prompt, &phrase, &class, &settings.reference_prefix).unwrap(),
        noise: tensor4(tag, "noise"),
        settings,
    };
    let layout = StepBlendedLayout
        .layout(
            models,
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
            models,
            &layout,
            &tensor4(tag, "reference_image"),
            &mut PassHooks::none(),
            &mut layret_core::ignore_progress,
        )
        .unwrap();
    (
        layout.trajectory.last().unwrap().clone(),
        out.latents,
        retouch.mask_log.unwrap(),
    )
}

fn check(tag: &str) {
    let (settings, ..) = case(tag);
    let models = ModelPair::new(base(), &personalization(tag)).unwrap();
    let (context, latents, masks) = run(&models, tag, settings.clone());
    let err = max_abs(context, &golden(tag, "context_latents").unwrap());
    layret_test_support::assert_within(err, 1e-4, format_args!("{tag} context latents"));
    let err = max_abs(latents, &golden(tag, "latents").unwrap());
    layret_test_support::assert_within(err, 1e-4, format_args!("{tag} target latents"));
    assert_eq!(masks.len(), settings.steps - 1, "masks for steps 1..N");
    for (k, m) in &masks {
        for (name, t) in [("t", &m.target), ("c", &m.context), ("r", &m.reference)] {
            let n = t.dims()[0];
            let flat = t.clone().reshape([n, t.dims()[2] * t.dims()[3]]);
            let err = max_abs(flat, &golden(tag, &format!("mask_{name}_step{k}")).unwrap());
            assert_eq!(err, 0.0, "{tag} mask {name} at step {k}");
        }
        let want = golden(tag, &format!("blend_step{k}")).unwrap();
        assert_eq!(
            max_abs(m.blend.clone().unwrap(), &want),
            0.0,
            "{tag} blend mask at step {k}"
        );
    }
}

#[test]
fn textual_inversion_matches_the_reference() {
    check("ti");
}

#[test]
fn concat_mode_matches_the_reference() {
    check("ti_concat");
}

#[test]
fn dreambooth_matches_the_reference() {
    check("dreambooth");
}

#[test]
fn replay_and_recompute_give_identical_outputs() {
    let (settings, ..) = case("dreambooth");
    let models = ModelPair::new(base(), &personalization("dreambooth")).unwrap();
    let (_, replayed, _) = run(&models, "dreambooth", settings.clone());
    let recompute = settings.clone().with_kv_policy(KvPolicy::Recompute);
    let (_, recomputed, _) = run(&models, "dreambooth", recompute);
    // Recompute in lockstep: the layout lends its hooks to the retouch stage's recomputation.
    let (_, phrase, class, prompt) = case("dreambooth");
    let recompute = settings.with_kv_policy(KvPolicy::Recompute);
    let req = LayoutRequest {
        prompts: SubjectPrompts::new(&prompt, &phrase, &class, &recompute.reference_prefix)
            .unwrap(),
        noise: tensor4("dreambooth", "noise"),
        settings: recompute,
    };
    let (_, lockstep) = MultiSourceRetouch::new()
        .retouch_with(
            &models,
            &req,
            &mut StepBlendedLayout,
            &tensor4("dreambooth", "reference_image"),
            &mut PassHooks::none(),
            &mut layret_core::ignore_progress,
        )
        .unwrap();
    let r = bits(replayed);
    assert_eq!(r, bits(recomputed), "recompute differs from replay");
    assert_eq!(
        r,
        bits(lockstep.latents),
        "recompute in lockstep differs from replay"
    );
}

#[test]
fn pipeline_batches_prompts_and_caches_the_reference() {
    let (settings, phrase, class, prompt) = case("ti");
    let models = ModelPair::new(base(), &personalization("ti")).unwrap();
    let subject = Subject {
        phrase,
        class_phrase: class,
        references: vec![tensor4("ti", "reference_image")],
    };
    let req = GenerateRequest::new(
        vec![prompt.clone(), "a <cat-toy> in the snow".into()],
        128,
        128,
    )
    .with_samples(2)
    .with_noise(NoiseSource::Tensor(tensor4("ti", "noise")))
    .with_settings(settings)
    .with_masks(true);
    let mut pipe = LayoutAndRetouch::default();
    let mut stages = std::collections::BTreeSet::new();
    let out = pipe
        .generate(&models, &subject, &req, &mut |p| {
            stages.insert(p.stage.stage);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(out.len(), 4);
    assert_eq!(pipe.retouch.cache.stats().misses, 1);
    assert_eq!(
        pipe.retouch.cache.stats().hits,
        1,
        "the second prompt reuses the reference"
    );
    assert!(stages.contains("layout") && stages.contains("retouch") && stages.contains("invert"));
    // The first prompt's samples are the reference run's.
    let first = Tensor::cat(vec![out[0].latents.clone(), out[1].latents.clone()], 0);
    assert!(max_abs(first, &golden("ti", "latents").unwrap()) <= 1e-4);
    let m = out[0].masks.as_ref().unwrap();
    assert_eq!(m.target.dimensions(), (128, 128));
    assert_eq!(out[0].image.dimensions(), (128, 128));
}

#[test]
fn prompt_rules_are_enforced() {
    let models = ModelPair::new(base(), &personalization("ti")).unwrap();
    let subject = Subject {
        phrase: "<cat-toy>".into(),
        class_phrase: "cat toy".into(),
        references: vec![tensor4("ti", "reference_image")],
    };
    let mut req = GenerateRequest::new(["a dog on the beach"], 128, 128)
        .with_samples(1)
        .with_noise(NoiseSource::Seed(1))
        .with_settings(MethodSettings::default().with_steps(2))
        .with_masks(false);
    let mut pipe = LayoutAndRetouch::default();
    assert!(matches!(
        pipe.generate(&models, &subject, &req, &mut layret_core::ignore_progress),
        Err(Error::PhraseNotInPrompt { .. })
    ));
    req.prompts = vec!["a <cat-toy>".into()];
    req.width = 120;
    assert!(matches!(
        pipe.generate(&models, &subject, &req, &mut layret_core::ignore_progress),
        Err(Error::InvalidArgument { .. })
    ));
    let empty_class = Subject {
        class_phrase: "".into(),
        ..subject.clone()
    };
    req.width = 128;
    assert!(matches!(
        pipe.generate(
            &models,
            &empty_class,
            &req,
            &mut layret_core::ignore_progress
        ),
        Err(Error::InvalidArgument { .. })
    ));
    // Subject token positions (BOS = 0).
    let tok = models.tokenizer(ModelRole::Personalized);
    assert_eq!(
        subject_tokens(tok, "a <cat-toy> on the beach", "<cat-toy>").unwrap(),
        vec![2]
    );
    let vt = models.tokenizer(ModelRole::Vanilla);
    assert_eq!(
        subject_tokens(vt, "a cat toy on the beach", "cat toy").unwrap(),
        vec![2, 3]
    );
    let long = format!("{} <cat-toy>", "a ".repeat(76));
    assert!(subject_tokens(tok, &long, "<cat-toy>").is_err());
}

#[test]
fn reference_cache_on_disk_gives_identical_outputs() {
    let (settings, phrase, class, prompt) = case("ti");
    let models = ModelPair::new(base(), &personalization("ti")).unwrap();
    let subject = Subject {
        phrase,
        class_phrase: class,
        references: vec![tensor4("ti", "reference_image")],
    };
    let req = GenerateRequest::new(vec![prompt], 128, 128)
        .with_samples(2)
        .with_noise(NoiseSource::Tensor(tensor4("ti", "noise")))
        .with_settings(settings)
        .with_masks(false);
    let tmp = tempdir();
    let dir = tmp.path().join("cache");
    let run = || {
        let mut pipe = LayoutAndRetouch::new(
            StepBlendedLayout,
            MultiSourceRetouch::with_cache(std::sync::Arc::new(ReferenceCache::with_disk(&dir))),
        );
        let out = pipe
            .generate(&models, &subject, &req, &mut layret_core::ignore_progress)
            .unwrap();
        let bits: Vec<u32> = out
            .iter()
            .flat_map(|g| {
                g.latents
                    .clone()
                    .into_data()
                    .try_into_vec_as::<f32>()
                    .unwrap()
            })
            .map(f32::to_bits)
            .collect();
        (
            bits,
            pipe.retouch.cache.stats().misses,
            pipe.retouch.cache.stats().disk_hits,
        )
    };
    let (a, misses, _) = run();
    assert_eq!(misses, 1);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "one reference file written"
    );
    let (b, misses, disk) = run();
    assert_eq!(
        (misses, disk),
        (0, 1),
        "the second run reads the reference from disk"
    );
    assert_eq!(a, b, "identical outputs from the disk cache");
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
fn reference_cache_keys_follow_content_and_recompute_bad_entries() {
    let tmp = tempdir();
    let model_dir = tmp.join("model");
    copy_dir(&fixtures().join("sd1-tiny"), &model_dir);
    let cache_dir = tmp.join("cache");
    let (settings, phrase, class, prompt) = case("ti");
    let load = |dtype| {
        let opts = LoadOptions::default().with_dtype(dtype);
        let base =
            StableDiffusion::load(&model_dir, &layret_test_support::device(), &opts).unwrap();
        ModelPair::new(base, &personalization("ti")).unwrap()
    };
    let subject = Subject {
        phrase,
        class_phrase: class,
        references: vec![tensor4("ti", "reference_image")],
    };
    let req = GenerateRequest::new(vec![prompt], 128, 128)
        .with_samples(2)
        .with_noise(NoiseSource::Tensor(tensor4("ti", "noise")))
        .with_settings(settings.clone())
        .with_masks(false);
    // Returns (latent bits, misses, disk hits, warnings).
    let run = |models: &ModelPair| {
        let mut pipe = LayoutAndRetouch::new(
            StepBlendedLayout,
            MultiSourceRetouch::with_cache(std::sync::Arc::new(ReferenceCache::with_disk(
                &cache_dir,
            ))),
        );
        let out = pipe
            .generate(models, &subject, &req, &mut layret_core::ignore_progress)
            .unwrap();
        let b: Vec<u32> = out.iter().flat_map(|g| bits(g.latents.clone())).collect();
        let c = &pipe.retouch.cache;
        let st = c.stats();
        (b, st.misses, st.disk_hits, c.take_warnings())
    };
    let files = || std::fs::read_dir(&cache_dir).unwrap().count();

    let models = load(burn::tensor::DType::F32);
    let (first, misses, _, warnings) = run(&models);
    assert_eq!((misses, files()), (1, 1));
    assert!(warnings.is_empty(), "{warnings:?}");
    let (again, misses, disk, _) = run(&models);
    assert_eq!((misses, disk), (0, 1), "a second run reads it from disk");
    assert_eq!(first, again);

    // Loaded onto the device asked for, under the key it was written for.
    let key = ReferenceKey::new(
        &models,
        &subject.references[0],
        &SubjectPrompts::new(
            &req.prompts[0],
            &subject.phrase,
            "x",
            &settings.reference_prefix,
        )
        .unwrap()
        .reference,
        &settings,
    )
    .unwrap();
    let file = ReferenceCache::with_disk(&cache_dir).file(&key).unwrap();
    assert!(file.exists(), "the file is named by the key");
    let data = load_reference_data(&file, &key, &layret_test_support::device()).unwrap();
    assert_eq!(data.latents.len(), settings.steps);
    assert!(
        data.latents
            .iter()
            .all(|z| z.device() == layret_test_support::device())
    );

    // Another dtype is another key.
    let f16 = load(burn::tensor::DType::F16);
    assert_ne!(f16.fingerprint(), models.fingerprint());
    let other_settings = settings.clone().with_guidance(5.0);
    let other = ReferenceKey::new(
        &models,
        &subject.references[0],
        "a photo of <cat-toy>",
        &other_settings,
    )
    .unwrap();
    assert_ne!(
        other.file_name(),
        key.file_name(),
        "guidance is part of the key"
    );

    // A corrupt entry is recomputed, with a warning naming it, and rewritten.
    std::fs::write(&file, b"not a safetensors file").unwrap();
    let (fixed, misses, disk, warnings) = run(&models);
    assert_eq!((misses, disk), (1, 0));
    assert_eq!(
        fixed, first,
        "the recomputed reference gives the same images"
    );
    assert!(
        warnings.len() == 1 && warnings[0].contains(&file.display().to_string()),
        "{warnings:?}"
    );
    let (_, misses, disk, _) = run(&models);
    assert_eq!((misses, disk), (0, 1), "the rewritten entry is valid");

    // An entry written for another key under this name (e.g. by another version) is stale.
    let stale = ReferenceCache::with_disk(&cache_dir).file(&other).unwrap();
    std::fs::copy(&file, &stale).unwrap();
    assert!(load_reference_data(&stale, &other, &layret_test_support::device()).is_err());

    // Retrained weights at the same path: another key, so the old entry is not reused.
    drop(models);
    let unet = model_dir.join("unet/diffusion_pytorch_model.safetensors");
    let mut bytes = std::fs::read(&unet).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x01; // one mantissa bit of the last weight
    std::fs::write(&unet, bytes).unwrap();
    let retrained = load(burn::tensor::DType::F32);
    let before = files();
    let (_, misses, disk, _) = run(&retrained);
    assert_eq!(
        (misses, disk),
        (1, 0),
        "changed weights at the same path are recomputed"
    );
    assert_eq!(files(), before + 1);
}

/// One of method_cases.json's fully specified cases (those with a `model` field).
struct FullCase {
    tag: String,
    models: ModelPair,
    settings: MethodSettings,
    phrase: String,
    class: String,
    prompt: String,
    references: usize,
    blend_steps: Vec<usize>,
    /// Max abs error allowed on latents (1e-4 unless the case states why it needs more).
    tolerance: f64,
}

fn full_case(c: &Value) -> FullCase {
    let tag = c["tag"].as_str().unwrap().to_string();
    let f = |k: &str| c[k].as_f64().unwrap_or_else(|| panic!("{tag}: {k}"));
    let u = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("{tag}: {k}")) as usize;
    let s = |k: &str| {
        c[k].as_str()
            .unwrap_or_else(|| panic!("{tag}: {k}"))
            .to_string()
    };
    let p = &c["personalization"];
    let file = fixtures().join(p["file"].as_str().unwrap());
    let personalization = match p["kind"].as_str().unwrap() {
        "ti" => Personalization::TextualInversion {
            path: file,
            token: p["token"].as_str().map(str::to_string),
        },
        "dreambooth" => Personalization::DreamBooth { dir: file },
        "custom-diffusion" => Personalization::CustomDiffusion { path: file },
        "lora" => Personalization::Lora {
            path: file,
            scale: p["scale"].as_f64().unwrap(),
        },
        k => panic!("{tag}: kind {k}"),
    };
    let base = StableDiffusion::load(
        fixtures().join(s("model")),
        &layret_test_support::device(),
        &LoadOptions::default(),
    )
    .unwrap();
    let blend = match &c["blend"] {
        Value::String(b) => b.parse::<Blend>().unwrap(),
        v => Blend::Fixed(v.as_f64().unwrap()),
    };
    let settings = MethodSettings::default()
        .with_steps(u("N"))
        .with_guidance(f("guidance"))
        .with_negative_prompt(s("negative_prompt"))
        .with_layout_fraction(f("layout_fraction"))
        .with_swap_start(u("S"))
        .with_mask_threshold(f("tau"))
        .with_mask_factor(u("mf"))
        .with_swap_divisor(u("div"))
        .with_blend(blend)
        .with_blend_start(Some(u("blend_start")))
        .with_mode(match s("mode").as_str() {
            "split" => SwapMode::Split,
            _ => SwapMode::Concat,
        })
        .with_reference_prefix(s("reference_prefix"));
    assert_eq!(settings.lambda1(), u("lambda1"), "{tag}: λ1");
    FullCase {
        models: ModelPair::new(base, &personalization).unwrap(),
        settings,
        phrase: s("phrase"),
        class: s("class"),
        prompt: s("prompt"),
        references: u("references"),
        tolerance: f("tolerance"),
        blend_steps: c["blend_steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect(),
        tag,
    }
}

fn full_cases() -> Vec<Value> {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("golden/method_cases.json")).unwrap(),
    )
    .unwrap();
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c.get("model").is_some())
        .cloned()
        .collect()
}

/// Context and final latents, every step's masks and every blend mask of one reference.
fn check_single_reference(c: &FullCase) {
    let tag = &c.tag;
    let req = LayoutRequest {
        prompts: SubjectPrompts::new(&c.prompt, &c.phrase, &c.class, &c.settings.reference_prefix)
            .unwrap(),
        noise: tensor4(tag, "noise"),
        settings: c.settings.clone(),
    };
    let layout = StepBlendedLayout
        .layout(
            &c.models,
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
            &c.models,
            &layout,
            &tensor4(tag, "reference_image"),
            &mut PassHooks::none(),
            &mut layret_core::ignore_progress,
        )
        .unwrap();
    let err = max_abs(
        layout.trajectory.last().unwrap().clone(),
        &golden(tag, "context_latents").unwrap(),
    );
    let tol = c.tolerance;
    assert!(
        tol == 1e-4 || tag == "blend_split",
        "{tag}: tolerance {tol}"
    );
    layret_test_support::assert_within(err, tol, format_args!("{tag} context latents"));
    let err = max_abs(out.latents, &golden(tag, "latents").unwrap());
    layret_test_support::assert_within(err, tol, format_args!("{tag} target latents"));
    let log = retouch.mask_log.unwrap();
    assert_eq!(
        log.len(),
        c.settings.steps - 1,
        "{tag}: masks for steps 1..N"
    );
    for (k, m) in &log {
        for (name, t) in [("t", &m.target), ("c", &m.context), ("r", &m.reference)] {
            let [n, _, h, w] = t.dims();
            let err = max_abs(
                t.clone().reshape([n, h * w]),
                &golden(tag, &format!("mask_{name}_step{k}")).unwrap(),
            );
            assert_eq!(err, 0.0, "{tag} mask {name} at step {k}");
        }
        match (&m.blend, c.blend_steps.contains(k)) {
            (Some(b), true) => {
                let want = golden(tag, &format!("blend_step{k}")).unwrap();
                assert_eq!(
                    max_abs(b.clone(), &want),
                    0.0,
                    "{tag} blend mask at step {k}"
                );
            }
            (None, false) => {}
            (b, want) => panic!("{tag} step {k}: blended {}, expected {want}", b.is_some()),
        }
    }
}

/// R > 1 references through the pipeline (sample k uses reference k mod R).
fn check_references(c: &FullCase) {
    let tag = &c.tag;
    let noise = tensor4(tag, "noise");
    let [n, _, h, w] = noise.dims();
    let subject = Subject {
        phrase: c.phrase.clone(),
        class_phrase: c.class.clone(),
        references: (0..c.references)
            .map(|r| tensor4(tag, &format!("reference_image{r}")))
            .collect(),
    };
    let req = GenerateRequest::new(vec![c.prompt.clone()], 8 * w, 8 * h)
        .with_samples(n)
        .with_noise(NoiseSource::Tensor(noise))
        .with_settings(c.settings.clone())
        .with_masks(false);
    let out = LayoutAndRetouch::default()
        .generate(&c.models, &subject, &req, &mut layret_core::ignore_progress)
        .unwrap();
    assert_eq!(out.len(), n);
    for (k, g) in out.iter().enumerate() {
        assert_eq!((g.sample, g.reference_index), (k, k % c.references));
    }
    let latents = Tensor::cat(out.iter().map(|g| g.latents.clone()).collect(), 0);
    let err = max_abs(latents, &golden(tag, "latents").unwrap());
    layret_test_support::assert_within(err, c.tolerance, format_args!("{tag} target latents"));
    let context = Tensor::cat(out.iter().map(|g| g.context_latents.clone()).collect(), 0);
    let err = max_abs(context, &golden(tag, "context_latents").unwrap());
    layret_test_support::assert_within(err, c.tolerance, format_args!("{tag} context latents"));
}

#[test]
fn every_knob_matches_the_reference() {
    // Blend masks that split the latent, non-square sizes, SD 2.x v-prediction, Custom
    // Diffusion and LoRA pairs, two references, blend off / fixed / from step 0, a negative
    // prompt, swap divisor 1, a multi-vector token (tools/reference/make_fixtures.py).
    let cases = full_cases();
    assert!(cases.len() >= 13, "{} cases", cases.len());
    for c in &cases {
        let case = full_case(c);
        if case.references == 1 {
            check_single_reference(&case);
        } else {
            check_references(&case);
        }
    }
}

#[test]
fn the_split_case_really_splits_the_latent() {
    // The blend masks of `blend_split` are neither all ones nor all zeros (docs/method.md's
    // adaptive blending is exercised, not a no-op): the fraction of ones per step.
    let c = full_cases()
        .into_iter()
        .find(|c| c["tag"] == "blend_split")
        .unwrap();
    let fractions: Vec<f64> = c["blend_steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let g = golden("blend_split", &format!("blend_step{k}")).unwrap();
            g.values.iter().sum::<f64>() / g.values.len() as f64
        })
        .collect();
    assert!(
        fractions.iter().all(|f| (0.2..0.8).contains(f)),
        "{fractions:?}"
    );
}

#[test]
fn f16_keys_and_values_stay_close_to_f32() {
    // KvPolicy::KeepF16 replays the context's keys/values rounded to f16: not bit-identical
    // to KeepF32, but within a measured tolerance of the f32 reference.
    let (settings, ..) = case("ti");
    let models = ModelPair::new(base(), &personalization("ti")).unwrap();
    let f16 = settings.clone().with_kv_policy(KvPolicy::KeepF16);
    let (_, exact, _) = run(&models, "ti", settings);
    let (context, latents, _) = run(&models, "ti", f16);
    let err = max_abs(context, &golden("ti", "context_latents").unwrap());
    assert!(
        err <= 1e-4,
        "the context does not depend on the K/V policy: {err}"
    );
    assert_ne!(
        bits(latents.clone()),
        bits(exact.clone()),
        "f16 rounding changes the result"
    );
    let err32 = max_abs(exact, &golden("ti", "latents").unwrap());
    let err16 = max_abs(latents, &golden("ti", "latents").unwrap());
    // Measured: 2.4e-4 (KeepF32: 3e-5).
    layret_test_support::assert_within(err16, 5e-3, format_args!("KeepF16 target latents"));
    assert!(
        err16 > err32,
        "f16 ({err16}) is less exact than f32 ({err32})"
    );
}

#[test]
fn lockstep_and_disk_references_give_bit_identical_outputs() {
    // LayoutAndRetouch runs the context and the target in lockstep (no K/V kept across
    // steps) with the reference's K/V memory-mapped from disk; the stage-by-stage path keeps
    // everything in memory. Same bits.
    let (settings, phrase, class, prompt) = case("dreambooth");
    let models = ModelPair::new(base(), &personalization("dreambooth")).unwrap();
    let subject = Subject::new(
        phrase.clone(),
        class.clone(),
        tensor4("dreambooth", "reference_image"),
    );
    let req = GenerateRequest::new(vec![prompt.clone()], 128, 128)
        .with_samples(2)
        .with_noise(NoiseSource::Tensor(tensor4("dreambooth", "noise")))
        .with_settings(settings.clone())
        .with_masks(false);
    let lockstep = LayoutAndRetouch::default()
        .generate(&models, &subject, &req, &mut layret_core::ignore_progress)
        .unwrap();
    let lockstep: Vec<u32> = lockstep
        .iter()
        .flat_map(|g| bits(g.latents.clone()))
        .collect();
    let stages = LayoutRequest {
        prompts: SubjectPrompts::new(&prompt, &phrase, &class, &settings.reference_prefix).unwrap(),
        noise: tensor4("dreambooth", "noise"),
        settings,
    };
    let layout = StepBlendedLayout
        .layout(
            &models,
            &stages,
            &mut Router::new(),
            &mut layret_core::ignore_progress,
        )
        .unwrap();
    assert!(layout.kv.is_some(), "the stage path keeps every step's K/V");
    let mut memory = MultiSourceRetouch {
        cache: ReferenceCache::in_memory().into(),
        mask_log: None,
    };
    let out = memory
        .retouch(
            &models,
            &layout,
            &subject.references[0],
            &mut PassHooks::none(),
            &mut layret_core::ignore_progress,
        )
        .unwrap();
    assert_eq!(lockstep, bits(out.latents));
}

#[test]
fn progress_totals_are_known_up_front_and_a_break_cancels() {
    let (settings, phrase, class, prompt) = case("ti");
    let models = ModelPair::new(base(), &personalization("ti")).unwrap();
    let subject = Subject::new(phrase, class, tensor4("ti", "reference_image"));
    let req = GenerateRequest::new(vec![prompt, "a <cat-toy> in the snow".into()], 128, 128)
        .with_samples(2)
        .with_noise(NoiseSource::Tensor(tensor4("ti", "noise")))
        .with_settings(settings.clone())
        .with_masks(false);
    let n = settings.steps;
    // 2 prompts × (layout N + retouch N + decode) + one reference (inversion N + passes N).
    let want_total = 2 * (2 * n + 1) + 2 * n;
    let mut seen = Vec::new();
    let out = LayoutAndRetouch::default()
        .generate(&models, &subject, &req, &mut |p| {
            seen.push((p.done, p.total));
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(out.len(), 4);
    assert!(seen.iter().all(|&(_, t)| t == want_total), "{seen:?}");
    assert_eq!(
        seen.last().map(|s| s.0),
        Some(want_total),
        "counts to the end"
    );
    // Stop after the first prompt's images: they were handed over, then Cancelled.
    let mut finished = Vec::new();
    let e = LayoutAndRetouch::default()
        .generate_each(
            &models,
            &subject,
            &req,
            &mut |p| {
                if p.prompt == 1 {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            },
            &mut |g| {
                finished.push((g.prompt_index, g.sample));
                Ok(())
            },
        )
        .unwrap_err();
    assert!(matches!(e, Error::Cancelled { .. }), "{e}");
    assert_eq!(finished, vec![(0, 0), (0, 1)]);
}
