//! Time every distinct convolution shape of the SD 1.5 UNet at 64×64 latents, batch 2 (median of
//! 5): burn's `conv2d` against layret's `Conv2d` (its flex kernel), with the max abs difference.
//! Prints one line per shape and the totals weighted by how often the UNet runs each shape.
//!
//! Usage: conv_times [burn|layret|both]

use layret::burn::module::Param;
use layret::burn::tensor::module::conv2d;
use layret::burn::tensor::ops::ConvOptions;
use layret::burn::tensor::{Device, Distribution, Tensor};
use layret::core::nn::Conv2d;

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "both".into());
    let d = Device::flex();
    // (in, out, size, kernel, stride, count in one UNet pass)
    let shapes = [
        (4, 320, 64, 3, 1, 1),
        (320, 320, 64, 3, 1, 4),
        (320, 320, 64, 3, 2, 1),
        (320, 640, 32, 3, 1, 1),
        (640, 640, 32, 3, 1, 3),
        (320, 640, 32, 1, 1, 1),
        (640, 640, 32, 3, 2, 1),
        (640, 1280, 16, 3, 1, 1),
        (1280, 1280, 16, 3, 1, 3),
        (640, 1280, 16, 1, 1, 1),
        (1280, 1280, 16, 3, 2, 1),
        (1280, 1280, 8, 3, 1, 11),
        (2560, 1280, 8, 3, 1, 3),
        (2560, 1280, 8, 1, 1, 3),
        (1280, 1280, 16, 3, 1, 4),
        (2560, 1280, 16, 3, 1, 2),
        (1920, 1280, 16, 3, 1, 1),
        (2560, 1280, 16, 1, 1, 2),
        (1920, 1280, 16, 1, 1, 1),
        (1280, 1280, 32, 3, 1, 1),
        (1920, 640, 32, 3, 1, 1),
        (1280, 640, 32, 3, 1, 1),
        (960, 640, 32, 3, 1, 1),
        (640, 640, 32, 3, 1, 3),
        (1920, 640, 32, 1, 1, 1),
        (1280, 640, 32, 1, 1, 1),
        (960, 640, 32, 1, 1, 1),
        (640, 640, 64, 3, 1, 1),
        (960, 320, 64, 3, 1, 1),
        (640, 320, 64, 3, 1, 2),
        (320, 320, 64, 3, 1, 3),
        (960, 320, 64, 1, 1, 1),
        (640, 320, 64, 1, 1, 2),
        (320, 4, 64, 3, 1, 1),
        // transformer proj_in/proj_out (1×1)
        (320, 320, 64, 1, 1, 10),
        (640, 640, 32, 1, 1, 10),
        (1280, 1280, 16, 1, 1, 10),
        (1280, 1280, 8, 1, 1, 2),
    ];
    let (mut tot_b, mut tot_l) = (0.0, 0.0);
    for (ci, co, s, k, st, n) in shapes {
        let x = Tensor::<4>::random([2, ci, s, s], Distribution::Normal(0.0, 1.0), &d);
        let w = Tensor::<4>::random([co, ci, k, k], Distribution::Normal(0.0, 0.05), &d);
        let b = Tensor::<1>::random([co], Distribution::Normal(0.0, 1.0), &d);
        let pad = k / 2;
        let conv = Conv2d {
            weight: Param::from_tensor(w.clone()),
            bias: Param::from_tensor(b.clone()),
            stride: st,
            padding: pad,
        };
        let gflop = 2.0 * (2 * co * ci * k * k * (s / st) * (s / st)) as f64 / 1e9;
        let mut line = format!("{ci:>5}->{co:<5} {k}x{k}/{st} @{s:<3} x{n}");
        let (mut tb, mut ob) = (None, None);
        if which != "layret" {
            let (t, o) = layret_benches::median_of_5(|| {
                conv2d(
                    x.clone(),
                    w.clone(),
                    Some(b.clone()),
                    ConvOptions::new([st, st], [pad, pad], [1, 1], 1),
                )
            });
            line += &format!("  burn {t:>8.1} ms ({:>5.0} GF/s)", gflop / t * 1e3);
            tot_b += t * n as f64;
            tb = Some(t);
            ob = Some(o);
        }
        if which != "burn" {
            let (t, o) = layret_benches::median_of_5(|| conv.forward(x.clone()));
            line += &format!("  layret {t:>8.1} ms ({:>5.0} GF/s)", gflop / t * 1e3);
            tot_l += t * n as f64;
            if let (Some(tb), Some(ob)) = (tb, &ob) {
                let diff: f32 = (o - ob.clone()).abs().max().into_scalar();
                line += &format!("  {:.2}x  diff {diff:.1e}", tb / t);
            }
        }
        println!("{line}");
    }
    println!("weighted total: burn {tot_b:.0} ms, layret {tot_l:.0} ms");
}
