//! Routing attention sites to processors.

use burn::tensor::Tensor;
use layret_core::attention::{AttentionProcessor, AttentionSite, StepContext, default_attention};

use crate::selector::SiteSelector;

/// Maps site selectors to processors; the first matching route handles a call, unmatched sites
/// use burn's fused attention. Processors are borrowed (`&mut`), so their recorded state is
/// readable as soon as the router is dropped.
#[derive(Default)]
pub struct Router<'a> {
    routes: Vec<(SiteSelector, &'a mut dyn AttentionProcessor)>,
}

impl<'a> Router<'a> {
    /// A router with no routes (behaves exactly as the default processor).
    pub fn new() -> Self {
        Self { routes: Vec::new() }
    }

    /// Add a route; routes are tried in the order they were added.
    pub fn route(
        &mut self,
        selector: SiteSelector,
        processor: &'a mut dyn AttentionProcessor,
    ) -> &mut Self {
        self.routes.push((selector, processor));
        self
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

impl AttentionProcessor for Router<'_> {
    fn attend(
        &mut self,
        site: &AttentionSite,
        ctx: &StepContext,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> Tensor<4> {
        for (selector, processor) in self.routes.iter_mut() {
            if selector.matches(site, ctx) {
                return processor.attend(site, ctx, q, k, v);
            }
        }
        default_attention(q, k, v)
    }
}
