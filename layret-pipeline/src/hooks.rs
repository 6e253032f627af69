//! A user's attention processors for each pass of Layout-and-Retouch.

use layret_attention::Router;

/// A user's processors and observers for each kind of pass the method runs, each a
/// [`Router`]. The built-in processors (the swap, the map and key/value recorders) are layered
/// over them ([`Router::over`]): a user's route replaces the built-in processor at the sites it
/// matches, a user's observers see every call they match (with its output), and the rest runs
/// as without hooks. With empty hooks the method is exactly as without.
///
/// Hooks on the reference passes ([`invert`](Self::invert), [`reference`](Self::reference))
/// change what a reference is, so a request with any of them computes its reference afresh
/// and does not read or write the reference cache.
///
/// ```
/// use layret_attention::{Router, SiteSelector};
/// use layret_pipeline::PassHooks;
/// # use layret_core::processor::DefaultAttention;
/// let mut mine = DefaultAttention;
/// let mut hooks = PassHooks::default();
/// hooks.target.route(SiteSelector::new().path("mid_block.*"), &mut mine);
/// assert!(!hooks.touches_reference());
/// ```
#[derive(Default)]
pub struct PassHooks<'a> {
    /// Stage 1's passes (the context branch), also when the retouch stage recomputes them.
    pub layout: Router<'a>,
    /// The reference photo's DDIM inversion passes.
    pub invert: Router<'a>,
    /// The reference branch's recording passes (one per sampling step).
    pub reference: Router<'a>,
    /// The target branch's passes.
    pub target: Router<'a>,
}

impl PassHooks<'_> {
    /// No hooks: the method as it is.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether any hook is on a reference pass (the reference is then not cached).
    pub fn touches_reference(&self) -> bool {
        !self.invert.is_empty() || !self.reference.is_empty()
    }
}
