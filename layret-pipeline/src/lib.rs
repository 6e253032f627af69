//! # layret-pipeline
//!
//! The Layout-and-Retouch method (`../shared/docs/METHOD.md` in the project): stage 1
//! ([`StepBlendedLayout`]) generates a *context* image whose layout is as diverse as the vanilla
//! model's, stage 2 ([`MultiSourceRetouch`]) retouches it so the subject matches a reference
//! photo, swapping decoder self-attention between two sources. [`LayoutAndRetouch`] composes
//! the two over prompts and samples; either stage can be replaced through the
//! [`LayoutStage`] / [`RetouchStage`] traits.
//!
//! ```no_run
//! use layret_core::personalization::Personalization;
//! use layret_core::stable_diffusion::{LoadOptions, NoiseSource, StableDiffusion};
//! use layret_pipeline::*;
//! # fn main() -> layret_core::Result<()> {
//! let device = burn::tensor::Device::flex();
//! let base = StableDiffusion::load("stable-diffusion-v1-5", &device, &LoadOptions::default())?;
//! let models = ModelPair::new(base, &Personalization::parse("dreambooth:my-sks-dog")?)?;
//! let reference = load_reference_tensor("dog.jpg".as_ref(), 512, 512, &device)?;
//! let subject = Subject::new("sks dog", "dog", reference);
//! let request = GenerateRequest {
//!     prompts: vec!["a sks dog surfing a wave".into()],
//!     num_samples: 2, width: 512, height: 512,
//!     noise: NoiseSource::Seed(7),
//!     settings: MethodSettings::default(),
//!     return_masks: false,
//! };
//! let images = LayoutAndRetouch::default()
//!     .generate(&models, &subject, &request, &mut layret_core::ignore_progress)?;
//! # Ok(()) }
//! ```

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]
// burn slices take one range per axis: `[a..b]` is a 1-axis slice, not a vec of ranges.
#![allow(clippy::single_range_in_vec_init)]

mod layout;
mod models;
mod pipeline;
mod prompts;
mod reference;
mod reference_image;
mod retouch;
mod settings;
mod stage;

pub use layout::StepBlendedLayout;
pub use models::{
    Conditioning, ModelPair, Which, cfg_pass, mask_sites, subject_map, swapped_sites,
};
pub use pipeline::{
    GenerateRequest, Generated, LayoutAndRetouch, MaskImages, PipelineProgress, Subject,
};
pub use prompts::{SubjectPrompts, subject_tokens};
pub use reference::{
    ReferenceCache, ReferenceData, ReferenceKey, compute_reference, load_reference_data,
};
pub use reference_image::{load_reference, load_reference_tensor, read_rgb};
pub use retouch::MultiSourceRetouch;
pub use settings::{Blend, MethodSettings};
pub use stage::{
    ContextStep, LayoutRequest, LayoutResult, LayoutStage, ProgressFn, RetouchResult, RetouchStage,
    StepMasks,
};
