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
use half::bf16;
use rayon::prelude::*;

use super::cpu_gemm_bf16::{Isa, PackedB, gemm_serial, gemm_serial_overwrite, to_bf16_serial};

#[cfg(target_arch = "x86_64")]
use super::simd::avx2;
use super::simd::exp_approx;

const BQ: usize = 256;
const BK: usize = 256;
/// Below this many scores per head, burn's kernel (no host round trip) is used.
const MIN_SCORES: usize = 64 * 1024;

/// What restricts or weights the keys of [`scaled_dot_product_attention`].
#[derive(Debug, Clone, Default)]
pub enum AttentionMask {
    /// Every key counts.
    #[default]
    None,
    /// `[B, Lk]`, true = key `j` is masked out for every head and query of batch row `b`.
    ExcludeKeys(Tensor<2, Bool>),
    /// Added to the scaled scores before the softmax, broadcast from `[B or 1, H or 1,
    /// Lq or 1, Lk]`; `−∞` masks a key out (FreeCustom-style weighting: `ln w`).
    Bias(Tensor<4>),
}

/// `softmax(q kᵀ/√d + bias) v` with keys masked out by `mask`; a query whose every key is
/// masked out gets zeros (on every backend).
///
/// On the flex CPU backend in f32 with long key sequences this is layret's tiled
/// online-softmax kernel (the UNet's head-split views read in place); elsewhere burn's
/// attention without a mask, and an explicit softmax with one (the mask broadcast, never
/// expanded per head).
///
/// # Shapes
/// `q` `[B, H, Lq, d]`, `k` `[B, H, Lk, d]`, `v` `[B, H, Lk, dv]` → `[B, H, Lq, dv]`.
pub fn scaled_dot_product_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: AttentionMask,
) -> Tensor<4> {
    let [b, h, lq, d] = q.dims();
    let [_, _, lk, dv] = v.dims();
    let device = q.device();
    let dtype = q.dtype();
    let long = lk >= BK && lq * lk >= MIN_SCORES && d > 0 && dv > 0;
    // bf16 on a CPU with AVX512-BF16: the products in bf16 (VDPBF16PS, f32 sums), the softmax
    // in f32 (below). Without it the f32 kernel on widened copies is faster.
    let bf16_kernel = device == Device::flex()
        && dtype == DType::BF16
        && long
        && Isa::detect() == Isa::Avx512Bf16;
    if matches!(dtype, DType::F16 | DType::BF16) && !bf16_kernel {
        let f = DType::F32;
        if device == Device::flex() {
            // The CPU kernel in f32 (scores, softmax and the value sum), fed widened copies
            // (O(L·d), against the O(Lq·Lk·d) work), rounded back once.
            return scaled_dot_product_attention(q.cast(f), k.cast(f), v.cast(f), mask).cast(dtype);
        }
        // Elsewhere the products stay in half precision and the softmax runs in f32.
        let bias = match mask {
            AttentionMask::None => Tensor::<4>::zeros([1, 1, 1, lk], (&device, f)),
            AttentionMask::ExcludeKeys(ex) => Tensor::<2>::zeros([b, lk], (&device, f))
                .mask_fill(ex, f32::NEG_INFINITY)
                .reshape([b, 1, 1, lk]),
            AttentionMask::Bias(bias) => bias,
        };
        return query_chunked(q, k, v, Some(bias));
    }
    // Long key sequences only: with few keys (cross-attention's 77) burn's kernel is faster.
    let fast = device == Device::flex() && (dtype == DType::F32 || bf16_kernel) && long;
    let strided_all = if fast {
        let view = |t: &Tensor<4>| {
            if bf16_kernel {
                strided::<bf16>(t)
            } else {
                strided::<f32>(t)
            }
        };
        match (view(&q), view(&k), view(&v)) {
            (Some(qf), Some(kf), Some(vf)) => Some((qf, kf, vf)),
            _ => None,
        }
    } else {
        None
    };
    let Some((qf, kf, vf)) = strided_all else {
        let bias = match mask {
            AttentionMask::None => None,
            AttentionMask::ExcludeKeys(ex) => Some(
                Tensor::<2>::zeros([b, lk], &device)
                    .mask_fill(ex, f32::NEG_INFINITY)
                    .reshape([b, 1, 1, lk]),
            ),
            AttentionMask::Bias(bias) => Some(bias),
        };
        return query_chunked(q, k, v, bias);
    };
    let (excl, bias): (Option<Vec<bool>>, Option<HostBias>) = match mask {
        AttentionMask::None => (None, None),
        AttentionMask::ExcludeKeys(m) => (m.into_data().try_to_vec::<bool>().ok(), None),
        AttentionMask::Bias(t) => (None, HostBias::new(t, [b, h, lq, lk])),
    };
    let scale = 1.0 / (d as f32).sqrt();
    // Written as `[B, Lq, H, dv]` and returned as a `[B, H, Lq, dv]` view, so the usual
    // `swap_dims(1, 2).reshape([B, Lq, H·dv])` that follows is free.
    let mut out = vec![0f32; b * lq * h * dv];
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..b * h).into_par_iter().for_each(|bh| {
        let (bi, hi) = (bh / h, bh % h);
        let ex = excl.as_ref().map(|e| &e[bi * lk..(bi + 1) * lk]);
        let bias = bias.as_ref().map(|bb| bb.head(bi, hi));
        let o = OutRows {
            // SAFETY: inside `out` (b·lq·h·dv elements).
            ptr: unsafe { out_ptr.get().add((bi * lq * h + hi) * dv) },
            stride: (h * dv) as isize,
        };
        if bf16_kernel {
            // SAFETY: as below; the views are bf16 (`strided::<bf16>`).
            unsafe {
                head_bf16(
                    [
                        qf.matrix_bf16(bi, hi),
                        kf.matrix_bf16(bi, hi),
                        vf.matrix_bf16(bi, hi),
                    ],
                    o,
                    (lq, lk, d, dv),
                    scale,
                    Keys { ex, bias },
                );
            }
            return;
        }
        // SAFETY: each (b, h) writes only its own rows `((bi·lq + i)·h + hi)·dv ..+dv`, all
        // inside `out`; the views stay inside their tensors' storage (checked by `strided`).
        unsafe {
            head(
                [qf.matrix(bi, hi), kf.matrix(bi, hi), vf.matrix(bi, hi)],
                o,
                (lq, lk, d, dv),
                scale,
                Keys { ex, bias },
            );
        }
    });
    let o = Tensor::<4>::from_data(TensorData::new(out, [b, lq, h, dv]), &device).swap_dims(1, 2);
    if bf16_kernel { o.cast(DType::BF16) } else { o }
}

/// Bytes of scores one attention call may hold at once off the fast path: burn's kernels (and
/// [`explicit_attention`]) write the `[B, H, Lq, Lk]` scores out, which at SD's 64² sites is
/// 1 GiB per CFG pair in f32 — over what GPUs bind in one buffer (wgpu's default is 128 MiB;
/// lavapipe refuses 1 GiB). Queries are independent rows of the softmax, so chunking them is
/// exact.
const MAX_SCORE_BYTES: usize = 64 << 20;

/// Attention in chunks of queries, each holding at most [`MAX_SCORE_BYTES`] of scores.
fn query_chunked(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, bias: Option<Tensor<4>>) -> Tensor<4> {
    query_chunked_by(q, k, v, bias, MAX_SCORE_BYTES)
}

/// [`query_chunked`] with the byte bound given.
fn query_chunked_by(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    bias: Option<Tensor<4>>,
    max_score_bytes: usize,
) -> Tensor<4> {
    let [b, h, lq, _] = q.dims();
    let lk = k.dims()[2];
    let per_row = (b * h * lk * 4).max(1);
    let rows = (max_score_bytes / per_row).clamp(1, lq.max(1));
    let one = |q: Tensor<4>, bias: Option<Tensor<4>>| match bias {
        None => burn_attention(
            q,
            k.clone(),
            v.clone(),
            None,
            None,
            AttentionModuleOptions::default(),
        ),
        Some(bias) => explicit_attention(q, k.clone(), v.clone(), bias),
    };
    if rows >= lq {
        return one(q, bias);
    }
    let mut parts = Vec::with_capacity(lq.div_ceil(rows));
    let mut start = 0;
    while start < lq {
        let end = (start + rows).min(lq);
        let qc = q.clone().narrow(2, start, end - start);
        // A bias with a query axis is cut with the queries; a broadcast one is shared.
        let bc = bias.as_ref().map(|t| {
            if t.dims()[2] == 1 {
                t.clone()
            } else {
                t.clone().narrow(2, start, end - start)
            }
        });
        parts.push(one(qc, bc));
        start = end;
    }
    Tensor::cat(parts, 2)
}

/// `softmax(q kᵀ/√d + bias) v` written out (any backend and dtype); a row whose every score
/// is `−∞` gives zeros. The scores and the softmax are f32 whatever the inputs' dtype; in
/// half precision the probabilities are rounded once before the product with `v`.
fn explicit_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, bias: Tensor<4>) -> Tensor<4> {
    let d = q.dims()[3];
    let dtype = v.dtype();
    let f = DType::F32;
    let s = q.matmul(k.swap_dims(2, 3)).cast(f) * (1.0 / (d as f64).sqrt()) + bias.cast(f);
    let m = s.clone().max_dim(3);
    // A row of only −∞ has max −∞: shift it by 0 instead, so every exp is 0.
    let m = m.clone().mask_fill(m.is_inf(), 0.0);
    let e = (s - m).exp();
    let l = e.clone().sum_dim(3);
    let l = l.clone().mask_fill(l.equal_elem(0.0), 1.0);
    if dtype == f {
        e.matmul(v) / l
    } else {
        (e / l).cast(dtype).matmul(v)
    }
}

/// An additive bias on the host, `[B, H, Lq, Lk]` with broadcast (stride 0) axes.
struct HostBias {
    data: Vec<f32>,
    /// Element strides of the b, h, q axes (0 where broadcast); keys are contiguous.
    strides: [usize; 3],
}

/// The bias rows of one (batch, head).
#[derive(Clone, Copy)]
struct HeadBias<'a> {
    data: &'a [f32],
    /// Stride between query rows (0 when broadcast).
    row_stride: usize,
}

impl HostBias {
    fn new(t: Tensor<4>, [b, h, lq, lk]: [usize; 4]) -> Option<Self> {
        let dims = t.dims();
        let fits = |got: usize, want: usize| got == want || got == 1;
        if dims[3] != lk || !fits(dims[0], b) || !fits(dims[1], h) || !fits(dims[2], lq) {
            return None;
        }
        let data = t.into_data().convert::<f32>().try_into_vec::<f32>().ok()?;
        let sq = if dims[2] == 1 { 0 } else { lk };
        let sh = if dims[1] == 1 { 0 } else { dims[2] * lk };
        let sb = if dims[0] == 1 {
            0
        } else {
            dims[1] * dims[2] * lk
        };
        Some(Self {
            data,
            strides: [sb, sh, sq],
        })
    }

    fn head(&self, b: usize, h: usize) -> HeadBias<'_> {
        let start = b * self.strides[0] + h * self.strides[1];
        HeadBias {
            data: &self.data[start..],
            row_stride: self.strides[2],
        }
    }
}

/// How the keys of one (batch, head) are restricted: excluded keys and/or an additive bias.
#[derive(Clone, Copy)]
struct Keys<'a> {
    ex: Option<&'a [bool]>,
    bias: Option<HeadBias<'a>>,
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

/// One `[L, d]` bf16 matrix of a [`Strided`] tensor.
#[derive(Clone, Copy)]
struct MatViewBf16 {
    ptr: *const bf16,
    rs: isize,
    cs: isize,
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

    fn matrix_bf16(&self, b: usize, h: usize) -> MatViewBf16 {
        let off = self.offset + b as isize * self.strides[0] + h as isize * self.strides[1];
        MatViewBf16 {
            // SAFETY: as `matrix`.
            ptr: unsafe { self.t.storage::<bf16>().as_ptr().offset(off) },
            rs: self.strides[2],
            cs: self.strides[3],
        }
    }
}

/// The flex primitive of `t` with its strides, when they are non-negative and every element
/// lies inside the storage (otherwise a contiguous copy).
fn strided<E: burn::tensor::Element + bytemuck::Pod>(t: &Tensor<4>) -> Option<Strided> {
    let p = t.clone().try_into_primitive::<burn_flex::Flex>().ok()?;
    if p.dtype() != E::dtype() {
        return None;
    }
    let dims = t.dims();
    let fits = |p: &burn_flex::FlexTensor| {
        let st = p.layout().strides();
        let len = p.storage::<E>().len();
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

/// Where one (batch, head) writes its output rows: `ptr` and the stride between rows.
struct OutRows {
    ptr: *mut f32,
    stride: isize,
}

/// The running state of an online softmax over query rows: max `m`, sum `l` and the
/// accumulator `acc` (`dv` per row).
struct Running<'a> {
    m: &'a mut [f32],
    l: &'a mut [f32],
    acc: &'a mut [f32],
    dv: usize,
}

/// One (batch, head): `o[lq, dv] = softmax(q kᵀ·scale + bias) v`.
///
/// # Safety
/// The views `[q, k, v]` must address `[lq, d]`, `[lk, d]`, `[lk, dv]` valid elements and
/// `o` `lq` rows of `dv` writable elements that no other thread touches.
unsafe fn head(
    [q, k, v]: [MatView; 3],
    o: OutRows,
    (lq, lk, d, dv): (usize, usize, usize, usize),
    scale: f32,
    keys: Keys,
) {
    let (o, o_rs) = (o.ptr, o.stride);
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
            let mut run = Running {
                m: &mut m[..bq],
                l: &mut l[..bq],
                acc: &mut acc[..bq * dv],
                dv,
            };
            keys_block(&mut s[..bq * bk], (q0, k0, bk), keys, &mut run);
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
        // SAFETY: rows q0..q0 + bq of `o` are this head's (the caller's contract).
        unsafe { write_normalized(o, o_rs, q0, &acc[..bq * dv], &l[..bq], dv) };
    }
}

/// [`head`] for bf16 q/k/v: both block products in bf16 with f32 sums
/// ([`cpu_gemm_bf16`](super::cpu_gemm_bf16), on this thread), the scores, the online softmax
/// and the accumulator in f32; the probabilities rounded to bf16 once for the value product.
///
/// # Safety
/// As [`head`].
unsafe fn head_bf16(
    [q, k, v]: [MatViewBf16; 3],
    o: OutRows,
    (lq, lk, d, dv): (usize, usize, usize, usize),
    scale: f32,
    keys: Keys,
) {
    let (o, o_rs) = (o.ptr, o.stride);
    let mut s = vec![0f32; BQ * BK];
    let mut p = vec![bf16::ZERO; BQ * BK];
    let mut qa = vec![bf16::ZERO; BQ * d];
    let mut kb = vec![bf16::ZERO; BK * d];
    let mut vb = vec![bf16::ZERO; BK * dv];
    let mut acc = vec![0f32; BQ * dv];
    let (mut kp, mut vp) = (PackedB::default(), PackedB::default());
    let mut m = [0f32; BQ];
    let mut l = [0f32; BQ];
    // Rows `r0..r0+n` of a view, contiguous, into `dst` (`n × cols`).
    let rows = |src: MatViewBf16, r0: usize, n: usize, cols: usize, dst: &mut [bf16]| {
        for (i, row) in dst[..n * cols].chunks_exact_mut(cols).enumerate() {
            // SAFETY: row r0 + i of the view has `cols` elements `cs` apart (the contract).
            let base = unsafe { src.ptr.offset((r0 + i) as isize * src.rs) };
            if src.cs == 1 {
                row.copy_from_slice(unsafe { std::slice::from_raw_parts(base, cols) });
            } else {
                for (c, x) in row.iter_mut().enumerate() {
                    *x = unsafe { *base.offset(c as isize * src.cs) };
                }
            }
        }
    };
    for q0 in (0..lq).step_by(BQ) {
        let bq = BQ.min(lq - q0);
        rows(q, q0, bq, d, &mut qa);
        m[..bq].fill(f32::NEG_INFINITY);
        l[..bq].fill(0.0);
        acc[..bq * dv].fill(0.0);
        for k0 in (0..lk).step_by(BK) {
            let bk = BK.min(lk - k0);
            rows(k, k0, bk, d, &mut kb);
            kp.pack_transposed(&kb, bk, d, d);
            // s[bq, bk] = scale · q[q0.., :] · k[k0.., :]ᵀ (written, not accumulated).
            gemm_serial_overwrite(bq, &qa, d, &kp, &mut s, bk, scale);
            let mut run = Running {
                m: &mut m[..bq],
                l: &mut l[..bq],
                acc: &mut acc[..bq * dv],
                dv,
            };
            keys_block(&mut s[..bq * bk], (q0, k0, bk), keys, &mut run);
            // acc[bq, dv] += p[bq, bk] · v[k0.., :]
            to_bf16_serial(&s[..bq * bk], &mut p[..bq * bk]);
            rows(v, k0, bk, dv, &mut vb);
            vp.pack_with(&vb, bk, dv, dv, false);
            gemm_serial(bq, &p, bk, &vp, &mut acc, dv);
        }
        // SAFETY: rows q0..q0 + bq of `o` are this head's (the caller's contract).
        unsafe { write_normalized(o, o_rs, q0, &acc[..bq * dv], &l[..bq], dv) };
    }
}

/// One score block's keys (`s`: rows of `bk` scores for queries `q0..`, keys `k0..`): the bias
/// added and excluded keys dropped, then the online-softmax update ([`softmax_block`]).
fn keys_block(s: &mut [f32], (q0, k0, bk): (usize, usize, usize), keys: Keys, run: &mut Running) {
    let blk_ex = keys.ex.map(|e| &e[k0..k0 + bk]);
    let masked = blk_ex.is_some() || keys.bias.is_some();
    if let Some(bias) = keys.bias {
        for (i, row) in s.chunks_exact_mut(bk).enumerate() {
            let at = (q0 + i) * bias.row_stride + k0;
            for (x, b) in row.iter_mut().zip(&bias.data[at..at + bk]) {
                *x += b;
            }
        }
    }
    softmax_block(s, bk, run, blk_ex, masked);
}

/// Rows `q0..` of the output: the accumulator rows divided by their softmax sums (0 for a row
/// whose every key was excluded).
///
/// # Safety
/// `o` must address `acc.len() / dv` rows of `dv` writable elements from row `q0`, `o_rs`
/// apart, that no other thread touches.
unsafe fn write_normalized(o: *mut f32, o_rs: isize, q0: usize, acc: &[f32], l: &[f32], dv: usize) {
    for (i, (row, &li)) in acc.chunks_exact(dv).zip(l).enumerate() {
        let inv = if li > 0.0 { 1.0 / li } else { 0.0 };
        // SAFETY: row q0 + i of `o` has dv writable elements (the caller's contract).
        let dst = unsafe { std::slice::from_raw_parts_mut(o.offset((q0 + i) as isize * o_rs), dv) };
        for (x, a) in dst.iter_mut().zip(row) {
            *x = a * inv;
        }
    }
}

/// Online-softmax update of one score block (rows of length `bk`): exponentiate in place
/// against the running max, update the running sums and rescale the accumulator rows.
fn softmax_block(s: &mut [f32], bk: usize, run: &mut Running, ex: Option<&[bool]>, masked: bool) {
    // Masked blocks (attention swapping, biases with −∞) are rarer; the portable loop
    // handles them exactly.
    #[cfg(target_arch = "x86_64")]
    if !masked && super::simd::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        unsafe { softmax_block_avx2(s, bk, run) };
        return;
    }
    softmax_block_generic(s, bk, run, ex, masked);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_block_avx2(s: &mut [f32], bk: usize, run: &mut Running) {
    let Running { m, l, acc, dv } = run;
    let dv = *dv;
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
    run: &mut Running,
    ex: Option<&[bool]>,
    masked: bool,
) {
    let Running { m, l, acc, dv } = run;
    let dv = *dv;
    let mut out_keys = vec![false; if masked { bk } else { 0 }];
    for (i, row) in s.chunks_exact_mut(bk).enumerate() {
        if masked {
            for (j, x) in row.iter_mut().enumerate() {
                let excluded = ex.is_some_and(|e| e[j]) || *x == f32::NEG_INFINITY;
                out_keys[j] = excluded;
                if excluded {
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
        let mut sum = exp_sub_sum(row, new_max);
        if masked {
            // exp(−inf − max) is a tiny positive number in the fast exp; make it exactly 0.
            for (x, &e) in row.iter_mut().zip(&out_keys) {
                if e {
                    sum -= *x;
                    *x = 0.0;
                }
            }
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

    /// Query chunks give what one call gives (no mask, a broadcast bias, a per-query bias).
    #[test]
    fn query_chunks_are_exact() {
        let dev = Device::flex();
        let (b, h, lq, lk, d) = (2, 2, 300, 512, 8);
        let q = Tensor::<4>::random([b, h, lq, d], Distribution::Normal(0.0, 1.0), &dev);
        let k = Tensor::<4>::random([b, h, lk, d], Distribution::Normal(0.0, 1.0), &dev);
        let v = Tensor::<4>::random([b, h, lk, d], Distribution::Normal(0.0, 1.0), &dev);
        let per_query = Tensor::<4>::random([b, 1, lq, lk], Distribution::Normal(0.0, 1.0), &dev);
        let broadcast = Tensor::<4>::random([b, 1, 1, lk], Distribution::Normal(0.0, 1.0), &dev);
        for bias in [None, Some(broadcast), Some(per_query)] {
            // One call (no bound) against 7 query rows per chunk: 43 chunks, the last short.
            let whole = query_chunked_by(q.clone(), k.clone(), v.clone(), bias.clone(), usize::MAX);
            let chunked =
                query_chunked_by(q.clone(), k.clone(), v.clone(), bias, 7 * b * h * lk * 4);
            let diff = max_diff(whole, chunked);
            assert!(diff <= 1e-6, "{diff}");
        }
        // And the size rule: SD's 64² site, batch 2, 8 heads → 256 query rows per chunk.
        assert_eq!(MAX_SCORE_BYTES / (2 * 8 * 4096 * 4), 256);
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
        let got = scaled_dot_product_attention(q, k, v, AttentionMask::None);
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
            let got =
                scaled_dot_product_attention(q.clone(), k.clone(), v.clone(), AttentionMask::None);
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
            let got = scaled_dot_product_attention(q, k, v, AttentionMask::ExcludeKeys(ex));
            assert!(max_diff(got, want) < 1e-5);
        }
    }

    #[test]
    fn half_precision_on_every_path_matches_f32_of_the_same_values() {
        // bf16 (the AVX512-BF16 kernel where the CPU has it, else f32 on widened copies) and
        // f16 (f32 on widened copies), with and without key masks, against the f32 kernel on
        // the same values: within the rounding of the probabilities and the output.
        let dev = Device::flex();
        for dtype in [DType::BF16, DType::F16] {
            for (lq, lk, d) in [(300usize, 700usize, 40usize), (257, 1000, 8), (64, 300, 80)] {
                let r = |l| {
                    Tensor::<4>::random([2, 3, l, d], Distribution::Normal(0.0, 1.0), &dev)
                        .cast(dtype)
                };
                let (q, k, v) = (r(lq), r(lk), r(lk));
                let wide = |t: &Tensor<4>| t.clone().cast(DType::F32);
                let ex: Vec<bool> = (0..2 * lk).map(|i| i < lk && i % 2 == 0).collect();
                let ex = Tensor::<2, Bool>::from_data(TensorData::new(ex, [2, lk]), &dev);
                for mask in [AttentionMask::None, AttentionMask::ExcludeKeys(ex)] {
                    let want =
                        scaled_dot_product_attention(wide(&q), wide(&k), wide(&v), mask.clone());
                    let got = scaled_dot_product_attention(q.clone(), k.clone(), v.clone(), mask);
                    assert_eq!(got.dtype(), dtype);
                    let e = max_diff(got.cast(DType::F32), want);
                    assert!(e < 2e-2, "{dtype:?} {:?}: max diff {e}", (lq, lk, d));
                }
            }
        }
    }

    /// The reference: scores in f64 on the host, bias added, softmax, zeros for a row with
    /// every key at −∞.
    fn host_reference(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>, bias: &[f32]) -> Vec<f32> {
        let [b, h, lq, d] = q.dims();
        let lk = k.dims()[2];
        let f = |t: &Tensor<4>| {
            t.clone()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap()
        };
        let (qv, kv, vv) = (f(q), f(k), f(v));
        let mut out = vec![0f32; b * h * lq * d];
        for bh in 0..b * h {
            for i in 0..lq {
                let qr = &qv[(bh * lq + i) * d..][..d];
                let scores: Vec<f64> = (0..lk)
                    .map(|j| {
                        let kr = &kv[(bh * lk + j) * d..][..d];
                        let dot: f64 = qr.iter().zip(kr).map(|(a, b)| *a as f64 * *b as f64).sum();
                        dot / (d as f64).sqrt() + bias[(bh * lq + i) * lk + j] as f64
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if m == f64::NEG_INFINITY {
                    continue;
                }
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d {
                    let acc: f64 = (0..lk)
                        .map(|j| e[j] * vv[(bh * lk + j) * d + c] as f64)
                        .sum();
                    out[(bh * lq + i) * d + c] = (acc / z) as f32;
                }
            }
        }
        out
    }

    #[test]
    fn additive_bias_on_every_path() {
        let dev = Device::flex();
        // (300, 400) takes the tiled kernel, (20, 30) the explicit fallback.
        for (lq, lk) in [(300usize, 400usize), (20, 30)] {
            let (b, h, d) = (2, 2, 8);
            let q = Tensor::<4>::random([b, h, lq, d], Distribution::Normal(0.0, 1.0), &dev);
            let k = Tensor::<4>::random([b, h, lk, d], Distribution::Normal(0.0, 1.0), &dev);
            let v = Tensor::<4>::random([b, h, lk, d], Distribution::Normal(0.0, 1.0), &dev);
            // Per batch row and key (broadcast over heads and queries): ln 2 on even keys,
            // −∞ on keys ≥ lk − 5 of row 0; row 1's query 3 excludes every key.
            let mut small = vec![0f32; b * lk];
            for j in 0..lk {
                small[j] = if j >= lk - 5 {
                    f32::NEG_INFINITY
                } else if j % 2 == 0 {
                    2f32.ln()
                } else {
                    0.0
                };
                small[lk + j] = 0.5 * (j % 3) as f32;
            }
            let mut full = vec![0f32; b * h * lq * lk];
            for bi in 0..b {
                for hi in 0..h {
                    for i in 0..lq {
                        for j in 0..lk {
                            let mut x = small[bi * lk + j];
                            if bi == 1 && i == 3 {
                                x = f32::NEG_INFINITY;
                            }
                            full[((bi * h + hi) * lq + i) * lk + j] = x;
                        }
                    }
                }
            }
            let want = host_reference(&q, &k, &v, &full);
            let bias = Tensor::<4>::from_data(TensorData::new(full.clone(), [b, h, lq, lk]), &dev);
            let got = scaled_dot_product_attention(
                q.clone(),
                k.clone(),
                v.clone(),
                AttentionMask::Bias(bias),
            );
            let got: Vec<f32> = got.into_data().convert::<f32>().try_into_vec().unwrap();
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-5, "{lq}x{lk}: {err}");
            // The fully excluded query gives exactly zero.
            let row = ((h) * lq + 3) * d; // batch 1, head 0, query 3
            assert!(got[row..row + d].iter().all(|&x| x == 0.0), "{lq}x{lk}");
            // A broadcast bias [B, 1, 1, Lk] gives the same as its expansion (no row 1 / q 3 rule).
            let b4 = Tensor::<4>::from_data(TensorData::new(small.clone(), [b, 1, 1, lk]), &dev);
            let got_b = scaled_dot_product_attention(
                q.clone(),
                k.clone(),
                v.clone(),
                AttentionMask::Bias(b4.clone()),
            );
            let want_b = scaled_dot_product_attention(
                q.clone(),
                k.clone(),
                v.clone(),
                AttentionMask::Bias(b4.expand([b, h, lq, lk])),
            );
            assert!(max_diff(got_b, want_b) < 1e-6);
        }
    }

    #[test]
    fn every_key_excluded_gives_zeros_on_every_path() {
        let dev = Device::flex();
        for (lq, lk) in [(300usize, 400usize), (20, 30)] {
            let q = Tensor::<4>::random([1, 2, lq, 8], Distribution::Normal(0.0, 1.0), &dev);
            let k = Tensor::<4>::random([1, 2, lk, 8], Distribution::Normal(0.0, 1.0), &dev);
            let ex = Tensor::<2, Bool>::from_data(TensorData::new(vec![true; lk], [1, lk]), &dev);
            let out = scaled_dot_product_attention(q, k.clone(), k, AttentionMask::ExcludeKeys(ex));
            let v: Vec<f32> = out.into_data().convert::<f32>().try_into_vec().unwrap();
            assert!(v.iter().all(|&x| x == 0.0), "{lq}x{lk}");
        }
    }
}
