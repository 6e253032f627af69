//! # layret-pipeline
//!
//! The Layout-and-Retouch method (docs/method.md in the repository): stage 1
//! ([`StepBlendedLayout`]) generates a *context* image whose layout is as diverse as the vanilla
//! model's, stage 2 ([`MultiSourceRetouch`]) retouches it so the subject matches a reference
//! photo, swapping decoder self-attention between two sources. [`LayoutAndRetouch`] composes
//! the two over prompts and samples; either stage can be replaced through the
//! [`LayoutStage`] / [`RetouchStage`] traits.
//!
//! User attention processors plug into every pass of both stages through [`PassHooks`]
//! ([`LayoutAndRetouch::generate_with`]), layered under the built-in ones.
//!
//! ```no_run
//! use layret_core::personalization::Personalization;
//! use layret_core::stable_diffusion::{LoadOptions, StableDiffusion};
//! use layret_pipeline::*;
//! # fn main() -> layret_core::Result<()> {
//! let device = burn::tensor::Device::flex();
//! let base = StableDiffusion::load("stable-diffusion-v1-5", &device, &LoadOptions::default())?;
//! let models = ModelPair::new(base, &Personalization::parse("dreambooth:my-sks-dog")?)?;
//! let reference = load_reference_tensor("dog.jpg".as_ref(), 512, 512, &device)?;
//! let subject = Subject::new("sks dog", "dog", reference);
//! let request = GenerateRequest::new(["a sks dog surfing a wave"], 512, 512)
//!     .with_samples(2)
//!     .with_seed(7);
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

mod hooks;
mod layout;
mod models;
mod pipeline;
mod prompts;
mod reference;
mod reference_image;
mod retouch;
mod sampler;
mod settings;
mod stage;

pub use hooks::PassHooks;
pub use layout::StepBlendedLayout;
pub use models::{Conditioning, ModelPair, mask_sites, subject_map, swapped_sites};
pub use pipeline::{
    GenerateRequest, Generated, LayoutAndRetouch, MaskImages, RequestProgress, Subject,
};
pub use prompts::{SubjectPrompts, subject_tokens};
pub use reference::{
    CacheStats, ReferenceCache, ReferenceData, ReferenceKey, ReferenceRequest, compute_reference,
    load_reference_data,
};
pub use reference_image::{load_reference, load_reference_tensor, read_rgb, reference_from_array};
pub use retouch::MultiSourceRetouch;
pub use settings::{Blend, MethodSettings};
pub use stage::{
    ContextStep, LayoutRequest, LayoutResult, LayoutStage, ProgressFn, RetouchResult, RetouchStage,
    StepMasks, StepSink,
};

/// Loaded models and the reference cache can serve requests from several threads at once
/// (checked at compile time).
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<ModelPair>();
    send_sync::<ReferenceCache>();
    send_sync::<ReferenceData>();
    send_sync::<LayoutAndRetouch>();
};
