//! diffusers' `AutoencoderKL` (the Stable Diffusion VAE), driven by `vae/config.json`.

mod autoencoder;
mod config;

pub use autoencoder::{AutoencoderKL, DiagonalGaussian};
pub use config::VaeConfig;
