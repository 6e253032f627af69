//! DDIM against diffusers' `DDIMScheduler`: schedules, timesteps and 5-step updates (η = 0 and
//! η = 0.5 with injected noise) for five configurations.

mod common;

use burn::tensor::Tensor;
use layret_core::scheduler::{DdimScheduler, SchedulerConfig};
use serde_json::Value;

const FILE: &str = "ddim.safetensors";

fn cases() -> Vec<(String, SchedulerConfig)> {
    let text = std::fs::read_to_string(common::fixtures().join("golden/ddim_cases.json")).unwrap();
    let v: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    v.into_iter()
        .map(|(k, cfg)| (k, serde_json::from_value(cfg).unwrap()))
        .collect()
}

#[test]
fn schedules_and_timesteps_match_diffusers() {
    let cases = cases();
    assert_eq!(cases.len(), 5);
    for (case, cfg) in cases {
        let ac = cfg.alphas_cumprod();
        let want = common::golden(FILE, &format!("{case}.alphas_cumprod")).values;
        let ac: Vec<f64> = ac.iter().map(|&a| a as f64).collect();
        let err = common::max_abs_diff_values(&ac, &want);
        assert!(err <= 1e-6, "{case}: alphas_cumprod error {err}");
        for n in [50usize, 5] {
            let s = DdimScheduler::new(cfg.clone(), n, 0.0).unwrap();
            let want = common::golden(FILE, &format!("{case}.timesteps{n}")).values;
            let want: Vec<usize> = want.iter().map(|&v| v as usize).collect();
            assert_eq!(s.timesteps(), want.as_slice(), "{case} N={n}");
        }
    }
}

#[test]
fn ddim_steps_match_diffusers() {
    for (case, cfg) in cases() {
        for eta in ["0.0", "0.5"] {
            let s = DdimScheduler::new(cfg.clone(), 5, eta.parse().unwrap()).unwrap();
            let key = |k: &str| format!("{case}.eta{eta}.{k}");
            let mut x: Tensor<4> = common::golden_tensor(FILE, &key("x0"));
            for k in 0..5 {
                let out: Tensor<4> = common::golden_tensor(FILE, &key(&format!("model_output{k}")));
                let noise: Tensor<4> =
                    common::golden_tensor(FILE, &key(&format!("variance_noise{k}")));
                x = s.step(out, k, x, Some(noise)).unwrap();
                let err = common::max_abs_diff(
                    x.clone(),
                    &common::golden(FILE, &key(&format!("x{}", k + 1))),
                );
                assert!(err <= 1e-4, "{case} eta={eta} step {k}: {err}");
            }
        }
    }
}

#[test]
fn bad_settings_are_errors() {
    let cfg = SchedulerConfig::sd();
    assert!(DdimScheduler::new(cfg.clone(), 0, 0.0).is_err());
    assert!(DdimScheduler::new(cfg.clone(), 1001, 0.0).is_err());
    assert!(DdimScheduler::new(cfg.clone(), 10, f64::NAN).is_err());
    let s = DdimScheduler::new(cfg, 10, 0.5).unwrap();
    let x = Tensor::<4>::zeros([1, 4, 2, 2], &common::device());
    assert!(
        s.step(x.clone(), 0, x.clone(), None).is_err(),
        "eta > 0 without noise"
    );
    assert!(
        s.step(x.clone(), 10, x, None).is_err(),
        "step index past the schedule"
    );
    let dir_guard = common::tempdir();
    let dir = dir_guard.path();
    let f = dir.join("scheduler_config.json");
    std::fs::write(&f, r#"{"thresholding": true}"#).unwrap();
    assert!(matches!(
        SchedulerConfig::from_file(&f),
        Err(layret_core::Error::UnsupportedConfig { key, .. }) if key == "thresholding"
    ));
    std::fs::write(&f, r#"{"beta_schedule": "sigmoid"}"#).unwrap();
    assert!(matches!(
        SchedulerConfig::from_file(&f),
        Err(layret_core::Error::Config { .. })
    ));
}

#[test]
fn ddim_on_explicit_timesteps_is_ddim_on_even_grids() {
    use layret_core::scheduler::TimestepSpacing;
    let dev = common::device();
    let out: Tensor<4> = layret_core::noise::seeded_noise(1, [1, 4, 3, 3], &dev);
    let x: Tensor<4> = layret_core::noise::seeded_noise(2, [1, 4, 3, 3], &dev);
    for spacing in [TimestepSpacing::Leading, TimestepSpacing::Trailing] {
        let cfg = SchedulerConfig {
            timestep_spacing: spacing,
            ..SchedulerConfig::sd()
        };
        for n in [5usize, 20, 50] {
            let plain = DdimScheduler::new(cfg.clone(), n, 0.0).unwrap();
            let explicit =
                DdimScheduler::on_timesteps(cfg.clone(), plain.timesteps().to_vec()).unwrap();
            assert_eq!(explicit.timesteps(), plain.timesteps());
            for (k, &t) in plain.timesteps().iter().enumerate() {
                let a = plain.step(out.clone(), k, x.clone(), None).unwrap();
                let b = explicit.step(out.clone(), k, x.clone(), None).unwrap();
                assert_eq!(
                    common::bits(a),
                    common::bits(b),
                    "{spacing:?} N={n} step {k}"
                );
                let a = plain.inversion_step(out.clone(), t, x.clone());
                let b = explicit.inversion_step(out.clone(), t, x.clone());
                assert_eq!(
                    common::bits(a),
                    common::bits(b),
                    "{spacing:?} N={n} invert {t}"
                );
            }
        }
    }
    // Uneven timesteps: the previous one is the next smaller in the list.
    let cfg = SchedulerConfig::sd();
    let s = DdimScheduler::on_timesteps(cfg.clone(), vec![999, 786, 427, 59, 0]).unwrap();
    let ac = cfg.alphas_cumprod();
    let got = s.step(out.clone(), 1, x.clone(), None).unwrap();
    // x0 at ᾱ(786), then to ᾱ(427) (η = 0, ε prediction).
    let (at, ap) = (ac[786], ac[427]);
    let x0 = (x.clone() - out.clone() * (1.0 - at).sqrt()) / at.sqrt();
    let want = x0 * ap.sqrt() + out.clone() * (1.0 - ap).sqrt();
    assert!(common::max_abs_diff_tensors(got, want) <= 1e-6);
    for bad in [vec![], vec![5, 5], vec![3, 7], vec![1000, 1]] {
        assert!(
            DdimScheduler::on_timesteps(cfg.clone(), bad.clone()).is_err(),
            "{bad:?}"
        );
    }
}
