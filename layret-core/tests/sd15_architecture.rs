//! The real SD 1.5 layer plan (full channel sizes) with random weights, at 8×8 latents: every
//! block is built from the v1_5 preset and the forward pass produces a finite ε of the right
//! shape. (The parity tests use tiny models; this one exercises the full-size plan.)

mod common;

use burn::tensor::{DType, Tensor};
use layret_core::noise::seeded_noise;
use layret_core::processor::{DefaultAttention, StepContext};
use layret_core::unet::{UNet2DConditionModel, UNetConfig};
use layret_core::weights::Weights;

#[test]
fn sd15_unet_runs_at_full_size() {
    let dev = common::device();
    let cfg = UNetConfig::v1_5();
    let weights = Weights::random(&dev, DType::F32, 0, 0.02);
    let unet = UNet2DConditionModel::load(&weights, &cfg).unwrap();
    let sites = unet.sites(64, 64);
    assert_eq!(sites.len(), 32, "16 transformers × (attn1, attn2)");
    let swapped: Vec<_> = sites
        .iter()
        .filter(|s| s.path.starts_with("up_blocks") && s.path.ends_with("attn1") && s.height >= 32)
        .map(|s| s.path)
        .collect();
    assert_eq!(
        swapped.len(),
        6,
        "docs/method.md's six swapped layers at 512²: {swapped:?}"
    );
    assert_eq!(sites[0].heads * sites[0].head_dim, 320);
    assert_eq!((sites[0].heads, sites[0].head_dim), (8, 40));

    let sample: Tensor<4> = seeded_noise(1, [2, 4, 8, 8], &dev);
    let context: Tensor<3> = seeded_noise(2, [2, 77, 768], &dev);
    unet.check_inputs(&sample, &context).unwrap();
    let eps = unet
        .forward(
            sample,
            500.0,
            &context,
            &mut DefaultAttention,
            &StepContext::plain(0, 500.0, 2),
        )
        .unwrap();
    assert_eq!(eps.dims(), [2, 4, 8, 8]);
    let v = common::to_f64(eps);
    assert!(v.iter().all(|x| x.is_finite()));
    assert!(v.iter().any(|x| x.abs() > 1e-6), "output is not all zeros");
}
