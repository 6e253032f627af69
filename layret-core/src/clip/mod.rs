//! CLIP: the text encoder of Stable Diffusion (transformers' `CLIPTextModel`, driven by
//! `text_encoder/config.json`) and, for evaluation, the full `CLIPModel` (text and vision
//! towers with their projections).

mod config;
mod model;
mod text_encoder;
mod vision;

pub use config::{ClipActivation, ClipTextConfig};
pub use model::ClipModel;
pub use text_encoder::ClipTextEncoder;
pub use vision::{ClipVisionConfig, ClipVisionTransformer};
