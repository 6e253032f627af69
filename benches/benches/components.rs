//! Component benches on every backend compiled in: each attention site kind of SD 1.5 (self at
//! 64², 32², 16², 8²; cross at 64²), the text encoder (SD 1.5 size), VAE decode (64×64
//! latents), and the attention router's overhead on the tiny fixture UNet (no router, router
//! with default routes, `MultiSourceSwap` active).

use criterion::{Criterion, criterion_group, criterion_main};
use layret::attention::{
    KvPolicy, KvRecorder, KvSource, KvStore, MultiSourceSwap, Router, SiteSelector, SwapMode,
};
use layret::burn::tensor::{DType, Device, Distribution, Tensor};
use layret::core::clip::{ClipTextConfig, ClipTextEncoder};
use layret::core::processor::{
    AttentionKind, BatchLayout, Branch, DefaultAttention, StepContext, default_attention,
};
use layret::core::stable_diffusion::{LoadOptions, StableDiffusion};
use layret::core::vae::{AutoencoderKL, VaeConfig};
use layret::core::weights::Weights;

fn sync<const D: usize>(t: Tensor<D>) {
    let _ = t.into_data();
}

fn attention_sites(c: &mut Criterion) {
    for (name, device) in layret_benches::devices() {
        let mut g = c.benchmark_group(format!("attention_sd15_{name}"));
        g.sample_size(10);
        // SD 1.5 self-attention: 8 heads, head dim = channels / 8, batch 2.
        for (side, dim) in [(64usize, 40usize), (32, 80), (16, 160), (8, 160)] {
            let q = Tensor::<4>::random(
                [2, 8, side * side, dim],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            g.bench_function(format!("self_{side}x{side}"), |b| {
                b.iter(|| sync(default_attention(q.clone(), q.clone(), q.clone())))
            });
        }
        let q = Tensor::<4>::random([2, 8, 4096, 40], Distribution::Normal(0.0, 1.0), &device);
        let k = Tensor::<4>::random([2, 8, 77, 40], Distribution::Normal(0.0, 1.0), &device);
        g.bench_function("cross_64x64", |b| {
            b.iter(|| sync(default_attention(q.clone(), k.clone(), k.clone())))
        });
        g.finish();
    }
}

fn text_encoder(c: &mut Criterion) {
    for (name, device) in layret_benches::devices() {
        let cfg = ClipTextConfig::v1_5();
        let te = ClipTextEncoder::load(&Weights::random(&device, DType::F32, 1, 0.02), &cfg)
            .expect("random weights");
        let ids = vec![vec![49406u32, 320, 1125, 539, 320, 1929, 49407]; 2]
            .into_iter()
            .map(|mut r| {
                r.resize(77, 49407);
                r
            })
            .collect::<Vec<_>>();
        let mut g = c.benchmark_group(format!("text_encoder_sd15_{name}"));
        g.sample_size(10);
        g.bench_function("b2_77", |b| {
            b.iter(|| sync(te.encode(&ids, 0).expect("encode")))
        });
        g.finish();
    }
}

fn vae_decode(c: &mut Criterion) {
    for (name, device) in layret_benches::devices() {
        let vae = AutoencoderKL::load(
            &Weights::random(&device, DType::F32, 3, 0.02),
            &VaeConfig::sd(),
        )
        .expect("random weights");
        let z = Tensor::<4>::random([1, 4, 64, 64], Distribution::Normal(0.0, 1.0), &device);
        let mut g = c.benchmark_group(format!("vae_sd_{name}"));
        g.sample_size(10);
        g.bench_function("decode_64x64", |b| {
            b.iter(|| sync(vae.decode(z.clone()).expect("decode")))
        });
        g.finish();
    }
}

fn router_overhead(c: &mut Criterion) {
    let device = Device::flex();
    let fx = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/sd1-tiny");
    let sd = StableDiffusion::load(fx, &device, &LoadOptions::default()).expect("fixture");
    let x = Tensor::<4>::random([2, 4, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    let ctxt = sd.encode_prompts(&["a dog", "a cat"]).expect("prompts");
    let plain = StepContext::plain(5, 501.0, 2);
    let mut g = c.benchmark_group("router_tiny_unet");
    g.bench_function("no_router", |b| {
        b.iter(|| {
            sync(
                sd.unet()
                    .forward(x.clone(), 501.0, &ctxt, &mut DefaultAttention, &plain)
                    .unwrap(),
            )
        })
    });
    g.bench_function("router_default_routes", |b| {
        b.iter(|| {
            let mut unused = DefaultAttention;
            let mut r = Router::new();
            r.route(SiteSelector::new().path("no_such_block.*"), &mut unused);
            sync(
                sd.unet()
                    .forward(x.clone(), 501.0, &ctxt, &mut r, &plain)
                    .unwrap(),
            )
        })
    });
    // MultiSourceSwap on the decoder self-attention, replaying recorded keys/values.
    let mut kv = KvStore::new(KvPolicy::KeepF32);
    let ctx_uncond = StepContext::new(5, 501.0, BatchLayout::single(Branch::Context, 1, true));
    {
        let mut rec = KvRecorder::new(&mut kv);
        let mut r = Router::new();
        r.observe(
            SiteSelector::new()
                .kind(AttentionKind::SelfAttention)
                .decoder_at_least(2),
            &mut rec,
        );
        let _ = sd
            .unet()
            .forward(x.clone(), 501.0, &ctxt, &mut r, &ctx_uncond)
            .unwrap();
    }
    let target = StepContext::new(5, 501.0, BatchLayout::single(Branch::Target, 1, true));
    g.bench_function("multi_source_swap", |b| {
        b.iter(|| {
            let mut swap = MultiSourceSwap::new(
                Branch::Target,
                KvSource::Replay {
                    context: &kv,
                    reference: &kv,
                },
                4,
                SwapMode::Split,
            );
            let mut r = Router::new();
            r.route(
                SiteSelector::new()
                    .kind(AttentionKind::SelfAttention)
                    .decoder_at_least(2),
                &mut swap,
            );
            sync(
                sd.unet()
                    .forward(x.clone(), 501.0, &ctxt, &mut r, &target)
                    .unwrap(),
            )
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    attention_sites,
    text_encoder,
    vae_decode,
    router_overhead
);
criterion_main!(benches);
