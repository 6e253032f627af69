//! DPM-Solver++ 2M, Euler, Euler ancestral, UniPC and PNDM against diffusers 0.42.1
//! (`tools/reference/make_schedulers.py`): every scheduler case of `golden/schedulers.*`
//! (ε and v, leading/linspace/trailing, 5/7/20 steps, with and without Karras sigmas, the
//! model outputs and ancestral noise injected) step by step, then full text-to-image runs on
//! the tiny SD 1.x (ε) and SD 2.x (v) fixtures.

mod common;

use burn::tensor::Tensor;
use layret_core::processor::{BatchLayout, Branch, DefaultAttention, Pass};
use layret_core::sampling::{BatchText, GuidedPass};
use layret_core::scheduler::{SamplerKind, SamplerOptions, Scheduler, SchedulerConfig};
use layret_core::stable_diffusion::{LoadOptions, NoiseSource, StableDiffusion, Txt2ImgRequest};
use serde_json::Value;

const FILE: &str = "schedulers.safetensors";

fn cases() -> Value {
    let path = common::fixtures().join("golden/schedulers.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The sampler and Karras flag of a golden variant name.
fn kind(variant: &str) -> (SamplerKind, bool) {
    let karras = variant.ends_with("_karras");
    let k = match variant.trim_end_matches("_karras") {
        "dpmpp_2m" => SamplerKind::DpmPp2m,
        "euler" => SamplerKind::Euler,
        "euler_a" => SamplerKind::EulerAncestral,
        "unipc" => SamplerKind::UniPc,
        "pndm" | "pndm_prk" => SamplerKind::Pndm,
        other => panic!("unknown variant {other}"),
    };
    (k, karras)
}

/// The case's config: the fixture's scheduler config with the case's overrides, as diffusers'
/// `from_config(config, **overrides)` sees it.
fn config(base: &Value, case: &Value) -> SchedulerConfig {
    let mut c = base.as_object().unwrap().clone();
    for (k, v) in case["overrides"].as_object().unwrap() {
        c.insert(k.clone(), v.clone());
    }
    serde_json::from_value(Value::Object(c)).unwrap()
}

fn build(case: &Value, cfg: &SchedulerConfig) -> Box<dyn Scheduler + Send> {
    let (k, karras) = kind(case["variant"].as_str().unwrap());
    let steps = case["num_inference_steps"].as_u64().unwrap() as usize;
    k.build(cfg, steps, SamplerOptions { karras, eta: 0.0 })
        .unwrap()
}

fn step_of<const D: usize>(t: &Tensor<D>, k: usize) -> Tensor<4> {
    let _ = D;
    t.clone().narrow(0, k, 1).squeeze_dim::<4>(0)
}

/// Largest difference relative to the size of what is compared (samples at σ ≈ 14 are large).
fn rel_err(got: Tensor<4>, want: Tensor<4>) -> f64 {
    let scale = common::to_f64(want.clone())
        .iter()
        .fold(1.0f64, |m, v| m.max(v.abs()));
    common::max_abs_diff_tensors(got, want) / scale
}

#[test]
fn every_scheduler_case_matches_diffusers_step_by_step() {
    let doc = cases();
    let base = doc["base_config"].clone();
    let list = doc["scheduler_cases"].as_array().unwrap();
    assert_eq!(list.len(), 81);
    let mut checked = 0;
    let mut worst = (0.0f64, String::new());
    for case in list {
        let name = case["name"].as_str().unwrap();
        let key = |t: &str| format!("sched.{name}.{t}");
        let cfg = config(&base, case);
        let mut s = build(case, &cfg);
        // The schedule: timesteps, evaluations, initial sigma.
        let want_t: Vec<f64> = case["timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(s.num_steps(), want_t.len(), "{name}: evaluations");
        for (k, &t) in want_t.iter().enumerate() {
            assert!(
                (s.timestep(k) - t).abs() <= 1e-4 * t.abs().max(1.0),
                "{name}: timestep {k}: {} vs {t}",
                s.timestep(k)
            );
        }
        let init = case["init_noise_sigma"].as_f64().unwrap();
        assert!(
            (s.init_noise_sigma() - init).abs() <= 1e-6 * init,
            "{name}: init_noise_sigma {} vs {init}",
            s.init_noise_sigma()
        );
        // The trajectory, from the golden initial sample, with the golden model outputs.
        let outputs: Tensor<5> = common::golden_tensor(FILE, &key("model_output"));
        let samples: Tensor<5> = common::golden_tensor(FILE, &key("sample"));
        let scaled: Option<Tensor<5>> = common::try_golden(FILE, &key("scaled"))
            .map(|_| common::golden_tensor(FILE, &key("scaled")));
        let step_noise: Option<Tensor<5>> = common::try_golden(FILE, &key("step_noise"))
            .map(|_| common::golden_tensor(FILE, &key("step_noise")));
        let noise: Tensor<4> = common::golden_tensor(FILE, &key("noise"));
        let mut x = noise * s.init_noise_sigma();
        assert!(
            rel_err(x.clone(), step_of(&samples, 0)) <= 1e-6,
            "{name}: initial sample"
        );
        s.reset();
        for k in 0..s.num_steps() {
            if let Some(sc) = &scaled {
                let err = rel_err(s.scale_model_input(x.clone(), k), step_of(sc, k));
                assert!(err <= 1e-5, "{name}: scale_model_input {k}: {err}");
            }
            let n = step_noise.as_ref().map(|t| step_of(t, k));
            assert_eq!(s.needs_noise(), n.is_some(), "{name}: needs_noise");
            x = s.step(step_of(&outputs, k), k, x, n).unwrap();
            let err = rel_err(x.clone(), step_of(&samples, k + 1));
            assert!(err <= 1e-5, "{name}: step {k}: relative error {err}");
        }
        let final_err = common::max_abs_diff_tensors(x, step_of(&samples, s.num_steps()));
        assert!(final_err <= 1e-4, "{name}: final sample {final_err}");
        if final_err > worst.0 {
            worst = (final_err, name.to_string());
        }
        checked += 1;
    }
    assert_eq!(checked, 81);
    eprintln!("largest final error: {:.2e} ({})", worst.0, worst.1);
}

#[test]
fn multistep_samplers_refuse_steps_out_of_order() {
    let cfg = SchedulerConfig::sd();
    for kind in [SamplerKind::DpmPp2m, SamplerKind::UniPc, SamplerKind::Pndm] {
        let mut s = kind.build(&cfg, 5, SamplerOptions::default()).unwrap();
        let x: Tensor<4> = layret_core::noise::seeded_noise(1, [1, 4, 2, 2], &common::device());
        let y = s.step(x.clone(), 0, x.clone(), None).unwrap();
        let err = s.step(x.clone(), 2, y, None).unwrap_err().to_string();
        assert!(err.contains("expects step 1"), "{kind}: {err}");
        // After a reset it starts over.
        s.reset();
        assert!(s.step(x.clone(), 0, x, None).is_ok());
    }
    // Karras where the sampler has none, eta where only DDIM has it: refused.
    let karras = SamplerOptions {
        karras: true,
        eta: 0.0,
    };
    assert!(SamplerKind::EulerAncestral.build(&cfg, 5, karras).is_err());
    let eta = SamplerOptions {
        karras: false,
        eta: 0.5,
    };
    assert!(SamplerKind::Euler.build(&cfg, 5, eta).is_err());
}

fn load(name: &str) -> StableDiffusion {
    StableDiffusion::load(
        common::fixtures().join(name),
        &common::device(),
        &LoadOptions::default(),
    )
    .unwrap()
}

#[test]
fn txt2img_with_each_sampler_matches_diffusers() {
    let doc = cases();
    let settings = &doc["pipeline_settings"];
    let prompt = settings["prompt"].as_str().unwrap();
    let negative = settings["negative_prompt"].as_str().unwrap();
    let guidance = settings["guidance_scale"].as_f64().unwrap();
    let list = doc["pipeline_cases"].as_array().unwrap();
    assert_eq!(list.len(), 30);
    for fixture in ["sd1-tiny", "sd2-tiny"] {
        let sd = load(fixture);
        let noise: Tensor<4> = common::golden_tensor(FILE, &format!("pipe.{fixture}.noise"));
        let rows = noise.dims()[0];
        let text = BatchText::repeated(
            sd.encode_prompts(&[prompt]).unwrap(),
            sd.encode_prompts(&[negative]).unwrap(),
            rows,
        );
        let mut base =
            serde_json::to_value(SchedulerConfigJson::of(sd.scheduler_config())).unwrap();
        base["_class_name"] = Value::Null;
        for case in list.iter().filter(|c| c["fixture"] == fixture) {
            let name = case["name"].as_str().unwrap();
            let key = |t: &str| format!("pipe.{name}.{t}");
            let cfg = config(&base, case);
            let mut s = build(case, &cfg);
            let want: Tensor<4> = common::golden_tensor(FILE, &key("latents"));
            let step_noise: Option<Tensor<5>> = common::try_golden(FILE, &key("step_noise"))
                .map(|_| common::golden_tensor(FILE, &key("step_noise")));
            // The loop, through the public pieces (the ancestral noise injected).
            let mut x = noise.clone() * s.init_noise_sigma();
            s.reset();
            for k in 0..s.num_steps() {
                let pass = GuidedPass {
                    step: k,
                    timestep: s.timestep(k),
                    kind: Pass::Sample,
                    layout: BatchLayout::single(Branch::Main, rows, true),
                    guidance,
                };
                let input = s.scale_model_input(x.clone(), k);
                let eps = sd
                    .denoiser()
                    .guided_eps(&pass, input, &text, &mut DefaultAttention)
                    .unwrap();
                x = s
                    .step(eps, k, x, step_noise.as_ref().map(|t| step_of(t, k)))
                    .unwrap();
            }
            let err = common::max_abs_diff_tensors(x, want.clone());
            assert!(err <= 1e-4, "{name}: final latents {err}");
            eprintln!("{name}: {err:.2e}");
            // And through txt2img itself, where the fixture's config gives the same sampler.
            let (kind, karras) = kind(case["variant"].as_str().unwrap());
            if step_noise.is_none() && kind != SamplerKind::Pndm {
                let req = Txt2ImgRequest {
                    prompt: prompt.into(),
                    negative_prompt: negative.into(),
                    guidance,
                    steps: case["num_inference_steps"].as_u64().unwrap() as usize,
                    width: 128,
                    height: 128,
                    num_images: rows,
                    noise: NoiseSource::Tensor(noise.clone()),
                    sampler: kind,
                    karras,
                    ..Txt2ImgRequest::new("")
                };
                let got = sd
                    .txt2img_latents(
                        &req,
                        &mut DefaultAttention,
                        &mut layret_core::ignore_progress,
                    )
                    .unwrap();
                let err = common::max_abs_diff_tensors(got, want);
                assert!(err <= 1e-4, "{name}: txt2img latents {err}");
            }
        }
    }
}

/// The fields of a [`SchedulerConfig`] under their diffusers names (to rebuild the fixture's
/// config as JSON for the overrides).
#[derive(serde::Serialize)]
struct SchedulerConfigJson {
    num_train_timesteps: usize,
    beta_start: f64,
    beta_end: f64,
    beta_schedule: &'static str,
    steps_offset: usize,
    set_alpha_to_one: bool,
    prediction_type: &'static str,
    timestep_spacing: &'static str,
}

impl SchedulerConfigJson {
    fn of(c: &SchedulerConfig) -> Self {
        use layret_core::scheduler::{BetaSchedule, PredictionType, TimestepSpacing};
        Self {
            num_train_timesteps: c.num_train_timesteps,
            beta_start: c.beta_start,
            beta_end: c.beta_end,
            beta_schedule: match c.beta_schedule {
                BetaSchedule::Linear => "linear",
                BetaSchedule::ScaledLinear => "scaled_linear",
                BetaSchedule::SquaredcosCapV2 => "squaredcos_cap_v2",
            },
            steps_offset: c.steps_offset,
            set_alpha_to_one: c.set_alpha_to_one,
            prediction_type: match c.prediction_type {
                PredictionType::Epsilon => "epsilon",
                PredictionType::VPrediction => "v_prediction",
                PredictionType::Sample => "sample",
            },
            timestep_spacing: match c.timestep_spacing {
                TimestepSpacing::Leading => "leading",
                TimestepSpacing::Trailing => "trailing",
                TimestepSpacing::Linspace => "linspace",
            },
        }
    }
}
