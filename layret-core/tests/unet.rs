//! Parity of `UNet2DConditionModel` with diffusers on the tiny SD 1.x- and SD 2.x-style fixtures.

mod common;

use burn::tensor::{DType, Tensor};
use layret_core::processor::{DefaultAttention, StepContext};
use layret_core::unet::UNet2DConditionModel;

fn check(name: &str) {
    let dir = common::fixtures().join(name).join("unet");
    let (unet, _) =
        UNet2DConditionModel::from_dir(&dir, &common::device(), DType::F32, None).unwrap();
    let file = format!("unet_{name}.safetensors");
    let sample: Tensor<4> = common::golden_tensor(&file, "sample");
    let context: Tensor<3> = common::golden_tensor(&file, "encoder_hidden_states");
    unet.check_inputs(&sample, &context).unwrap();
    for t in [981, 1] {
        let ctx = StepContext::plain(0, t as f64, 2);
        let eps = unet
            .forward(
                sample.clone(),
                t as f64,
                &context,
                &mut DefaultAttention,
                &ctx,
            )
            .unwrap();
        let err = common::max_abs_diff(eps, &common::golden(&file, &format!("eps_t{t}")));
        layret_test_support::assert_within(err, 1e-4, format_args!("{name} t={t}"));
    }
}

#[test]
fn sd1_style_unet_matches_diffusers() {
    // conv proj_in/out, one int head count, fp32 weights.
    check("sd1-tiny");
}

#[test]
fn sd2_style_unet_matches_diffusers() {
    // linear proj_in/out, per-block head counts, upcast_attention, fp16 weights.
    check("sd2-tiny");
}

#[test]
fn sites_are_listed_in_execution_order() {
    let dir = common::fixtures().join("sd1-tiny/unet");
    let (unet, _) =
        UNet2DConditionModel::from_dir(&dir, &common::device(), DType::F32, None).unwrap();
    let sites = unet.sites(16, 16);
    // 2 cross-attn down levels × 2 layers + mid + 2 cross-attn up levels × 3 layers = 11
    // transformers, two sites each.
    assert_eq!(sites.len(), 22);
    assert_eq!(
        sites[0].path,
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    );
    assert_eq!(
        (
            sites[0].height,
            sites[0].width,
            sites[0].heads,
            sites[0].head_dim
        ),
        (16, 16, 2, 8)
    );
    assert_eq!(
        sites[8].path,
        "mid_block.attentions.0.transformer_blocks.0.attn1"
    );
    assert_eq!((sites[8].height, sites[8].width), (4, 4));
    let last = sites.last().unwrap();
    assert_eq!(
        last.path,
        "up_blocks.2.attentions.2.transformer_blocks.0.attn2"
    );
    assert_eq!((last.height, last.width), (16, 16));
    assert!(sites.iter().enumerate().all(|(i, s)| s.index == i));
}

/// A site as plain values: path, kind, index, height, width, heads, head_dim, upcast.
type SiteKey = (String, String, usize, usize, usize, usize, usize, bool);

/// What `forward` really hands the processor, site by site.
#[derive(Default)]
struct Recorder {
    seen: Vec<SiteKey>,
}

impl layret_core::processor::AttentionProcessor for Recorder {
    fn attend(
        &mut self,
        site: &layret_core::processor::AttentionSite,
        _ctx: &StepContext,
        q: Tensor<4>,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> layret_core::Result<Tensor<4>> {
        let [_, heads, lq, d] = q.dims();
        assert_eq!((heads, d), (site.heads, site.head_dim), "{}", site.path);
        assert_eq!(lq, site.height * site.width, "{}", site.path);
        self.seen.push(key(site));
        Ok(layret_core::processor::default_attention(q, k, v))
    }
}

fn key(s: &layret_core::processor::AttentionSite) -> SiteKey {
    (
        s.path.to_string(),
        format!("{:?}", s.kind),
        s.index,
        s.height,
        s.width,
        s.heads,
        s.head_dim,
        s.upcast,
    )
}

#[test]
fn sites_are_what_forward_hands_the_processor() {
    for name in ["sd1-tiny", "sd2-tiny"] {
        let dir = common::fixtures().join(name).join("unet");
        let (unet, cfg) =
            UNet2DConditionModel::from_dir(&dir, &common::device(), DType::F32, None).unwrap();
        for (h, w) in [(8, 8), (16, 16), (9, 13)] {
            let sample: Tensor<4> =
                layret_core::noise::seeded_noise(1, [1, 4, h, w], &common::device());
            let context: Tensor<3> = layret_core::noise::seeded_noise(
                2,
                [1, 77, cfg.cross_attention_dim],
                &common::device(),
            );
            let mut rec = Recorder::default();
            unet.forward(
                sample,
                500.0,
                &context,
                &mut rec,
                &StepContext::plain(0, 500.0, 1),
            )
            .unwrap();
            let listed: Vec<_> = unet.sites(h, w).iter().map(key).collect();
            assert!(!listed.is_empty());
            assert_eq!(listed, rec.seen, "{name} at {h}×{w}");
        }
    }
}
