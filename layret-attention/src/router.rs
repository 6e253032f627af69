//! Routing attention sites to processors and observers: the combinator that lets several
//! hooks share a UNet pass, and a site.

use burn::tensor::Tensor;
use layret_core::processor::{
    AttentionProcessor, AttentionSite, StepContext, default_attention_at,
};
use layret_core::{Error, Result};

use crate::observer::{AttentionCall, AttentionObserver};
use crate::selector::SiteSelector;

struct Route<'a> {
    selector: SiteSelector,
    processor: &'a mut dyn AttentionProcessor,
    required: bool,
    matched: usize,
    matched_in_pass: usize,
}

struct Watch<'a> {
    selector: SiteSelector,
    observer: &'a mut dyn AttentionObserver,
    matched: usize,
}

/// What a router offers another router layered over it (see [`Router::over`]).
trait Layer {
    fn begin(&mut self, ctx: &StepContext) -> Result<()>;
    fn compute(
        &mut self,
        site: &AttentionSite,
        ctx: &StepContext,
        qkv: (Tensor<4>, Tensor<4>, Tensor<4>),
    ) -> Result<std::result::Result<Tensor<4>, (Tensor<4>, Tensor<4>, Tensor<4>)>>;
    fn fallback_compute(
        &mut self,
        site: &AttentionSite,
        ctx: &StepContext,
        qkv: (Tensor<4>, Tensor<4>, Tensor<4>),
    ) -> Result<std::result::Result<Tensor<4>, (Tensor<4>, Tensor<4>, Tensor<4>)>>;
    fn watchers(&self, site: &AttentionSite, ctx: &StepContext) -> bool;
    fn notify(
        &mut self,
        site: &AttentionSite,
        ctx: &StepContext,
        call: AttentionCall,
    ) -> Result<()>;
    fn end(&mut self, ctx: &StepContext) -> Result<()>;
}

/// Maps site selectors to processors and observers.
///
/// At each attention call, the first matching **route** computes it (routes are tried in the
/// order they were added; unmatched sites use the [fallback](Self::fallback), else the fused
/// default); then **every** matching **observer** sees the call and its output — so a
/// recorder or a statistics hook can share a site with the processor that computes it.
/// Processors and observers are borrowed (`&mut`), so their state is readable as soon as the
/// router is dropped. Every hook hears each pass's begin and end.
///
/// A [required](Self::require) route that matches no site in a pass ends the pass with
/// [`Error::UnmatchedRoute`]; [`unmatched`](Self::unmatched) lists routes and observers that
/// never matched at all (a selector with a typo, a size the model never has).
///
/// ```
/// use layret_attention::{AttentionStore, KvRecorder, KvStore, KvPolicy, Router, SiteSelector};
/// use layret_core::processor::AttentionKind;
///
/// let (mut store, mut kv) = (AttentionStore::new(true), KvStore::new(KvPolicy::KeepF32));
/// let mut recorder = KvRecorder::new(&mut kv);
/// let mut router = Router::new();
/// router
///     .route(SiteSelector::new().kind(AttentionKind::CrossAttention).size(16, 16), &mut store)
///     .observe(SiteSelector::new().path("up_blocks.*.attn1"), &mut recorder);
/// // unet.forward(x, t, &context, &mut router, &ctx)?;
/// assert_eq!(router.unmatched().len(), 2); // nothing ran yet
/// ```
#[derive(Default)]
pub struct Router<'a> {
    routes: Vec<Route<'a>>,
    watches: Vec<Watch<'a>>,
    fallback: Option<&'a mut dyn AttentionProcessor>,
    under: Option<&'a mut (dyn Layer + 'a)>,
}

impl<'a> Router<'a> {
    /// A router with no routes (behaves exactly as the default processor).
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a route; routes are tried in the order they were added.
    pub fn route(
        &mut self,
        selector: SiteSelector,
        processor: &'a mut dyn AttentionProcessor,
    ) -> &mut Self {
        self.routes.push(Route {
            selector,
            processor,
            required: false,
            matched: 0,
            matched_in_pass: 0,
        });
        self
    }

    /// Add a route that must match at least one site in every pass (else the pass fails with
    /// [`Error::UnmatchedRoute`]).
    pub fn require(
        &mut self,
        selector: SiteSelector,
        processor: &'a mut dyn AttentionProcessor,
    ) -> &mut Self {
        self.route(selector, processor);
        if let Some(r) = self.routes.last_mut() {
            r.required = true;
        }
        self
    }

    /// Add an observer: it sees every call at the sites `selector` matches, after the route
    /// (or default) that computes it.
    pub fn observe(
        &mut self,
        selector: SiteSelector,
        observer: &'a mut dyn AttentionObserver,
    ) -> &mut Self {
        self.watches.push(Watch {
            selector,
            observer,
            matched: 0,
        });
        self
    }

    /// The processor for sites no route matches (instead of the fused default).
    pub fn fallback(&mut self, processor: &'a mut dyn AttentionProcessor) -> &mut Self {
        self.fallback = Some(processor);
        self
    }

    /// Layer this router over `user`'s: at each call `user`'s routes are tried first (so a
    /// user's processor can replace this router's at a site), then this router's, then
    /// `user`'s fallback, this one's, the default; both routers' observers see the call (the
    /// user's first). This is how the pipeline composes its built-in processors with a user's
    /// hooks. (A `user` router's own [`over`](Self::over) layer is not consulted.)
    pub fn over<'u: 'a>(&mut self, user: &'a mut Router<'u>) -> &mut Self {
        self.under = Some(user);
        self
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are no routes, observers or fallback.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.watches.is_empty() && self.fallback.is_none()
    }

    /// The routes and observers that have not matched any site yet, by selector (e.g.
    /// `"route [path up_blokcs.*]"`).
    pub fn unmatched(&self) -> Vec<String> {
        let routes = self
            .routes
            .iter()
            .filter(|r| r.matched == 0)
            .map(|r| format!("route {}", r.selector));
        let watches = self
            .watches
            .iter()
            .filter(|w| w.matched == 0)
            .map(|w| format!("observer {}", w.selector));
        routes.chain(watches).collect()
    }
}

impl Layer for Router<'_> {
    fn begin(&mut self, ctx: &StepContext) -> Result<()> {
        AttentionProcessor::begin_pass(self, ctx)
    }

    fn compute(
        &mut self,
        site: &AttentionSite,
        ctx: &StepContext,
        (q, k, v): (Tensor<4>, Tensor<4>, Tensor<4>),
    ) -> Result<std::result::Result<Tensor<4>, (Tensor<4>, Tensor<4>, Tensor<4>)>> {
        match self
            .routes
            .iter_mut()
            .find(|r| r.selector.matches(site, ctx))
        {
            Some(r) => {
                r.matched += 1;
                r.matched_in_pass += 1;
                Ok(Ok(r.processor.attend(site, ctx, q, k, v)?))
            }
            None => Ok(Err((q, k, v))),
        }
    }

    fn fallback_compute(
        &mut self,
        site: &AttentionSite,
        ctx: &StepContext,
        (q, k, v): (Tensor<4>, Tensor<4>, Tensor<4>),
    ) -> Result<std::result::Result<Tensor<4>, (Tensor<4>, Tensor<4>, Tensor<4>)>> {
        match self.fallback.as_mut() {
            Some(f) => Ok(Ok(f.attend(site, ctx, q, k, v)?)),
            None => Ok(Err((q, k, v))),
        }
    }

    fn watchers(&self, site: &AttentionSite, ctx: &StepContext) -> bool {
        self.watches.iter().any(|w| w.selector.matches(site, ctx))
    }

    fn notify(
        &mut self,
        site: &AttentionSite,
        ctx: &StepContext,
        call: AttentionCall,
    ) -> Result<()> {
        for w in self.watches.iter_mut() {
            if w.selector.matches(site, ctx) {
                w.matched += 1;
                w.observer.observe(site, ctx, call)?;
            }
        }
        Ok(())
    }

    fn end(&mut self, ctx: &StepContext) -> Result<()> {
        AttentionProcessor::end_pass(self, ctx)
    }
}

impl AttentionProcessor for Router<'_> {
    fn begin_pass(&mut self, ctx: &StepContext) -> Result<()> {
        if let Some(u) = self.under.as_mut() {
            u.begin(ctx)?;
        }
        for r in self.routes.iter_mut() {
            r.matched_in_pass = 0;
            r.processor.begin_pass(ctx)?;
        }
        for w in self.watches.iter_mut() {
            w.observer.begin_pass(ctx)?;
        }
        if let Some(f) = self.fallback.as_mut() {
            f.begin_pass(ctx)?;
        }
        Ok(())
    }

    fn attend(
        &mut self,
        site: &AttentionSite,
        ctx: &StepContext,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> Result<Tensor<4>> {
        let watched = Layer::watchers(self, site, ctx)
            || self.under.as_ref().is_some_and(|u| u.watchers(site, ctx));
        let inputs = watched.then(|| (q.clone(), k.clone(), v.clone()));
        type Qkv = (Tensor<4>, Tensor<4>, Tensor<4>);
        // Each layer either computes the call or hands the inputs back to the next one.
        let mut state: std::result::Result<Tensor<4>, Qkv> = Err((q, k, v));
        if let (Err(qkv), Some(u)) = (&state, self.under.as_mut()) {
            let qkv = qkv.clone();
            state = u.compute(site, ctx, qkv)?;
            if state.is_ok()
                && let Some(r) = self
                    .routes
                    .iter_mut()
                    .find(|r| r.selector.matches(site, ctx))
            {
                // The user's route replaced this one here: it counts as matched.
                r.matched += 1;
                r.matched_in_pass += 1;
            }
        }
        if let Err(qkv) = state {
            state = Layer::compute(self, site, ctx, qkv)?;
        }
        if let (Err(qkv), Some(u)) = (&state, self.under.as_mut()) {
            let qkv = qkv.clone();
            state = u.fallback_compute(site, ctx, qkv)?;
        }
        if let Err(qkv) = state {
            state = Layer::fallback_compute(self, site, ctx, qkv)?;
        }
        let out = match state {
            Ok(o) => o,
            Err((q, k, v)) => default_attention_at(site, q, k, v),
        };
        if let Some((q, k, v)) = inputs {
            let call = AttentionCall {
                q: &q,
                k: &k,
                v: &v,
                output: &out,
            };
            if let Some(u) = self.under.as_mut() {
                u.notify(site, ctx, call)?;
            }
            Layer::notify(self, site, ctx, call)?;
        }
        Ok(out)
    }

    fn end_pass(&mut self, ctx: &StepContext) -> Result<()> {
        if let Some(u) = self.under.as_mut() {
            u.end(ctx)?;
        }
        for r in self.routes.iter_mut() {
            r.processor.end_pass(ctx)?;
        }
        for w in self.watches.iter_mut() {
            w.observer.end_pass(ctx)?;
        }
        if let Some(f) = self.fallback.as_mut() {
            f.end_pass(ctx)?;
        }
        if let Some(r) = self
            .routes
            .iter()
            .find(|r| r.required && r.matched_in_pass == 0)
        {
            return Err(Error::UnmatchedRoute {
                route: r.selector.to_string(),
                pass: ctx.pass.to_string(),
            });
        }
        Ok(())
    }
}
