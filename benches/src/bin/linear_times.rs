//! Time the SD 1.5 UNet's linear layers at 64×64 latents, batch 2 (median of 5): burn's
//! `linear` against layret's `Linear` (its flex kernel). One line per shape.

use layret::burn::module::Param;
use layret::burn::tensor::{Device, Distribution, Tensor};
use layret::core::nn::Linear;

fn main() {
    let d = Device::flex();
    // (tokens, in, out, bias)
    for (l, i, o, bias) in [
        (4096usize, 320usize, 320usize, false),
        (4096, 320, 320, true),
        (4096, 320, 2560, true),
        (4096, 1280, 320, true),
        (1024, 640, 5120, true),
        (256, 1280, 10240, true),
        (77, 768, 320, false),
    ] {
        let x = Tensor::<3>::random([2, l, i], Distribution::Normal(0.0, 1.0), &d);
        let w = Tensor::<2>::random([i, o], Distribution::Normal(0.0, 0.05), &d);
        let b = Tensor::<1>::random([o], Distribution::Normal(0.0, 1.0), &d);
        let lin = Linear {
            weight: Param::from_tensor(w.clone()),
            bias: bias.then(|| Param::from_tensor(b.clone())),
        };
        let gflop = 2.0 * (2 * l * i * o) as f64 / 1e9;
        let (tb, ob) = layret_benches::median_of_5(|| {
            layret::burn::tensor::module::linear(x.clone(), w.clone(), bias.then(|| b.clone()))
        });
        let (tl, ol) = layret_benches::median_of_5(|| lin.forward(x.clone()));
        let diff: f32 = (ol - ob).abs().max().into_scalar();
        println!(
            "[2,{l},{i}]x[{i},{o}] bias={bias:<5}  burn {tb:>7.1} ms ({:>4.0} GF/s)  layret {tl:>7.1} ms ({:>4.0} GF/s)  {:.2}x  diff {diff:.1e}",
            gflop / tb * 1e3,
            gflop / tl * 1e3,
            tb / tl
        );
    }
}
