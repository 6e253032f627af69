//! A tiled, online-softmax ("flash") attention kernel for the flex CPU backend.
//!
//! burn-flex's own kernel calls a scalar `exp` per score and rescales the whole output per
//! 64-key tile; at SD 1.5's 64×64 self-attention (4096 tokens) that is most of its time. This
//! kernel tiles queries (256) and keys (256: a 256 KB score block that stays in L2), uses
//! burn's `gemm` for the two block products, and a vectorized exponential (AVX2+FMA when the
//! CPU has it). It reads q/k/v through their strides, so the UNet's head-split views need no
//! copy. Results agree with burn's attention to ~1e-6. Other backends and dtypes use burn's
//! kernel.

use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Device, Tensor, TensorData};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::simd::avx2;
use super::simd::exp_approx;

const BQ: usize = 256;
const BK: usize = 256;
/// Below this many scores per head, burn's kernel (no host round trip) is used.
const MIN_SCORES: usize = 64 * 1024;

/// `softmax(q kᵀ/√d) v`, masking keys where `exclude[b, j]` is true (a row with every key
/// excluded gives zeros).
///
/// # Shapes
/// `q` `[B, H, Lq, d]`, `k` `[B, H, Lk, d]`, `v` `[B, H, Lk, dv]`, `exclude` `[B, Lk]` →
/// `[B, H, Lq, dv]`.
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    exclude: Option<Tensor<2, Bool>>,
) -> Tensor<4> {
    let [b, h, lq, d] = q.dims();
    let [_, _, lk, dv] = v.dims();
    let device = q.device();
    // Long key sequences only: with few keys (cross-attention's 77) burn's kernel is faster.
    let fast = device == Device::flex()
        && q.dtype() == DType::F32
        && lk >= BK
        && lq * lk >= MIN_SCORES
        && d > 0
        && dv > 0;
    if !fast {
        let mask = exclude.map(|m| m.reshape([b, 1, 1, lk]).expand([b, h, lq, lk]));
        return burn_attention(q, k, v, mask, None, AttentionModuleOptions::default());
    }
    // The operands are read in place through their strides (the `[B, L, H, d] → [B, H, L, d]`
    // views the UNet passes need no copy).
    let (Some(qf), Some(kf), Some(vf)) = (strided(&q), strided(&k), strided(&v)) else {
        let mask = exclude.map(|m| m.reshape([b, 1, 1, lk]).expand([b, h, lq, lk]));
        return burn_attention(q, k, v, mask, None, AttentionModuleOptions::default());
    };
    let excl: Option<Vec<bool>> = exclude.and_then(|m| m.into_data().try_to_vec::<bool>().ok());
    let scale = 1.0 / (d as f32).sqrt();
    // Written as `[B, Lq, H, dv]` and returned as a `[B, H, Lq, dv]` view, so the usual
    // `swap_dims(1, 2).reshape([B, Lq, H·dv])` that follows is free.
    let mut out = vec![0f32; b * lq * h * dv];
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..b * h).into_par_iter().for_each(|bh| {
        let (bi, hi) = (bh / h, bh % h);
        let ex = excl.as_ref().map(|e| &e[bi * lk..(bi + 1) * lk]);
        // SAFETY: each (b, h) writes only its own rows `((bi·lq + i)·h + hi)·dv ..+dv`, all
        // inside `out`; the views stay inside their tensors' storage (checked by `strided`).
        unsafe {
            head(
                qf.matrix(bi, hi),
                kf.matrix(bi, hi),
                vf.matrix(bi, hi),
                out_ptr.get().add((bi * lq * h + hi) * dv),
                (h * dv) as isize,
                (lq, lk, d, dv),
                scale,
                ex,
            );
        }
    });
    Tensor::<4>::from_data(TensorData::new(out, [b, lq, h, dv]), &device).swap_dims(1, 2)
}

/// A raw pointer that may cross into rayon tasks (each task writes disjoint rows).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only for disjoint writes from parallel tasks, while the owning Vec outlives them.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A flex f32 tensor `[B, H, L, d]` read through its strides.
struct Strided {
    t: burn_flex::FlexTensor,
    offset: isize,
    strides: [isize; 4],
}

/// One `[L, d]` matrix of a [`Strided`] tensor.
#[derive(Clone, Copy)]
struct MatView {
    ptr: *const f32,
    /// Row stride (elements).
    rs: isize,
    /// Column stride (elements).
    cs: isize,
}

impl Strided {
    fn matrix(&self, b: usize, h: usize) -> MatView {
        let off = self.offset + b as isize * self.strides[0] + h as isize * self.strides[1];
        MatView {
            // SAFETY: `strided` checked that every element of the view lies inside the storage.
            ptr: unsafe { self.t.storage::<f32>().as_ptr().offset(off) },
            rs: self.strides[2],
            cs: self.strides[3],
        }
    }
}

/// The flex primitive of `t` with its strides, when they are non-negative and every element
/// lies inside the storage (otherwise a contiguous copy).
fn strided(t: &Tensor<4>) -> Option<Strided> {
    let p = t.clone().try_into_primitive::<burn_flex::Flex>().ok()?;
    let dims = t.dims();
    let fits = |p: &burn_flex::FlexTensor| {
        let st = p.layout().strides();
        let len = p.storage::<f32>().len();
        st.len() == 4
            && st.iter().all(|&s| s >= 0)
            && (dims.contains(&0)
                || p.layout().start_offset()
                    + dims
                        .iter()
                        .zip(st)
                        .map(|(&n, &s)| (n - 1) * s as usize)
                        .sum::<usize>()
                    < len)
    };
    let p = if fits(&p) { p } else { p.to_contiguous() };
    if !fits(&p) {
        return None;
    }
    let st = p.layout().strides();
    let strides = [st[0], st[1], st[2], st[3]];
    Some(Strided {
        offset: p.layout().start_offset() as isize,
        strides,
        t: p,
    })
}

/// One (batch, head): `o[lq, dv] = softmax(q kᵀ·scale) v`, `o`'s rows `o_rs` apart.
///
/// # Safety
/// The views must address `[lq, d]`, `[lk, d]`, `[lk, dv]` valid elements and `o` `lq` rows
/// of `dv` writable elements that no other thread touches.
#[allow(clippy::too_many_arguments)]
unsafe fn head(
    q: MatView,
    k: MatView,
    v: MatView,
    o: *mut f32,
    o_rs: isize,
    (lq, lk, d, dv): (usize, usize, usize, usize),
    scale: f32,
    ex: Option<&[bool]>,
) {
    let mut s = vec![0f32; BQ * BK];
    let mut acc = vec![0f32; BQ * dv];
    let mut m = [0f32; BQ];
    let mut l = [0f32; BQ];
    for q0 in (0..lq).step_by(BQ) {
        let bq = BQ.min(lq - q0);
        m[..bq].fill(f32::NEG_INFINITY);
        l[..bq].fill(0.0);
        acc[..bq * dv].fill(0.0);
        for k0 in (0..lk).step_by(BK) {
            let bk = BK.min(lk - k0);
            // s[bq, bk] = scale · q[q0.., :] · k[k0.., :]ᵀ
            // SAFETY: the pointers and strides describe in-bounds row-major blocks.
            unsafe {
                gemm::gemm(
                    bq,
                    bk,
                    d,
                    s.as_mut_ptr(),
                    1,
                    bk as isize,
                    false,
                    q.ptr.offset(q0 as isize * q.rs),
                    q.cs,
                    q.rs,
                    k.ptr.offset(k0 as isize * k.rs),
                    k.rs,
                    k.cs,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            let blk_ex = ex.map(|e| &e[k0..k0 + bk]);
            softmax_block(
                &mut s[..bq * bk],
                bk,
                &mut m[..bq],
                &mut l[..bq],
                &mut acc[..bq * dv],
                dv,
                blk_ex,
            );
            // acc[bq, dv] += p[bq, bk] · v[k0.., :]
            // SAFETY: as above.
            unsafe {
                gemm::gemm(
                    bq,
                    dv,
                    bk,
                    acc.as_mut_ptr(),
                    1,
                    dv as isize,
                    true,
                    s.as_ptr(),
                    1,
                    bk as isize,
                    v.ptr.offset(k0 as isize * v.rs),
                    v.cs,
                    v.rs,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
        for i in 0..bq {
            let inv = if l[i] > 0.0 { 1.0 / l[i] } else { 0.0 };
            // SAFETY: row q0 + i of `o` has dv writable elements (the caller's contract).
            let dst =
                unsafe { std::slice::from_raw_parts_mut(o.offset((q0 + i) as isize * o_rs), dv) };
            for (x, a) in dst.iter_mut().zip(&acc[i * dv..(i + 1) * dv]) {
                *x = a * inv;
            }
        }
    }
}

/// Online-softmax update of one score block (rows of length `bk`): exponentiate in place
/// against the running max, update the running sums and rescale the accumulator rows.
fn softmax_block(
    s: &mut [f32],
    bk: usize,
    m: &mut [f32],
    l: &mut [f32],
    acc: &mut [f32],
    dv: usize,
    ex: Option<&[bool]>,
) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        unsafe { softmax_block_avx2(s, bk, m, l, acc, dv, ex) };
        return;
    }
    softmax_block_generic(s, bk, m, l, acc, dv, ex);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_block_avx2(
    s: &mut [f32],
    bk: usize,
    m: &mut [f32],
    l: &mut [f32],
    acc: &mut [f32],
    dv: usize,
    ex: Option<&[bool]>,
) {
    if ex.is_some() {
        // Masked blocks (attention swapping) are rarer; the portable loop handles them.
        softmax_block_generic(s, bk, m, l, acc, dv, ex);
        return;
    }
    for (i, row) in s.chunks_exact_mut(bk).enumerate() {
        // SAFETY: the caller checked AVX2 and FMA.
        let tile_max = unsafe { avx2::max(row) };
        let new_max = if m[i] > tile_max { m[i] } else { tile_max };
        if new_max == f32::NEG_INFINITY {
            row.fill(0.0);
            continue;
        }
        // SAFETY: as above.
        let sum = unsafe { avx2::exp_sub_sum(row, new_max) };
        let corr = if m[i] == f32::NEG_INFINITY {
            0.0
        } else {
            exp_approx(m[i] - new_max)
        };
        for a in &mut acc[i * dv..(i + 1) * dv] {
            *a *= corr;
        }
        l[i] = l[i] * corr + sum;
        m[i] = new_max;
    }
}

#[inline(always)]
fn softmax_block_generic(
    s: &mut [f32],
    bk: usize,
    m: &mut [f32],
    l: &mut [f32],
    acc: &mut [f32],
    dv: usize,
    ex: Option<&[bool]>,
) {
    for (i, row) in s.chunks_exact_mut(bk).enumerate() {
        if let Some(ex) = ex {
            for (x, &e) in row.iter_mut().zip(ex) {
                if e {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        let tile_max = max8(row);
        let new_max = if m[i] > tile_max { m[i] } else { tile_max };
        if new_max == f32::NEG_INFINITY {
            // Every key so far excluded: contribute nothing.
            row.fill(0.0);
            continue;
        }
        let sum = exp_sub_sum(row, new_max);
        if let Some(ex) = ex {
            // exp(−inf − max) is a tiny positive number in the fast exp; make it exactly 0.
            let mut removed = 0.0;
            for (x, &e) in row.iter_mut().zip(ex) {
                if e {
                    removed += *x;
                    *x = 0.0;
                }
            }
            l[i] -= removed;
        }
        let corr = if m[i] == f32::NEG_INFINITY {
            0.0
        } else {
            exp_approx(m[i] - new_max)
        };
        for a in &mut acc[i * dv..(i + 1) * dv] {
            *a *= corr;
        }
        l[i] = l[i] * corr + sum;
        m[i] = new_max;
    }
}

#[inline(always)]
fn max8(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..8 {
            lanes[j] = if c[j] > lanes[j] { c[j] } else { lanes[j] };
        }
    }
    let mut best = f32::NEG_INFINITY;
    for v in lanes.iter().chain(rest) {
        best = if *v > best { *v } else { best };
    }
    best
}

/// `x ← exp(x − shift)` in place; returns the sum.
#[inline(always)]
fn exp_sub_sum(x: &mut [f32], shift: f32) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        for j in 0..8 {
            let e = exp_approx(c[j] - shift);
            c[j] = e;
            lanes[j] += e;
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp_approx(*v - shift);
        sum += *v;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    #[test]
    fn reads_head_split_views_in_place() {
        // The UNet's layout: `[B, L, H·d]` projections viewed as `[B, H, L, d]`.
        let dev = Device::flex();
        let (b, h, lq, lk, d) = (2, 3, 300, 520, 40);
        let view = |l: usize| {
            Tensor::<4>::random([b, l, h, d], Distribution::Normal(0.0, 1.0), &dev).swap_dims(1, 2)
        };
        let (q, k, v) = (view(lq), view(lk), view(lk));
        let want = burn_attention(
            q.clone(),
            k.clone(),
            v.clone(),
            None,
            None,
            AttentionModuleOptions::default(),
        );
        let got = attention(q, k, v, None);
        assert_eq!(got.dims(), [b, h, lq, d]);
        assert!(max_diff(got.clone(), want.clone()) < 1e-5);
        // The `[B, Lq, H·d]` merge that follows gives the same rows.
        let merged = |t: Tensor<4>| t.swap_dims(1, 2).reshape([b, lq, h * d]);
        let diff: f32 = (merged(got) - merged(want)).abs().max().into_scalar();
        assert!(diff < 1e-5);
    }

    #[test]
    fn matches_burn_attention() {
        let dev = Device::flex();
        for (lq, lk, d) in [
            (300usize, 700usize, 40usize),
            (1024, 300, 64),
            (257, 1000, 8),
        ] {
            let q = Tensor::<4>::random([2, 3, lq, d], Distribution::Normal(0.0, 1.0), &dev);
            let k = Tensor::<4>::random([2, 3, lk, d], Distribution::Normal(0.0, 1.0), &dev);
            let v = Tensor::<4>::random([2, 3, lk, d], Distribution::Normal(0.0, 1.0), &dev);
            let want = burn_attention(
                q.clone(),
                k.clone(),
                v.clone(),
                None,
                None,
                AttentionModuleOptions::default(),
            );
            let got = attention(q.clone(), k.clone(), v.clone(), None);
            assert!(max_diff(got, want) < 1e-5);
            // Key masks: exclude every other key of batch 0, none of batch 1.
            let ex: Vec<bool> = (0..2 * lk).map(|i| i < lk && i % 2 == 0).collect();
            let ex = Tensor::<2, Bool>::from_data(TensorData::new(ex, [2, lk]), &dev);
            let mask = ex.clone().reshape([2, 1, 1, lk]).expand([2, 3, lq, lk]);
            let want = burn_attention(
                q.clone(),
                k.clone(),
                v.clone(),
                Some(mask),
                None,
                AttentionModuleOptions::default(),
            );
            let got = attention(q, k, v, Some(ex));
            assert!(max_diff(got, want) < 1e-5);
        }
    }
}
