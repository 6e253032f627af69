//! # layret-pipeline
//!
//! The Layout-and-Retouch method: the `LayoutStage` and `RetouchStage` traits, the
//! step-blended layout stage, the multi-source retouch stage and the pipeline composing them.
//!
//! Not implemented yet: this crate is a placeholder in the workspace until the UNet, VAE and
//! hook system land.
