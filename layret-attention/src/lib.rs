//! # layret-attention
//!
//! The attention-processor hook system of layret: a router from attention sites to processors,
//! the cross-attention map store, key/value record and replay, and the swapping processors of
//! the Layout-and-Retouch method.
//!
//! Not implemented yet: this crate is a placeholder in the workspace until the UNet and its
//! attention socket land in `layret-core`.
