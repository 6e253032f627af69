//! The CLIP text encoder (transformers' `CLIPTextModel`), driven by `text_encoder/config.json`.

mod config;
mod text_encoder;

pub use config::{ClipActivation, ClipTextConfig};
pub use text_encoder::ClipTextEncoder;
