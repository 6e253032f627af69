//! Building blocks whose parameter names are the PyTorch checkpoint's (`weight`, `bias`), loaded
//! from a [`WeightsView`](crate::weights::WeightsView) with the shapes the config implies.

mod conv2d;
mod cpu_attention;
mod cpu_conv;
mod cpu_gemm_bf16;
mod cpu_linear;
mod cpu_pointwise;
mod embedding;
mod flex;
mod group_norm;
mod layer_norm;
mod linear;
mod resize;
mod simd;

pub use conv2d::Conv2d;
pub use cpu_attention::{AttentionMask, scaled_dot_product_attention};
pub(crate) use cpu_pointwise::geglu;
pub use embedding::Embedding;
pub use group_norm::GroupNorm;
pub use layer_norm::LayerNorm;
pub use linear::Linear;
pub use resize::{nearest_index_tensor, nearest_indices, resize_nearest};
