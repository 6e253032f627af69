//! # layret
//!
//! Personalized text-to-image generation with the two-stage **Layout-and-Retouch** method
//! (Kim et al., 2024) on Stable Diffusion 1.x/2.x, in Rust on [burn](https://burn.dev).
//!
//! This facade re-exports the crates of the family:
//! - [`core`] (`layret-core`): tokenizer, CLIP text encoder, weights loading, errors.
//! - [`attention`] (`layret-attention`): the attention-processor hook system.
//! - [`pipeline`] (`layret-pipeline`): the Layout-and-Retouch stages and pipeline.
//!
//! The `layret` binary is the command-line face (`layret --help`).

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]

pub mod allocator;
pub mod batch;
pub mod device;
pub mod eval;
pub mod manifest;
pub mod model_path;

pub use layret_attention as attention;
pub use layret_core as core;
pub use layret_core::{Error, Result};
pub use layret_pipeline as pipeline;

/// The burn version layret is built on, re-exported so applications use the same one.
pub use burn;
