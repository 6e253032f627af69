//! diffusers' `AutoencoderKL` (the Stable Diffusion VAE), driven by `vae/config.json`.

mod autoencoder;
mod config;

pub use autoencoder::{
    AutoencoderKL, Decoder, DecoderBlock, DiagonalGaussian, Encoder, EncoderBlock, VaeAttention,
    VaeMidBlock,
};
pub use config::VaeConfig;
