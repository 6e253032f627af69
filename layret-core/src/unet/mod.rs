//! diffusers' `UNet2DConditionModel` (SD 1.x/2.x), driven by `unet/config.json`, with every
//! attention call going through the [attention socket](crate::processor).

mod blocks;
mod config;
mod embeddings;
mod resnet;
mod transformer;
mod unet_2d;

pub use config::{BlockKind, LevelPlan, UNetConfig};
pub use embeddings::Timesteps;
pub(crate) use resnet::ResnetBlock2D;
pub(crate) use transformer::ToOut;
pub(crate) use unet_2d::UNetPlan;
pub use unet_2d::{ModuleMut, UNet2DConditionModel};
