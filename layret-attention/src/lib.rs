//! # layret-attention
//!
//! How users (and layret's own retouch stage) change what attention does without touching
//! model code — diffusers' `set_attn_processor`, done the Rust way: typed, no global state,
//! borrow-checked. Everything here plugs into the socket of `layret-core`
//! ([`AttentionProcessor`](layret_core::processor::AttentionProcessor)).
//!
//! - [`SiteSelector`] + [`Router`]: route sites (path glob, kind, execution index, size,
//!   decoder-at-≥-latent/k, step range, pass, model, branch) to processors, and let any number
//!   of [observers](AttentionObserver) see the same calls; unmatched sites use the default.
//!   Routers layer ([`Router::over`]): the pipeline puts its built-in processors over a user's.
//! - [`rows`]: the rows of a branch / half of a multi-branch CFG batch.
//! - [`AttentionStore`]: records attention probabilities at the sites routed to it.
//! - [`masks`]: aggregation helpers (token selection, layer averaging, min-max normalization,
//!   fixed and Otsu thresholds exactly as docs/method.md defines them, 3×3 dilation, nearest
//!   resize, resizing masks to a site).
//! - [`KvRecorder`] / [`KvStore`]: record a branch's keys/values per site and step under a
//!   [`KvPolicy`], and replay them later.
//! - [`MutualSelfAttention`] (MasaCtrl-style) and [`MultiSourceSwap`] (docs/method.md stage 2).
//!
//! Every processor fails loudly: a branch the batch lacks, recorded keys/values that are
//! missing or of the wrong shape for the site, a required route that matched nothing — each a
//! typed [`Error`](layret_core::Error), never a silent fallback to plain attention.
//!
//! ```
//! use layret_attention::{AttentionStore, Router, SiteSelector};
//! use layret_core::processor::AttentionKind;
//!
//! let mut store = AttentionStore::new(true);
//! {
//!     let mut router = Router::new();
//!     router.route(SiteSelector::new().kind(AttentionKind::CrossAttention).size(16, 16), &mut store);
//!     // unet.forward(x, t, &context, &mut router, &ctx)?;
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
mod observer;
mod router;
pub mod rows;
mod selector;
mod store;
mod swap;

pub use kv::{KvPolicy, KvRecorder, KvStore};
pub use mutual::MutualSelfAttention;
pub use observer::{AttentionCall, AttentionObserver};
pub use router::Router;
pub use selector::SiteSelector;
pub use store::{AttentionRecord, AttentionStore};
pub use swap::{
    KvSource, MultiSourceSwap, SwapMasks, SwapMode, SwapRule, SwapSources, swap_attention,
};
