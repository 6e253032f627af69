//! # layret-core
//!
//! The Stable Diffusion stack of layret, usable on its own: the CLIP tokenizer and text encoder,
//! checked safetensors loading, and the one [`Error`] type of the crate family. Every model part
//! is checked against PyTorch `transformers`/`diffusers` outputs on the same weights (see
//! `tools/reference/` and `tests/` in the repository).
//!
//! Everything runs on burn 0.22: tensors carry no backend type parameter; the
//! [`Device`](burn::tensor::Device) chosen at run time (flex CPU, wgpu, cuda) decides.
//!
//! ```no_run
//! use layret_core::{clip::ClipTextEncoder, tokenizer::ClipTokenizer};
//! # fn main() -> layret_core::Result<()> {
//! let device = burn::tensor::Device::flex();
//! let dir = std::path::Path::new("stable-diffusion-v1-5");
//! let tokenizer = ClipTokenizer::from_model_dir(dir)?;
//! let (encoder, _cfg) = ClipTextEncoder::from_dir(
//!     &dir.join("text_encoder"), &device, burn::tensor::DType::F32, None)?;
//! let ids = tokenizer.encode("a photo of a dog")?;          // 77 ids
//! let hidden = encoder.encode(&[ids], 0)?;                 // [1, 77, 768]
//! # Ok(()) }
//! ```

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]
// burn slices take one range per axis: `[a..b]` is a 1-axis slice, not a vec of ranges.
#![allow(clippy::single_range_in_vec_init)]

pub mod array;
pub mod atomic;
pub mod clip;
mod config_file;
pub mod error;
pub mod fingerprint;
pub mod host;
pub mod image_io;
pub mod image_processor;
pub mod model_files;
pub mod nn;
pub mod noise;
pub mod patch_embedding;
pub mod personalization;
pub mod processor;
pub mod progress;
pub mod safetensors_writer;
pub mod sampling;
pub mod scheduler;
pub mod single_file;
pub mod stable_diffusion;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod vit;
pub mod weights;

pub use error::{Error, Result};
pub use progress::ignore_progress;

/// Loaded models can be shared between threads (checked at compile time).
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<stable_diffusion::StableDiffusion>();
    send_sync::<personalization::PersonalModel>();
    send_sync::<sampling::Denoiser<'static>>();
};
