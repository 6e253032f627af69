//! `x Wᵀ + b` for the flex CPU backend (f32 and bf16), used by [`Linear`](super::Linear).
//!
//! burn's `linear` broadcasts the weight over the leading dimensions (a batched matmul whose
//! threads split the batch, not the rows) and adds the bias in a second pass over the output.
//! This kernel flattens the leading dimensions into one `[rows, in]` matrix and runs a single
//! multi-threaded `gemm` into an output pre-filled with the bias. In bf16 the product is
//! [`cpu_gemm_bf16`](super::cpu_gemm_bf16)'s (f32 accumulation, AVX512-BF16 when present), the
//! bias added in f32 and the result rounded to bf16 once.

use std::cell::RefCell;

use burn::tensor::{DType, Device, Tensor, TensorData};
use half::bf16;
use rayon::prelude::*;

use super::cpu_gemm_bf16::{PackedB, gemm as gemm_bf16, to_bf16};
use super::flex::{f32_values, flex_bf16, flex_f32};

thread_local! {
    /// The packed weight of the last bf16 call, its storage reused between calls.
    static PACKED: RefCell<PackedB> = RefCell::new(PackedB::default());
}

/// `x · weight + bias` with layret's kernel, or `None` when it does not apply (not flex, not
/// f32, bf16 or f16): the caller then uses burn's `linear`.
///
/// # Shapes
/// `x` `[..., in]`, `weight` `[in, out]`, `bias` `[out]` → `[..., out]`.
pub(crate) fn linear<const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
) -> Option<Tensor<D>> {
    let device = x.device();
    if device != Device::flex() || D == 0 {
        return None;
    }
    let dims = x.dims();
    let [d_in, d_out] = weight.dims();
    if dims[D - 1] != d_in {
        return None;
    }
    let rows: usize = dims[..D - 1].iter().product();
    if x.dtype() == DType::BF16 {
        return linear_bf16(x, weight, bias, rows);
    }
    if x.dtype() == DType::F16 {
        // The f32 kernel on widened copies (f32 sums, as PyTorch's CPU kernels; burn's f16
        // matmul would sum in f16), rounded back once.
        let f = DType::F32;
        let b = bias.map(|b| b.clone().cast(f));
        return linear(&x.clone().cast(f), &weight.clone().cast(f), b.as_ref())
            .map(|y| y.cast(DType::F16));
    }
    let xf = flex_f32(x)?;
    let wf = flex_f32(weight)?;
    let bf = match bias {
        Some(b) => Some(flex_f32(b)?),
        None => None,
    };
    let (xs, ws) = (xf.storage::<f32>(), wf.storage::<f32>());
    if xs.len() < rows * d_in || ws.len() < d_in * d_out {
        return None;
    }
    let mut out = vec![0f32; rows * d_out];
    let read_dst = match &bf {
        Some(bf) => {
            let bs = bf.storage::<f32>();
            if bs.len() < d_out {
                return None;
            }
            out.par_chunks_mut(d_out)
                .for_each(|row| row.copy_from_slice(&bs[..d_out]));
            true
        }
        None => false,
    };
    let par = if rows * d_in * d_out >= 64 * 64 * 64 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `out` holds rows·out, `xs` rows·in and `ws` in·out elements (checked above); the
    // strides describe row-major matrices inside them and `out` aliases neither input.
    unsafe {
        gemm::gemm(
            rows,
            d_out,
            d_in,
            out.as_mut_ptr(),
            1,
            d_out as isize,
            read_dst,
            xs.as_ptr(),
            1,
            d_in as isize,
            ws.as_ptr(),
            1,
            d_out as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        );
    }
    let mut shape = dims;
    shape[D - 1] = d_out;
    Some(Tensor::from_data(TensorData::new(out, shape), &device))
}

/// The bf16 case of [`linear`] (`x` and `weight` bf16; the bias bf16 or f32).
fn linear_bf16<const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    rows: usize,
) -> Option<Tensor<D>> {
    let [d_in, d_out] = weight.dims();
    let xf = flex_bf16(x)?;
    let wf = flex_bf16(weight)?;
    let (xs, ws) = (xf.storage::<bf16>(), wf.storage::<bf16>());
    if xs.len() < rows * d_in || ws.len() < d_in * d_out {
        return None;
    }
    let mut out = vec![0f32; rows * d_out];
    if let Some(b) = bias {
        let b = f32_values(b)?;
        if b.len() < d_out {
            return None;
        }
        out.par_chunks_mut(d_out)
            .for_each(|row| row.copy_from_slice(&b[..d_out]));
    }
    PACKED.with(|cell| {
        let mut own = PackedB::default();
        let mut borrowed = cell.try_borrow_mut().ok();
        let packed = borrowed.as_deref_mut().unwrap_or(&mut own);
        packed.pack(ws, d_in, d_out, d_out);
        gemm_bf16(rows, xs, d_in, packed, &mut out, d_out);
    });
    let mut half = vec![bf16::ZERO; out.len()];
    to_bf16(&out, &mut half);
    let mut shape = x.dims();
    shape[D - 1] = d_out;
    Some(Tensor::from_data(
        TensorData::new(half, shape),
        (&x.device(), DType::BF16),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn matches_burn_linear() {
        let dev = Device::flex();
        let n = |s: [usize; 3]| Tensor::<3>::random(s, Distribution::Normal(0.0, 1.0), &dev);
        for (b, l, i, o, with_bias) in [
            (2, 77, 768, 320, false),
            (2, 64, 40, 96, true),
            (1, 3, 5, 7, true),
        ] {
            let x = n([b, l, i]);
            let w = Tensor::<2>::random([i, o], Distribution::Normal(0.0, 1.0), &dev);
            let bias = Tensor::<1>::random([o], Distribution::Normal(0.0, 1.0), &dev);
            let bias = with_bias.then_some(bias);
            let ours = linear(&x, &w, bias.as_ref()).expect("flex f32 takes the kernel");
            let theirs = burn::tensor::module::linear(x.clone(), w.clone(), bias.clone());
            assert_eq!(ours.dims(), theirs.dims());
            let d: f32 = (ours - theirs).abs().max().into_scalar();
            assert!(d < 1e-4, "{:?}: max diff {d}", (b, l, i, o, with_bias));
        }
        // A strided input (a transposed view) is made contiguous first.
        let x = n([2, 6, 4]).swap_dims(1, 2);
        let w = Tensor::<2>::random([6, 3], Distribution::Normal(0.0, 1.0), &dev);
        let ours = linear(&x, &w, None).expect("flex f32 takes the kernel");
        let d: f32 = (ours - x.matmul(w.unsqueeze())).abs().max().into_scalar();
        assert!(d < 1e-4, "strided: max diff {d}");
    }

    #[test]
    fn bf16_matches_f32_of_the_same_values() {
        let dev = Device::flex();
        let bf = DType::BF16;
        for (b, l, i, o) in [(2, 77, 768, 320), (1, 5, 9, 40), (2, 64, 40, 96)] {
            // bf16 values, and the same values widened: the products are exact either way.
            let x = Tensor::<3>::random([b, l, i], Distribution::Normal(0.0, 1.0), &dev).cast(bf);
            let w = Tensor::<2>::random([i, o], Distribution::Normal(0.0, 1.0), &dev).cast(bf);
            let bias = Tensor::<1>::random([o], Distribution::Normal(0.0, 1.0), &dev).cast(bf);
            let ours = linear(&x, &w, Some(&bias)).expect("flex bf16 takes the kernel");
            assert_eq!(ours.dtype(), bf);
            let f = DType::F32;
            let want = burn::tensor::module::linear(x.cast(f), w.cast(f), Some(bias.cast(f)));
            let ours = ours.cast(f);
            let scale: f32 = want.clone().abs().max().into_scalar();
            let d: f32 = (ours - want).abs().max().into_scalar();
            // One bf16 rounding of the output (2⁻⁸ relative) plus f32 summation.
            assert!(
                d <= scale / 256.0 + 1e-3,
                "{:?}: max diff {d} (scale {scale})",
                (b, l, i, o)
            );
        }
    }
}
