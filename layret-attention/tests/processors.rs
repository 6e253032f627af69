//! The hook system on a real UNet: bit-identical default routing, and MasaCtrl-style mutual
//! self-attention and cross-attention map capture against a diffusers `AttnProcessor`
//! reference (tools/reference/make_fixtures.py, `attention_goldens`).

use burn::tensor::Tensor;
use layret_attention::{AttentionStore, MutualSelfAttention, Router, SiteSelector};
use layret_core::processor::{AttentionKind, BatchLayout, Branch, DefaultAttention, StepContext};
use layret_core::stable_diffusion::{LoadOptions, StableDiffusion};

use layret_test_support::{bits, device, fixture, golden_tensor, max_abs_diff_tensors as max_abs};

/// A tensor of the MasaCtrl golden as `[B, 1, L, L']` (maps are stored without the head axis).
fn golden(key: &str) -> Tensor<4> {
    golden_tensor("mutual_sd1-tiny.safetensors", key)
}

fn model() -> StableDiffusion {
    StableDiffusion::load(fixture("sd1-tiny"), &device(), &LoadOptions::default()).unwrap()
}

const RECORD: [&str; 2] = [
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.2.transformer_blocks.0.attn2",
];

/// Five CFG steps of the two-image (source, target) batch with `router` built per step.
fn run(sd: &StableDiffusion, mutual: bool, store: &mut AttentionStore) -> Tensor<4> {
    let sched = sd.ddim(5, 0.0).unwrap();
    let cond = sd
        .encode_prompts(&["a photo of a dog", "a photo of a dog running"])
        .unwrap();
    let uncond = sd.encode_prompts(&["", ""]).unwrap();
    let context = Tensor::cat(vec![uncond, cond], 0);
    let mut latents = golden("noise");
    let mut msa = MutualSelfAttention::new(Branch::Source(0), Branch::Target, 2);
    for (k, &t) in sched.timesteps().to_vec().iter().enumerate() {
        let ctx = StepContext::new(
            k,
            t as f64,
            BatchLayout::new(vec![Branch::Source(0), Branch::Target], 1, true).unwrap(),
        );
        let mut router = Router::new();
        if mutual {
            router.route(
                SiteSelector::new()
                    .path("up_blocks.*")
                    .kind(AttentionKind::SelfAttention),
                &mut msa,
            );
        }
        router.route(SiteSelector::new().path(RECORD[0]), store);
        let input = Tensor::cat(vec![latents.clone(), latents.clone()], 0);
        let eps = sd
            .unet()
            .forward(input, t as f64, &context, &mut router, &ctx)
            .unwrap();
        drop(router);
        let mut h = eps.chunk(2, 0);
        let (ec, eu) = (h.pop().unwrap(), h.pop().unwrap());
        let eps = eu.clone() + (ec - eu) * 7.5;
        latents = sched.step(eps, k, latents, None).unwrap();
    }
    latents
}

#[test]
fn mutual_self_attention_and_maps_match_diffusers() {
    let sd = model();
    let mut store = AttentionStore::new(true);
    let latents = run(&sd, true, &mut store);
    let err = max_abs(latents.clone(), golden("latents"));
    assert!(err <= 1e-4, "latents: {err}");
    assert_eq!(store.records().len(), 5);
    for r in store.records() {
        assert_eq!((r.height, r.width), (8, 8));
        let want = golden(&format!("map.{}.step{}", r.path, r.step));
        let err = max_abs(r.probs.clone(), want);
        assert!(err <= 1e-4, "map {} step {}: {err}", r.path, r.step);
    }
    // The processor matters: without it the result is far from the golden.
    let plain = run(&sd, false, &mut AttentionStore::new(true));
    assert!(max_abs(plain, golden("latents")) > 1e-3);
}

#[test]
fn store_records_only_routed_sites_second_site_too() {
    let sd = model();
    let mut store = AttentionStore::new(true);
    let sched = sd.ddim(5, 0.0).unwrap();
    let cond = sd
        .encode_prompts(&["a photo of a dog", "a photo of a dog running"])
        .unwrap();
    let uncond = sd.encode_prompts(&["", ""]).unwrap();
    let context = Tensor::cat(vec![uncond, cond], 0);
    let latents = golden("noise");
    let t = sched.timesteps()[0];
    let ctx = StepContext::new(
        0,
        t as f64,
        BatchLayout::new(vec![Branch::Source(0), Branch::Target], 1, true).unwrap(),
    );
    let mut router = Router::new();
    router.route(SiteSelector::new().path(RECORD[1]), &mut store);
    let input = Tensor::cat(vec![latents.clone(), latents], 0);
    let _ = sd
        .unet()
        .forward(input, t as f64, &context, &mut router, &ctx)
        .unwrap();
    drop(router);
    assert_eq!(store.records().len(), 1);
    let r = &store.records()[0];
    assert_eq!(r.path, RECORD[1]);
    let err = max_abs(r.probs.clone(), golden(&format!("map.{}.step0", RECORD[1])));
    assert!(err <= 1e-4, "{err}");
}

#[test]
fn default_routing_is_bit_identical() {
    let sd = model();
    let x = golden("noise");
    let context = sd.encode_prompts(&["a dog", "a cat"]).unwrap();
    let ctx = StepContext::plain(0, 501.0, 2);
    let plain = sd
        .unet()
        .forward(x.clone(), 501.0, &context, &mut DefaultAttention, &ctx)
        .unwrap();
    let mut empty = Router::new();
    let a = sd
        .unet()
        .forward(x.clone(), 501.0, &context, &mut empty, &ctx)
        .unwrap();
    let mut unused = DefaultAttention;
    let mut router = Router::new();
    router.route(SiteSelector::new().path("no_such_block.*"), &mut unused);
    let b = sd
        .unet()
        .forward(x, 501.0, &context, &mut router, &ctx)
        .unwrap();
    let p = bits(plain);
    assert_eq!(p, bits(a));
    assert_eq!(p, bits(b));
}

/// Records which processor computed each call (by name) and what observers saw.
struct Named(&'static str, std::rc::Rc<std::cell::RefCell<Vec<String>>>);

impl layret_core::processor::AttentionProcessor for Named {
    fn attend(
        &mut self,
        site: &layret_core::processor::AttentionSite,
        _ctx: &StepContext,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> layret_core::Result<Tensor<4>> {
        self.1
            .borrow_mut()
            .push(format!("{} {}", self.0, site.path));
        Ok(layret_core::processor::default_attention(q, k, v) * 0.5)
    }
}

struct Watch(&'static str, std::rc::Rc<std::cell::RefCell<Vec<String>>>);

impl layret_attention::AttentionObserver for Watch {
    fn observe(
        &mut self,
        site: &layret_core::processor::AttentionSite,
        _ctx: &StepContext,
        call: layret_attention::AttentionCall,
    ) -> layret_core::Result<()> {
        // The observer sees the output the computing processor gave (halved by Named).
        let plain = layret_core::processor::default_attention(
            call.q.clone(),
            call.k.clone(),
            call.v.clone(),
        );
        let halved = max_abs(call.output.clone(), plain * 0.5) < 1e-6;
        self.1
            .borrow_mut()
            .push(format!("{} saw {} halved={halved}", self.0, site.path));
        Ok(())
    }
}

#[test]
fn routers_layer_and_observers_share_sites() {
    use std::{cell::RefCell, rc::Rc};
    let sd = model();
    let x = golden("noise");
    let context = sd.encode_prompts(&["a dog", "a cat"]).unwrap();
    let ctx = StepContext::plain(0, 501.0, 2);
    let log = Rc::new(RefCell::new(Vec::new()));
    let mid = "mid_block.attentions.0.transformer_blocks.0.attn1";
    let (mut user, mut builtin, mut fallback) = (
        Named("user", log.clone()),
        Named("builtin", log.clone()),
        Named("fallback", log.clone()),
    );
    let (mut uw, mut bw) = (
        Watch("user-obs", log.clone()),
        Watch("builtin-obs", log.clone()),
    );
    let mut user_router = Router::new();
    user_router
        .route(SiteSelector::new().path(mid), &mut user)
        .observe(SiteSelector::new().path(mid), &mut uw);
    let mut plain = DefaultAttention;
    {
        let mut router = Router::new();
        router
            .require(SiteSelector::new().path("mid_block.*attn1"), &mut builtin)
            .route(
                SiteSelector::new().path("up_blocks.1.attentions.0.*attn1"),
                &mut plain,
            )
            .observe(SiteSelector::new().path(mid), &mut bw)
            .fallback(&mut fallback)
            .over(&mut user_router);
        sd.unet()
            .forward(x, 501.0, &context, &mut router, &ctx)
            .unwrap();
        // The built-in required route counts as matched where the user's replaced it.
        assert!(router.unmatched().is_empty(), "{:?}", router.unmatched());
    }
    let log = log.borrow();
    let mid_lines: Vec<&String> = log.iter().filter(|l| l.contains(mid)).collect();
    assert_eq!(
        mid_lines,
        vec![
            &format!("user {mid}"),
            &format!("user-obs saw {mid} halved=true"),
            &format!("builtin-obs saw {mid} halved=true"),
        ],
        "the user's route first, then both observers with its output"
    );
    assert!(!log.iter().any(|l| l.starts_with("builtin ")));
    // Unrouted sites went to the fallback; the DefaultAttention route took its own site.
    let n_sites = sd.unet().sites(8, 8).len();
    let fallbacks = log.iter().filter(|l| l.starts_with("fallback ")).count();
    assert_eq!(fallbacks, n_sites - 2);
    assert!(
        !log.iter()
            .any(|l| l.contains("fallback up_blocks.1.attentions.0.transformer_blocks.0.attn1"))
    );
}
