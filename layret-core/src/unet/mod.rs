//! diffusers' `UNet2DConditionModel` (SD 1.x/2.x), driven by `unet/config.json`, with every
//! attention call going through the [attention socket](crate::attention).

mod blocks;
mod config;
mod embeddings;
mod resnet;
mod transformer;
mod unet_2d;

pub use blocks::{DownBlock, Downsample2D, MidBlock, UpBlock, Upsample2D};
pub use config::{BlockKind, LevelPlan, UNetConfig};
pub use embeddings::{TimestepEmbedding, timestep_embedding};
pub use resnet::ResnetBlock2D;
pub use transformer::{
    Attention, BasicTransformerBlock, FeedForward, GeGlu, Projection, ToOut, Transformer2D,
};
pub(crate) use unet_2d::UNetPlan;
pub use unet_2d::{ModuleMut, UNet2DConditionModel};
