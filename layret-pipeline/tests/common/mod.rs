#![allow(dead_code)]
//! What the pipeline tests share: the tiny SD 1.x model with the committed textual inversion,
//! and its subject with the method golden's reference photo.

use layret_core::personalization::Personalization;
use layret_core::stable_diffusion::{LoadOptions, StableDiffusion};
use layret_pipeline::{ModelPair, Subject};
use layret_test_support::{fixtures, golden_tensor};

pub fn models() -> ModelPair {
    let base = StableDiffusion::load(
        fixtures().join("sd1-tiny"),
        &layret_test_support::device(),
        &LoadOptions::default(),
    )
    .unwrap();
    let ti = Personalization::TextualInversion {
        path: fixtures().join("personalization/ti_cat_toy.safetensors"),
        token: None,
    };
    ModelPair::new(base, &ti).unwrap()
}

pub fn subject() -> Subject {
    Subject::new(
        "<cat-toy>",
        "cat toy",
        golden_tensor("method_ti.safetensors", "reference_image"),
    )
}
