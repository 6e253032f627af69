//! User attention processors in every pass of Layout-and-Retouch (PassHooks), and one loaded
//! model serving two threads with a shared reference cache.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use burn::tensor::Tensor;
use common::{models, subject};
use layret_attention::{AttentionCall, AttentionObserver, Router, SiteSelector};
use layret_core::Result;
use layret_core::processor::{
    AttentionProcessor, AttentionSite, Branch, DefaultAttention, ModelRole, Pass, StepContext,
};
use layret_pipeline::*;
use layret_test_support::bits;

const N: usize = 5;

fn request() -> GenerateRequest {
    GenerateRequest::new(["a <cat-toy> on the beach"], 128, 128)
        .with_seed(3)
        .with_settings(MethodSettings::default().with_steps(N).with_mask_factor(2))
}

/// Counts the passes it hears (by pass kind, model and first branch) and the calls it sees.
#[derive(Default)]
struct Counter {
    passes: BTreeMap<(String, String, String), usize>,
    calls: usize,
    outputs_ok: bool,
}

impl AttentionObserver for Counter {
    fn begin_pass(&mut self, ctx: &StepContext) -> Result<()> {
        let key = (
            ctx.pass.to_string(),
            format!("{:?}", ctx.model),
            ctx.layout.branches()[0].to_string(),
        );
        *self.passes.entry(key).or_default() += 1;
        Ok(())
    }

    fn observe(
        &mut self,
        site: &AttentionSite,
        _ctx: &StepContext,
        call: AttentionCall,
    ) -> Result<()> {
        self.calls += 1;
        let [b, h, l, d] = call.q.dims();
        self.outputs_ok =
            call.output.dims() == [b, h, l, d] && h == site.heads && d == site.head_dim;
        Ok(())
    }
}

fn latent_bits(out: &[Generated]) -> Vec<u32> {
    out.iter().flat_map(|g| bits(g.latents.clone())).collect()
}

fn run_with(models: &ModelPair, hooks: &mut PassHooks) -> (Vec<Generated>, CacheStats) {
    let mut pipe = LayoutAndRetouch::default();
    let mut out = Vec::new();
    pipe.generate_with(
        models,
        &subject(),
        &request(),
        hooks,
        &mut layret_core::ignore_progress,
        &mut |g| {
            out.push(g);
            Ok(())
        },
    )
    .unwrap();
    let stats = pipe.retouch.cache.stats();
    (out, stats)
}

#[test]
fn observers_hear_every_pass_and_change_nothing() {
    let models = models();
    let (plain, stats) = run_with(&models, &mut PassHooks::none());
    assert_eq!(stats.misses, 1);
    let (mut lc, mut ic, mut rc, mut tc): (Counter, Counter, Counter, Counter) = Default::default();
    let mut swap_sites = Counter::default();
    let (out, stats) = {
        let mut hooks = PassHooks::default();
        hooks.layout.observe(SiteSelector::new(), &mut lc);
        hooks.invert.observe(SiteSelector::new(), &mut ic);
        hooks.reference.observe(SiteSelector::new(), &mut rc);
        hooks.target.observe(SiteSelector::new(), &mut tc);
        // An observer sharing the swapped sites with the swap itself.
        hooks.target.observe(swapped_sites(2), &mut swap_sites);
        run_with(&models, &mut hooks)
    };
    assert_eq!(
        latent_bits(&out),
        latent_bits(&plain),
        "observers change no number"
    );
    assert_eq!(
        (stats.hits, stats.misses),
        (0, 0),
        "hooks on the reference passes bypass the cache"
    );
    let k = |p: &str, m: &str, b: &str| (p.to_string(), m.to_string(), b.to_string());
    let lambda1 = request().settings.lambda1();
    assert_eq!(
        lc.passes,
        BTreeMap::from([
            (k("sample", "Vanilla", "context"), lambda1),
            (k("sample", "Personalized", "context"), N - lambda1),
        ])
    );
    assert_eq!(
        ic.passes,
        BTreeMap::from([(k("invert", "Personalized", "reference"), N)])
    );
    assert_eq!(
        rc.passes,
        BTreeMap::from([(k("reference", "Personalized", "reference"), N)])
    );
    assert_eq!(
        tc.passes,
        BTreeMap::from([(k("sample", "Personalized", "target"), N)])
    );
    let sites = models.unet(ModelRole::Personalized).sites(16, 16);
    let swapped = sites
        .iter()
        .filter(|s| swapped_sites(2).matches(s, &StepContext::plain(0, 0.0, 1)))
        .count();
    assert!(swapped > 0);
    assert_eq!(tc.calls, N * sites.len());
    assert_eq!(
        swap_sites.calls,
        N * swapped,
        "the observer saw every swapped call"
    );
    assert!(swap_sites.outputs_ok && tc.outputs_ok);
}

/// Replaces whatever computes a site with plain attention, counting its calls.
#[derive(Default)]
struct Plain {
    calls: usize,
    passes: Vec<Pass>,
}

impl AttentionProcessor for Plain {
    fn begin_pass(&mut self, ctx: &StepContext) -> Result<()> {
        self.passes.push(ctx.pass);
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
        self.calls += 1;
        DefaultAttention.attend(site, ctx, q, k, v)
    }
}

#[test]
fn a_user_route_replaces_the_built_in_processor() {
    let models = models();
    let (plain, _) = run_with(&models, &mut PassHooks::none());
    let mut p = Plain::default();
    let (out, stats) = {
        let mut hooks = PassHooks::default();
        // Plain attention where the swap would run: the target no longer reads the reference.
        hooks.target.route(swapped_sites(2), &mut p);
        run_with(&models, &mut hooks)
    };
    assert_eq!(stats.misses, 1, "target hooks keep the reference cache");
    assert!(p.calls > 0 && p.passes.iter().all(|&x| x == Pass::Sample));
    assert_ne!(
        latent_bits(&out),
        latent_bits(&plain),
        "the user's route took effect"
    );
    // The context branch is untouched by a target hook.
    assert_eq!(
        bits(out[0].context_latents.clone()),
        bits(plain[0].context_latents.clone())
    );
}

#[test]
fn one_model_serves_two_threads_with_a_shared_cache() {
    let models = Arc::new(models());
    let cache = Arc::new(ReferenceCache::in_memory());
    let run = |models: Arc<ModelPair>, cache: Arc<ReferenceCache>| {
        std::thread::spawn(move || {
            let mut pipe =
                LayoutAndRetouch::new(StepBlendedLayout, MultiSourceRetouch::with_cache(cache));
            let out = pipe
                .generate(
                    &models,
                    &subject(),
                    &request(),
                    &mut layret_core::ignore_progress,
                )
                .unwrap();
            latent_bits(&out)
        })
    };
    let a = run(models.clone(), cache.clone());
    let b = run(models.clone(), cache.clone());
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_eq!(a, b, "both threads make the same image");
    let (single, _) = run_with(&models, &mut PassHooks::none());
    assert_eq!(a, latent_bits(&single), "and the same as one thread alone");
    let st = cache.stats();
    assert_eq!(
        (st.misses, st.hits),
        (1, 1),
        "the shared reference is computed once"
    );
}

#[test]
fn branches_in_the_socket_are_typed() {
    // The layout stage's passes carry Branch::Context, the target's Branch::Target.
    let mut seen = Vec::new();
    struct Seen<'a>(&'a mut Vec<Branch>);
    impl AttentionObserver for Seen<'_> {
        fn begin_pass(&mut self, ctx: &StepContext) -> Result<()> {
            self.0.extend_from_slice(ctx.layout.branches());
            Ok(())
        }
        fn observe(&mut self, _: &AttentionSite, _: &StepContext, _: AttentionCall) -> Result<()> {
            Ok(())
        }
    }
    let models = models();
    {
        let mut s = Seen(&mut seen);
        let mut hooks = PassHooks::default();
        hooks.target.observe(SiteSelector::new(), &mut s);
        run_with(&models, &mut hooks);
    }
    assert!(seen.len() == N && seen.iter().all(|&b| b == Branch::Target));
    let _ = Router::new();
}
