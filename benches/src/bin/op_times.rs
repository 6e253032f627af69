//! Time the SD 1.5 UNet's main operations on flex at 64×64 latents, batch 2 (median of 5),
//! to see where a UNet step goes. Prints one line per op.

use std::time::Instant;

use layret::burn::tensor::module::{attention, conv2d};
use layret::burn::tensor::ops::{AttentionModuleOptions, ConvOptions};
use layret::burn::tensor::{Device, Distribution, Tensor};

fn time<F: FnMut() -> Tensor<4>>(name: &str, mut f: F) {
    let mut ts = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let o = f();
        let _ = o.slice([0..1, 0..1, 0..1, 0..1]).into_data();
        ts.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    ts.sort_by(f64::total_cmp);
    println!("{name:<48} {:>9.1} ms", ts[2]);
}

fn main() {
    let d = Device::flex();
    let r = |s: [usize; 4]| Tensor::<4>::random(s, Distribution::Normal(0.0, 1.0), &d);
    let x320 = r([2, 320, 64, 64]);
    let w = r([320, 320, 3, 3]);
    let b = Tensor::<1>::zeros([320], &d);
    time("conv3x3 320->320 @64x64", || {
        conv2d(
            x320.clone(),
            w.clone(),
            Some(b.clone()),
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        )
    });
    let x1280 = r([2, 1280, 8, 8]);
    let w2 = r([1280, 1280, 3, 3]);
    let b2 = Tensor::<1>::zeros([1280], &d);
    time("conv3x3 1280->1280 @8x8", || {
        conv2d(
            x1280.clone(),
            w2.clone(),
            Some(b2.clone()),
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        )
    });
    let q = r([2, 8, 4096, 40]);
    time("self-attention 8x40 L=4096", || {
        attention(
            q.clone(),
            q.clone(),
            q.clone(),
            None,
            None,
            AttentionModuleOptions::default(),
        )
    });
    time("self-attention 8x40 L=4096 (layret kernel)", || {
        layret::core::nn::scaled_dot_product_attention(
            q.clone(),
            q.clone(),
            q.clone(),
            layret::core::nn::AttentionMask::None,
        )
    });
    let q80 = r([2, 8, 1024, 80]);
    time("self-attention 8x80 L=1024 (burn)", || {
        attention(
            q80.clone(),
            q80.clone(),
            q80.clone(),
            None,
            None,
            AttentionModuleOptions::default(),
        )
    });
    time("self-attention 8x80 L=1024 (layret kernel)", || {
        layret::core::nn::scaled_dot_product_attention(
            q80.clone(),
            q80.clone(),
            q80.clone(),
            layret::core::nn::AttentionMask::None,
        )
    });
    let k = r([2, 8, 77, 40]);
    time("cross-attention 8x40 L=4096x77", || {
        attention(
            q.clone(),
            k.clone(),
            k.clone(),
            None,
            None,
            AttentionModuleOptions::default(),
        )
    });
    let a = Tensor::<3>::random([2, 4096, 320], Distribution::Normal(0.0, 1.0), &d);
    let lw = Tensor::<2>::random([320, 2560], Distribution::Normal(0.0, 1.0), &d);
    time("linear 320->2560 (GEGLU proj) L=4096", || {
        layret::burn::tensor::module::linear(a.clone(), lw.clone(), None).unsqueeze::<4>()
    });
    time("groupnorm-like var_mean 320ch @64x64", || {
        let xg = x320.clone().reshape([2, 32, 10 * 4096]);
        let (v, m) = xg.clone().var_mean_bias(2);
        ((xg - m) / v.add_scalar(1e-5).sqrt()).reshape([2, 320, 64, 64])
    });
    time("silu 320ch @64x64", || {
        layret::burn::tensor::activation::silu(x320.clone())
    });
    let gn = layret::core::nn::GroupNorm {
        weight: layret::burn::module::Param::from_tensor(Tensor::<1>::ones([320], &d)),
        bias: layret::burn::module::Param::from_tensor(Tensor::<1>::zeros([320], &d)),
        groups: 32,
        eps: 1e-5,
    };
    time("GroupNorm+SiLU 320ch @64x64 (layret kernel)", || {
        gn.forward_silu(x320.clone())
    });
}
