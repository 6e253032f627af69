//! # layret-attention
//!
//! How users (and layret's own retouch stage) change what attention does without touching
//! model code — diffusers' `set_attn_processor`, done the Rust way: typed, no global state,
//! borrow-checked. Everything here plugs into the socket of `layret-core`
//! ([`AttentionProcessor`](layret_core::attention::AttentionProcessor)).
//!
//! - [`SiteSelector`] + [`Router`]: route sites (path glob, kind, execution index, size,
//!   decoder-at-≥-latent/k, step range) to processors; unmatched sites use the fused default.
//! - [`AttentionStore`]: records cross-attention probabilities at the sites routed to it.
//! - [`masks`]: aggregation helpers (token selection, layer averaging, min-max normalization,
//!   fixed and Otsu thresholds exactly as METHOD.md defines them, 3×3 dilation, nearest resize).
//! - [`KvRecorder`] / [`KvStore`]: record a branch's keys/values per site and step under a
//!   [`KvPolicy`], and replay them later.
//! - [`MutualSelfAttention`] (MasaCtrl-style) and [`MultiSourceSwap`] (METHOD.md stage 2).
//!
//! ```
//! use layret_attention::{AttentionStore, Router, SiteSelector};
//! use layret_core::attention::AttentionKind;
//!
//! let mut store = AttentionStore::new(true);
//! {
//!     let mut router = Router::new();
//!     router.route(SiteSelector::new().kind(AttentionKind::CrossAttention).size(16, 16), &mut store);
//!     // unet.forward(x, t, &context, &mut router, &ctx);
//! }
//! // the router's borrow has ended: read store.records()
//! ```

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![warn(missing_docs)]
// burn slices take one range per axis: `[a..b]` is a 1-axis slice, not a vec of ranges.
#![allow(clippy::single_range_in_vec_init)]

mod kv;
pub mod masks;
mod mutual;
mod router;
mod selector;
mod store;
mod swap;

pub use kv::{KvPolicy, KvRecorder, KvStore};
pub use mutual::MutualSelfAttention;
pub use router::Router;
pub use selector::SiteSelector;
pub use store::{AttentionRecord, AttentionStore, Half};
pub use swap::{KvSource, MultiSourceSwap, SwapMasks, SwapMode, swap_attention};
