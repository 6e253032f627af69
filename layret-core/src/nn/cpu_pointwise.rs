//! Fused element-wise kernels for the flex CPU backend (f32): GroupNorm (+ SiLU), LayerNorm
//! and GEGLU.
//!
//! Written with burn's tensor ops, `silu(group_norm(x))` is six passes over the activation, each
//! allocating a fresh output (statistics, subtract, divide, scale, shift, SiLU), and GEGLU's
//! `h · gelu(gate)` three (two strided chunk copies, GELU, product) with a scalar `erf`. Here
//! each is one read pass for the statistics and one write pass, in parallel, with vectorized
//! `exp` (AVX2+FMA when the CPU has it).

use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

use super::flex::flex_f32;
use super::simd::{exp_approx, has_avx2_fma};

/// `x ← x / (1 + e^(−x))` on a slice (`simd` as returned by [`has_avx2_fma`]).
fn silu_in_place(x: &mut [f32], simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: the caller checked AVX2 and FMA.
        unsafe { super::simd::avx2::silu_in_place(x) };
        return;
    }
    let _ = simd;
    for v in x {
        *v /= 1.0 + exp_approx(-*v);
    }
}

/// PyTorch's `GroupNorm` (biased variance, per-channel affine), optionally followed by SiLU,
/// or `None` when the kernel does not apply (not flex, not f32).
///
/// # Shapes
/// `x` `[B, C, H, W]`, `gamma`/`beta` `[C]` → `[B, C, H, W]`.
pub(crate) fn group_norm(
    x: &Tensor<4>,
    gamma: &Tensor<1>,
    beta: &Tensor<1>,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Option<Tensor<4>> {
    let device = x.device();
    if device != Device::flex() || groups == 0 {
        return None;
    }
    let [b, c, h, w] = x.dims();
    if c % groups != 0 || gamma.dims() != [c] || beta.dims() != [c] {
        return None;
    }
    let (xf, gf, bf) = (flex_f32(x)?, flex_f32(gamma)?, flex_f32(beta)?);
    let (xs, gs, bs) = (
        xf.storage::<f32>(),
        gf.storage::<f32>(),
        bf.storage::<f32>(),
    );
    let (hw, cg) = (h * w, c / groups);
    let n = cg * hw;
    if xs.len() < b * c * hw || gs.len() < c || bs.len() < c || n == 0 {
        return None;
    }
    let simd = has_avx2_fma();
    let mut out = vec![0f32; b * c * hw];
    out.par_chunks_mut(n).enumerate().for_each(|(bg, o)| {
        let src = &xs[bg * n..(bg + 1) * n];
        // Two passes (mean, then centred squares), f32 lanes summed into f64 per 4096 values.
        let mean = (src.chunks(4096).map(|ch| sum8(ch) as f64).sum::<f64>() / n as f64) as f32;
        let var = src
            .chunks(4096)
            .map(|ch| centred_sq8(ch, mean) as f64)
            .sum::<f64>()
            / n as f64;
        let rstd = (1.0 / (var + eps).sqrt()) as f32;
        let c0 = (bg % groups) * cg;
        for (ci, (dst, s)) in o.chunks_mut(hw).zip(src.chunks(hw)).enumerate() {
            let a = rstd * gs[c0 + ci];
            let sh = bs[c0 + ci] - mean * a;
            for (d, &v) in dst.iter_mut().zip(s) {
                *d = v * a + sh;
            }
            if silu {
                silu_in_place(dst, simd);
            }
        }
    });
    Some(Tensor::from_data(
        TensorData::new(out, [b, c, h, w]),
        &device,
    ))
}

/// PyTorch's `LayerNorm` over the last dimension (biased variance, affine), or `None` when
/// the kernel does not apply (not flex, not f32).
///
/// # Shapes
/// `x` `[..., d]`, `gamma`/`beta` `[d]` → `[..., d]`.
pub(crate) fn layer_norm<const D: usize>(
    x: &Tensor<D>,
    gamma: &Tensor<1>,
    beta: &Tensor<1>,
    eps: f64,
) -> Option<Tensor<D>> {
    let device = x.device();
    if device != Device::flex() || D == 0 {
        return None;
    }
    let dims = x.dims();
    let d = dims[D - 1];
    if d == 0 || gamma.dims() != [d] || beta.dims() != [d] {
        return None;
    }
    let rows: usize = dims[..D - 1].iter().product();
    let (xf, gf, bf) = (flex_f32(x)?, flex_f32(gamma)?, flex_f32(beta)?);
    let (xs, gs, bs) = (
        xf.storage::<f32>(),
        gf.storage::<f32>(),
        bf.storage::<f32>(),
    );
    if xs.len() < rows * d || gs.len() < d || bs.len() < d {
        return None;
    }
    let mut out = vec![0f32; rows * d];
    out.par_chunks_mut(d)
        .zip(xs.par_chunks(d))
        .for_each(|(o, src)| {
            let mean = sum8(src) / d as f32;
            let var = centred_sq8(src, mean) / d as f32;
            let rstd = (1.0 / (var as f64 + eps).sqrt()) as f32;
            for (((y, &v), &g), &b) in o.iter_mut().zip(src).zip(&gs[..d]).zip(&bs[..d]) {
                *y = (v - mean) * rstd * g + b;
            }
        });
    Some(Tensor::from_data(TensorData::new(out, dims), &device))
}

/// Sum with 8 independent lanes (vectorizes).
fn sum8(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for ch in chunks {
        for j in 0..8 {
            lanes[j] += ch[j];
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// `Σ (x − mean)²` with 8 independent lanes.
fn centred_sq8(x: &[f32], mean: f32) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    for ch in chunks {
        for j in 0..8 {
            let d = ch[j] - mean;
            lanes[j] += d * d;
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// Exact-erf GELU, `0.5·x·(1 + erf(x/√2))`, via the complementary error function of Numerical
/// Recipes (`erfc` with fractional error < 1.2e-7 everywhere).
pub(crate) fn gelu_erf(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * exp_approx(poly);
    // x ≥ 0: 0.5·x·(2 − erfc); x < 0: 0.5·x·erfc.
    if x >= 0.0 {
        0.5 * x * (2.0 - erfc)
    } else {
        0.5 * x * erfc
    }
}

/// GEGLU's gate, `h · gelu(gate)` where `[h, gate]` are the two halves of the last dimension,
/// or `None` when the kernel does not apply (not flex, not f32, odd width).
///
/// # Shapes
/// `x` `[B, L, 2·I]` → `[B, L, I]`.
pub(crate) fn geglu(x: &Tensor<3>) -> Option<Tensor<3>> {
    let device = x.device();
    if device != Device::flex() {
        return None;
    }
    let [b, l, two_i] = x.dims();
    if two_i % 2 != 0 || two_i == 0 {
        return None;
    }
    let inner = two_i / 2;
    let xf = flex_f32(x)?;
    let xs = xf.storage::<f32>();
    if xs.len() < b * l * two_i {
        return None;
    }
    let simd = has_avx2_fma();
    let mut out = vec![0f32; b * l * inner];
    out.par_chunks_mut(inner)
        .zip(xs.par_chunks(two_i))
        .for_each(|(o, row)| {
            let (h, gate) = row.split_at(inner);
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: the CPU has AVX2 and FMA.
                unsafe { super::simd::avx2::geglu_row(o, h, gate) };
                return;
            }
            let _ = simd;
            for ((d, &hv), &g) in o.iter_mut().zip(h).zip(gate) {
                *d = hv * gelu_erf(g);
            }
        });
    Some(Tensor::from_data(
        TensorData::new(out, [b, l, inner]),
        &device,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use burn::tensor::activation::{gelu, silu};

    #[test]
    fn gelu_matches_the_exact_erf_form() {
        for i in -1000..=1000 {
            let x = i as f32 / 100.0;
            let want = burn::tensor::Tensor::<1>::from_floats([x], &Device::flex());
            let want: f32 = gelu(want).into_scalar();
            let got = gelu_erf(x);
            assert!(
                (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "gelu({x}): {got} vs {want}"
            );
        }
    }

    #[test]
    fn geglu_matches_burn() {
        let dev = Device::flex();
        // Widths that exercise the 8-lane body and the scalar tail.
        for i in [1280usize, 13] {
            let x = Tensor::<3>::random([2, 5, 2 * i], Distribution::Normal(0.0, 2.0), &dev);
            let mut parts = x.clone().chunk(2, 2);
            let gate = parts.pop().expect("two parts");
            let h = parts.pop().expect("two parts");
            let want = h * gelu(gate);
            let got = geglu(&x).expect("flex f32 takes the kernel");
            let d: f32 = (got - want).abs().max().into_scalar();
            assert!(d < 1e-5, "width {i}: max diff {d}");
        }
    }

    #[test]
    fn layer_norm_matches_burn_ops() {
        let dev = Device::flex();
        for d in [320usize, 13] {
            let x = Tensor::<3>::random([2, 7, d], Distribution::Normal(2.0, 3.0), &dev);
            let gamma = Tensor::<1>::random([d], Distribution::Normal(1.0, 0.5), &dev);
            let beta = Tensor::<1>::random([d], Distribution::Normal(0.0, 0.5), &dev);
            let (var, mean) = x.clone().var_mean_bias(2);
            let want = (x.clone() - mean)
                .div(var.add_scalar(1e-5).sqrt())
                .mul(gamma.clone().reshape([1, 1, d]))
                .add(beta.clone().reshape([1, 1, d]));
            let got = layer_norm(&x, &gamma, &beta, 1e-5).expect("flex f32 takes the kernel");
            let diff: f32 = (got - want).abs().max().into_scalar();
            assert!(diff < 1e-5, "d={d}: max diff {diff}");
        }
    }

    #[test]
    fn group_norm_matches_burn_ops() {
        let dev = Device::flex();
        for (b, c, h, w, g) in [(2usize, 64usize, 9usize, 7usize, 32usize), (1, 6, 4, 4, 3)] {
            // An offset mean, as activations have, to test the two-pass variance.
            let x = Tensor::<4>::random([b, c, h, w], Distribution::Normal(3.0, 2.0), &dev);
            let gamma = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.5), &dev);
            let beta = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.5), &dev);
            let xg = x.clone().reshape([b, g, (c / g) * h * w]);
            let (var, mean) = xg.clone().var_mean_bias(2);
            let want = (xg - mean)
                .div(var.add_scalar(1e-5).sqrt())
                .reshape([b, c, h, w])
                .mul(gamma.clone().reshape([1, c, 1, 1]))
                .add(beta.clone().reshape([1, c, 1, 1]));
            for with_silu in [false, true] {
                let want = if with_silu {
                    silu(want.clone())
                } else {
                    want.clone()
                };
                let got = group_norm(&x, &gamma, &beta, g, 1e-5, with_silu)
                    .expect("flex f32 takes the kernel");
                let d: f32 = (got - want).abs().max().into_scalar();
                assert!(
                    d < 1e-5,
                    "{:?} silu={with_silu}: max diff {d}",
                    (b, c, h, w, g)
                );
            }
        }
    }
}
