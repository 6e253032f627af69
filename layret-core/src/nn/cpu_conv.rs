//! A 2-D convolution kernel for the flex CPU backend (f32; bf16 through `cpu_gemm_bf16`; f16
//! through f32), used by [`Conv2d`](super::Conv2d).
//!
//! burn-flex's convolution re-lays the weight out as `[out, kh, kw, in]` on every call (a scalar
//! transpose of the whole weight: 59 MB for a 1280→1280 3×3 layer), converts the input to NHWC,
//! and writes each 512-pixel tile's result back transposed. This kernel reads the checkpoint's
//! `[out, in, kh, kw]` weight in place (no copy), builds the classic `[in·kh·kw, H'·W']` im2col
//! matrix straight from the NCHW input (row copies, in parallel) for a band of output rows at a
//! time (≤ 32 MB, reused between calls), and lets one `gemm` per band accumulate into NCHW output
//! that was pre-filled with the bias. 1×1 stride-1 convolutions skip the im2col. Results agree
//! with burn's convolution to float rounding (~1e-5 on SD-sized layers).

use std::cell::RefCell;

use burn::tensor::{DType, Device, Tensor, TensorData};
use half::bf16;
use rayon::prelude::*;

use super::cpu_gemm_bf16::{PackedB, gemm as gemm_bf16, to_bf16};
use super::flex::{f32_values, flex_bf16, flex_f32};

/// Convolution geometry: square kernel, same stride/padding on both axes, dilation 1, 1 group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvGeometry {
    /// Kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding.
    pub padding: usize,
}

/// Most floats an im2col band may hold (32 MB).
const COL_BUDGET: usize = 8 << 20;

thread_local! {
    /// The im2col scratch buffer, kept between calls so large layers do not page-fault a fresh
    /// buffer in every step.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The bf16 kernel's im2col band and its packed form, kept the same way.
    static SCRATCH_BF16: RefCell<(Vec<bf16>, PackedB)> = RefCell::new((Vec::new(), PackedB::default()));
}

/// `conv2d(x, weight) + bias` with layret's kernel, or `None` when it does not apply (not flex,
/// not f32, bf16 or f16, shapes that do not fit the geometry): the caller then uses burn's
/// convolution.
///
/// # Shapes
/// `x` `[B, in, H, W]`, `weight` `[out, in, k, k]`, `bias` `[out]` → `[B, out, H', W']`.
pub(crate) fn conv2d(
    x: &Tensor<4>,
    weight: &Tensor<4>,
    bias: &Tensor<1>,
    g: ConvGeometry,
) -> Option<Tensor<4>> {
    conv2d_banded(x, weight, bias, g, COL_BUDGET)
}

/// [`conv2d`] with im2col bands of at most `budget` floats (at least one output row).
fn conv2d_banded(
    x: &Tensor<4>,
    weight: &Tensor<4>,
    bias: &Tensor<1>,
    g: ConvGeometry,
    budget: usize,
) -> Option<Tensor<4>> {
    let device = x.device();
    if device != Device::flex() {
        return None;
    }
    let [b, c_in, h, w] = x.dims();
    let [c_out, w_in, kh, kw] = weight.dims();
    if w_in != c_in || kh != g.kernel || kw != g.kernel || g.stride == 0 {
        return None;
    }
    if h + 2 * g.padding < g.kernel || w + 2 * g.padding < g.kernel {
        return None;
    }
    if x.dtype() == DType::BF16 {
        return conv2d_bf16(x, weight, bias, g, budget);
    }
    if x.dtype() == DType::F16 {
        // The f32 kernel on widened copies (f32 sums, as PyTorch's CPU kernels; burn's f16
        // convolution would sum in f16), rounded back once.
        let f = DType::F32;
        let (xw, ww, bw) = (
            x.clone().cast(f),
            weight.clone().cast(f),
            bias.clone().cast(f),
        );
        return conv2d_banded(&xw, &ww, &bw, g, budget).map(|y| y.cast(DType::F16));
    }
    let (xf, wf, bf) = (flex_f32(x)?, flex_f32(weight)?, flex_f32(bias)?);
    let (xs, ws, bs) = (
        xf.storage::<f32>(),
        wf.storage::<f32>(),
        bf.storage::<f32>(),
    );
    let (oh, ow) = g.output(h, w);
    let k_len = c_in * g.kernel * g.kernel;
    if xs.len() < b * c_in * h * w || ws.len() < c_out * k_len || bs.len() < c_out {
        return None;
    }
    let mut out = bias_filled(bs, b, c_out, oh * ow);
    let p = oh * ow;
    SCRATCH.with(|cell| {
        // A re-entrant call (a rayon worker stealing another convolution) gets its own buffer.
        let mut own = Vec::new();
        let mut borrowed = cell.try_borrow_mut().ok();
        let scratch: &mut Vec<f32> = match borrowed.as_deref_mut() {
            Some(s) => s,
            None => &mut own,
        };
        let dims = (b, c_in, h, w);
        for_each_band(
            xs,
            0.0,
            dims,
            c_out,
            g,
            budget,
            scratch,
            &mut out,
            |dst, col, n| gemm_acc(dst, p, ws, col, c_out, k_len, n),
        );
    });
    Some(Tensor::from_data(
        TensorData::new(out, [b, c_out, oh, ow]),
        &device,
    ))
}

/// The bf16 case of [`conv2d_banded`]: the same bands, each im2col band packed for
/// [`cpu_gemm_bf16`](super::cpu_gemm_bf16) (f32 accumulation into the f32 bias-filled output),
/// rounded to bf16 once at the end. The bias may be bf16 or f32.
fn conv2d_bf16(
    x: &Tensor<4>,
    weight: &Tensor<4>,
    bias: &Tensor<1>,
    g: ConvGeometry,
    budget: usize,
) -> Option<Tensor<4>> {
    let device = x.device();
    let [b, c_in, h, w] = x.dims();
    let [c_out, _, _, _] = weight.dims();
    let (xf, wf) = (flex_bf16(x)?, flex_bf16(weight)?);
    let (xs, ws) = (xf.storage::<bf16>(), wf.storage::<bf16>());
    let bs = f32_values(bias)?;
    let (oh, ow) = g.output(h, w);
    let k_len = c_in * g.kernel * g.kernel;
    if xs.len() < b * c_in * h * w || ws.len() < c_out * k_len || bs.len() < c_out {
        return None;
    }
    let mut out = bias_filled(&bs, b, c_out, oh * ow);
    let p = oh * ow;
    SCRATCH_BF16.with(|cell| {
        let mut own = (Vec::new(), PackedB::default());
        let mut borrowed = cell.try_borrow_mut().ok();
        let (scratch, packed) = match borrowed.as_deref_mut() {
            Some(s) => (&mut s.0, &mut s.1),
            None => (&mut own.0, &mut own.1),
        };
        let dims = (b, c_in, h, w);
        for_each_band(
            xs,
            bf16::ZERO,
            dims,
            c_out,
            g,
            budget,
            scratch,
            &mut out,
            |dst, col, n| {
                packed.pack(col, k_len, n, n);
                gemm_bf16(c_out, ws, k_len, packed, dst, p);
            },
        );
    });
    let mut half = vec![bf16::ZERO; out.len()];
    to_bf16(&out, &mut half);
    Some(Tensor::from_data(
        TensorData::new(half, [b, c_out, oh, ow]),
        (&device, DType::BF16),
    ))
}

impl ConvGeometry {
    /// The output size `(H', W')` on an `h × w` input (the caller checked the kernel fits).
    fn output(&self, h: usize, w: usize) -> (usize, usize) {
        (
            (h + 2 * self.padding - self.kernel) / self.stride + 1,
            (w + 2 * self.padding - self.kernel) / self.stride + 1,
        )
    }
}

/// `[b, c_out, p]` f32, every row filled with its channel's bias: the gemms accumulate into it.
fn bias_filled(bias: &[f32], b: usize, c_out: usize, p: usize) -> Vec<f32> {
    let mut out = vec![0f32; b * c_out * p];
    out.par_chunks_mut(p.max(1))
        .enumerate()
        .for_each(|(i, row)| row.fill(bias[i % c_out]));
    out
}

/// The band loop both dtypes share: for each batch row of `xs` (`[b, c_in, h, w]`), the
/// weight times its im2col matrix, built a band of output rows at a time in `scratch` so it
/// stays ≤ `budget` elements (a 128-channel 3×3 layer at 512² would otherwise need 1.2 GB);
/// a 1×1 stride-1 convolution uses the input itself. `product(dst, col, n)` accumulates
/// `W · col` (`col` `[c_in·k·k, n]`) into `dst`, whose rows are `H'·W'` apart.
#[allow(clippy::too_many_arguments)]
fn for_each_band<T: Copy + Send + Sync>(
    xs: &[T],
    zero: T,
    (b, c_in, h, w): (usize, usize, usize, usize),
    c_out: usize,
    g: ConvGeometry,
    budget: usize,
    scratch: &mut Vec<T>,
    out: &mut [f32],
    mut product: impl FnMut(&mut [f32], &[T], usize),
) {
    let (oh, ow) = g.output(h, w);
    let p = oh * ow;
    let k_len = c_in * g.kernel * g.kernel;
    let direct = g.kernel == 1 && g.stride == 1 && g.padding == 0;
    let band = (budget / (k_len * ow).max(1)).clamp(1, oh);
    if !direct && scratch.len() < k_len * band * ow {
        *scratch = vec![zero; k_len * band * ow];
    }
    for bi in 0..b {
        let xb = &xs[bi * c_in * h * w..(bi + 1) * c_in * h * w];
        let out_b = &mut out[bi * c_out * p..(bi + 1) * c_out * p];
        if direct {
            product(out_b, xb, p);
            continue;
        }
        for oy0 in (0..oh).step_by(band) {
            let oy1 = (oy0 + band).min(oh);
            let n = (oy1 - oy0) * ow;
            let col = &mut scratch[..k_len * n];
            im2col(xb, col, zero, (c_in, h, w), (oy0, oy1, ow), g);
            product(&mut out_b[oy0 * ow..], col, n);
        }
    }
}

/// `dst[m, n] += lhs[m, k] · rhs[k, n]`, row-major, `dst`'s rows `dst_rs` apart.
fn gemm_acc(
    dst: &mut [f32],
    dst_rs: usize,
    lhs: &[f32],
    rhs: &[f32],
    m: usize,
    k: usize,
    n: usize,
) {
    if m == 0
        || n == 0
        || dst.len() < (m - 1) * dst_rs + n
        || lhs.len() < m * k
        || rhs.len() < k * n
    {
        return;
    }
    let par = if m * n * k >= 128 * 128 * 128 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the slices hold the (m−1)·dst_rs + n, m·k and k·n elements the strides address
    // (checked above), and dst does not alias lhs or rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            true,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
}

/// Fill `col[(c·k + i)·k + j, (oy − oy0)·ow + ox] = x[c, oy·s + i − pad, ox·s + j − pad]`
/// (0 outside the input) for the output rows `oy0..oy1`.
fn im2col<T: Copy + Send + Sync>(
    x: &[T],
    col: &mut [T],
    zero: T,
    (c_in, h, w): (usize, usize, usize),
    (oy0, oy1, ow): (usize, usize, usize),
    g: ConvGeometry,
) {
    let (k, s, pad) = (g.kernel, g.stride, g.padding);
    let p = (oy1 - oy0) * ow;
    col[..c_in * k * k * p]
        .par_chunks_mut(p)
        .enumerate()
        .for_each(|(r, row)| {
            let c = r / (k * k);
            let (i, j) = ((r / k) % k, r % k);
            let plane = &x[c * h * w..(c + 1) * h * w];
            // Output columns whose input column ox·s + j − pad lies inside [0, w).
            let ox_lo = pad.saturating_sub(j).div_ceil(s);
            let ox_hi = if w + pad > j {
                ((w + pad - j - 1) / s + 1).min(ow)
            } else {
                0
            };
            for oy in oy0..oy1 {
                let dst = &mut row[(oy - oy0) * ow..(oy - oy0 + 1) * ow];
                let iy = (oy * s + i) as isize - pad as isize;
                if iy < 0 || iy >= h as isize || ox_lo >= ox_hi {
                    dst.fill(zero);
                    continue;
                }
                let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                dst[..ox_lo].fill(zero);
                dst[ox_hi..].fill(zero);
                let ix0 = ox_lo * s + j - pad;
                if s == 1 {
                    dst[ox_lo..ox_hi].copy_from_slice(&src[ix0..ix0 + (ox_hi - ox_lo)]);
                } else {
                    for (d, ox) in dst[ox_lo..ox_hi].iter_mut().zip(0..) {
                        *d = src[ix0 + ox * s];
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{DType, Distribution};

    fn burn_conv(x: &Tensor<4>, w: &Tensor<4>, b: &Tensor<1>, g: ConvGeometry) -> Tensor<4> {
        burn::tensor::module::conv2d(
            x.clone(),
            w.clone(),
            Some(b.clone()),
            ConvOptions::new([g.stride; 2], [g.padding; 2], [1, 1], 1),
        )
    }

    #[test]
    fn matches_burn_convolution() {
        let dev = Device::flex();
        let r = |s: [usize; 4]| Tensor::<4>::random(s, Distribution::Normal(0.0, 1.0), &dev);
        // (batch, in, out, h, w, kernel, stride, padding): SD's 3×3/1, downsampling 3×3/2,
        // 1×1 shortcuts, odd sizes, padding 0, a kernel wider than the padded row's start.
        let cases = [
            (2, 5, 7, 9, 11, 3, 1, 1),
            (2, 6, 4, 8, 8, 3, 2, 1),
            (1, 3, 5, 7, 9, 3, 2, 1),
            (2, 8, 3, 6, 5, 1, 1, 0),
            (1, 4, 4, 5, 5, 3, 1, 0),
            (1, 2, 3, 4, 6, 5, 2, 2),
            (3, 16, 32, 16, 16, 3, 1, 1),
        ];
        for (b, ci, co, h, w, k, s, pad) in cases {
            let g = ConvGeometry {
                kernel: k,
                stride: s,
                padding: pad,
            };
            let x = r([b, ci, h, w]);
            let wt = r([co, ci, k, k]);
            let bias = Tensor::<1>::random([co], Distribution::Normal(0.0, 1.0), &dev);
            let ours = conv2d(&x, &wt, &bias, g).expect("flex f32 takes the kernel");
            let theirs = burn_conv(&x, &wt, &bias, g);
            // The same in bands of one and of three output rows.
            for budget in [1, 3 * ci * k * k * w] {
                let banded = conv2d_banded(&x, &wt, &bias, g, budget).expect("banded");
                let d: f32 = (banded - theirs.clone()).abs().max().into_scalar();
                assert!(d < 1e-4, "banded {budget}: max diff {d}");
            }
            assert_eq!(
                ours.dims(),
                theirs.dims(),
                "case {:?}",
                (b, ci, co, h, w, k, s, pad)
            );
            let d: f32 = (ours - theirs).abs().max().into_scalar();
            assert!(
                d < 1e-4,
                "case {:?}: max diff {d}",
                (b, ci, co, h, w, k, s, pad)
            );
        }
    }

    #[test]
    fn strided_input_is_made_contiguous() {
        let dev = Device::flex();
        let x =
            Tensor::<4>::random([2, 4, 6, 5], Distribution::Normal(0.0, 1.0), &dev).swap_dims(2, 3);
        let w = Tensor::<4>::random([3, 4, 3, 3], Distribution::Normal(0.0, 1.0), &dev);
        let b = Tensor::<1>::random([3], Distribution::Normal(0.0, 1.0), &dev);
        let g = ConvGeometry {
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        let ours = conv2d(&x, &w, &b, g).expect("flex f32 takes the kernel");
        let d: f32 = (ours - burn_conv(&x, &w, &b, g)).abs().max().into_scalar();
        assert!(d < 1e-4, "max diff {d}");
    }

    #[test]
    fn bf16_matches_f32_of_the_same_values() {
        let dev = Device::flex();
        let (bf, f) = (DType::BF16, DType::F32);
        let r = |s: [usize; 4]| Tensor::<4>::random(s, Distribution::Normal(0.0, 1.0), &dev);
        // 3×3/1, 3×3/2, 1×1, an odd k (3 channels · 9), banded.
        for (b, ci, co, h, w, k, s, pad) in [
            (2, 6, 7, 9, 11, 3, 1, 1),
            (1, 4, 5, 8, 8, 3, 2, 1),
            (2, 8, 40, 6, 5, 1, 1, 0),
            (1, 3, 4, 7, 7, 3, 1, 1),
        ] {
            let g = ConvGeometry {
                kernel: k,
                stride: s,
                padding: pad,
            };
            let x = r([b, ci, h, w]).cast(bf);
            let wt = r([co, ci, k, k]).cast(bf);
            let bias = Tensor::<1>::random([co], Distribution::Normal(0.0, 1.0), &dev).cast(bf);
            let want = burn_conv(
                &x.clone().cast(f),
                &wt.clone().cast(f),
                &bias.clone().cast(f),
                g,
            );
            let scale: f32 = want.clone().abs().max().into_scalar();
            for budget in [COL_BUDGET, 1] {
                let ours = conv2d_banded(&x, &wt, &bias, g, budget).expect("flex bf16");
                assert_eq!(ours.dtype(), bf);
                let d: f32 = (ours.cast(f) - want.clone()).abs().max().into_scalar();
                assert!(
                    d <= scale / 256.0 + 1e-3,
                    "case {:?} budget {budget}: max diff {d} (scale {scale})",
                    (b, ci, co, h, w, k, s, pad)
                );
            }
        }
    }

    #[test]
    fn other_dtypes_use_burn() {
        let dev = Device::flex();
        let x = Tensor::<4>::zeros([1, 2, 4, 4], &dev).cast(DType::F64);
        let w = Tensor::<4>::zeros([2, 2, 3, 3], &dev).cast(DType::F64);
        let b = Tensor::<1>::zeros([2], &dev).cast(DType::F64);
        let g = ConvGeometry {
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        assert!(conv2d(&x, &w, &b, g).is_none());
    }
}
