//! bf16 × bf16 → f32 matrix products for the flex CPU backend: the engine of the bf16
//! [`Linear`](super::Linear) and [`Conv2d`](super::Conv2d) kernels.
//!
//! `C[m, n] += A[m, k] · B[k, n]` with `A` and `B` in bf16 and `C` in f32 (every product of two
//! bf16 values is exact in f32; only the sum rounds, as in PyTorch's bf16 CPU kernels, which
//! accumulate in f32 too). `B` is packed once per call into panels of [`NR`] columns whose
//! words hold the pair `(B[2q, j], B[2q+1, j])` — the operand layout of AVX512-BF16's
//! `VDPBF16PS`, which multiplies 32 bf16 pairs and adds them into 16 f32 lanes per instruction.
//! On CPUs with AVX512-BF16 (detected at run time, as the AVX2 kernels are) the micro-kernel is
//! `MR × 32` tiles of `VDPBF16PS`; elsewhere a portable kernel computes the same sums in f32.
//! `A` is read in place (rows `lda` apart); blocks of [`KC`] pairs × [`MC`] rows keep the
//! working set in L1/L2, and the blocks of `C` are shared out over rayon's threads.

use half::bf16;
use rayon::prelude::*;

/// Columns per packed panel of `B` (two 16-lane f32 vectors of `C`).
pub(crate) const NR: usize = 32;
/// Rows of `C` per micro-tile (24 accumulator registers of the 32).
const MR: usize = 12;
/// k-pairs per cache block (a 16 KB block of a panel stays in L1).
const KC: usize = 128;
/// Rows per L2 block of `A` (a multiple of `MR`).
const MC: usize = 96;
/// Panels per parallel task.
const PANELS_PER_TASK: usize = 8;

/// Which micro-kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX512-BF16 `VDPBF16PS` (with AVX512F/BW).
    Avx512Bf16,
    /// Portable Rust (f32 multiply-adds of the widened values).
    Portable,
}

impl Isa {
    /// The best kernel this CPU runs (detected once).
    pub(crate) fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx512bf16")
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                {
                    return Isa::Avx512Bf16;
                }
            }
            Isa::Portable
        })
    }
}

/// `B [k, n]` packed for [`gemm`]: panel `p` holds, for each pair `q < ⌈k/2⌉`, the [`NR`] words
/// `B[2q, p·NR + j] | B[2q+1, p·NR + j] << 16` (zero past `k` or `n`).
#[derive(Debug, Default)]
pub(crate) struct PackedB {
    words: Vec<u32>,
    k: usize,
    n: usize,
}

impl PackedB {
    fn pairs(&self) -> usize {
        self.k.div_ceil(2)
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// Shape the buffer for a `[k, n]` matrix (growing its storage if needed): the words per
    /// panel, or `None` when the matrix is empty (nothing to pack).
    fn reset(&mut self, k: usize, n: usize) -> Option<usize> {
        self.k = k;
        self.n = n;
        let panel_len = self.pairs() * NR;
        let len = panel_len * self.panels();
        if self.words.len() < len {
            self.words.resize(len, 0);
        }
        (len > 0).then_some(panel_len)
    }

    /// Pack `b` (`[k, n]`, rows `ldb` apart) into this buffer (its storage is reused), the
    /// panels in parallel.
    pub(crate) fn pack(&mut self, b: &[bf16], k: usize, n: usize, ldb: usize) {
        self.pack_with(b, k, n, ldb, true)
    }

    /// [`pack`](Self::pack) on the calling thread only when `parallel` is false (inside a
    /// task that is already one of many).
    pub(crate) fn pack_with(&mut self, b: &[bf16], k: usize, n: usize, ldb: usize, parallel: bool) {
        assert!(
            k == 0 || n == 0 || b.len() >= (k - 1) * ldb + n,
            "pack: {} elements for a [{k}, {n}] matrix with rows {ldb} apart",
            b.len()
        );
        let Some(panel_len) = self.reset(k, n) else {
            return;
        };
        let len = panel_len * self.panels();
        let bits = |r: usize, c: usize| -> u32 {
            if r < k && c < n {
                b[r * ldb + c].to_bits() as u32
            } else {
                0
            }
        };
        let fill = |(p, panel): (usize, &mut [u32])| {
            let c0 = p * NR;
            let full = c0 + NR <= n;
            for (q, dst) in panel.chunks_exact_mut(NR).enumerate() {
                let (r0, r1) = (2 * q, 2 * q + 1);
                if full && r1 < k {
                    let lo = &b[r0 * ldb + c0..r0 * ldb + c0 + NR];
                    let hi = &b[r1 * ldb + c0..r1 * ldb + c0 + NR];
                    for ((d, l), h) in dst.iter_mut().zip(lo).zip(hi) {
                        *d = l.to_bits() as u32 | (h.to_bits() as u32) << 16;
                    }
                } else {
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d = bits(r0, c0 + j) | bits(r1, c0 + j) << 16;
                    }
                }
            }
        };
        if parallel {
            self.words[..len]
                .par_chunks_mut(panel_len)
                .enumerate()
                .for_each(fill);
        } else {
            self.words[..len]
                .chunks_mut(panel_len)
                .enumerate()
                .for_each(fill);
        }
    }

    /// Pack the transpose of `src` (`[n, k]`, rows `ld` apart): `B[i, j] = src[j, i]`, on the
    /// calling thread. A pair of `B` is two neighbours in a row of `src`: one 32-bit read.
    pub(crate) fn pack_transposed(&mut self, src: &[bf16], n: usize, k: usize, ld: usize) {
        assert!(
            k == 0 || n == 0 || src.len() >= (n - 1) * ld + k,
            "pack_transposed: {} elements for a [{n}, {k}] matrix with rows {ld} apart",
            src.len()
        );
        let Some(panel_len) = self.reset(k, n) else {
            return;
        };
        let len = panel_len * self.panels();
        for (p, panel) in self.words[..len].chunks_mut(panel_len).enumerate() {
            for (q, dst) in panel.chunks_exact_mut(NR).enumerate() {
                for (j, d) in dst.iter_mut().enumerate() {
                    let row = p * NR + j;
                    *d = if row >= n {
                        0
                    } else {
                        let lo = src[row * ld + 2 * q].to_bits() as u32;
                        let hi = if 2 * q + 1 < k {
                            src[row * ld + 2 * q + 1].to_bits() as u32
                        } else {
                            0
                        };
                        lo | hi << 16
                    };
                }
            }
        }
    }
}

/// A pointer shared by the tasks that write disjoint blocks of `C`.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: every task writes only its own block of rows × panels of the output.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `c[i, j] += Σ_k a[i, k] · b[k, j]` for `i < m`, `j < b.n`: `a` `[m, k]` with rows `lda`
/// apart, `c` with rows `ldc` apart (pre-filled, e.g. with a bias).
///
/// # Panics
/// If a slice is shorter than the shapes and strides address (a caller bug).
pub(crate) fn gemm(m: usize, a: &[bf16], lda: usize, b: &PackedB, c: &mut [f32], ldc: usize) {
    gemm_with(Isa::detect(), m, a, lda, b, c, ldc, true, None)
}

/// `c[i, j] = alpha · Σ_k a[i, k] · b[k, j]` on the calling thread: `c` is written, not read
/// (no pass to clear it first, no loads of it in the kernel).
pub(crate) fn gemm_serial_overwrite(
    m: usize,
    a: &[bf16],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    alpha: f32,
) {
    gemm_with(Isa::detect(), m, a, lda, b, c, ldc, false, Some(alpha))
}

/// [`gemm`] on the calling thread (inside a task that is already one of many).
pub(crate) fn gemm_serial(
    m: usize,
    a: &[bf16],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
) {
    gemm_with(Isa::detect(), m, a, lda, b, c, ldc, false, None)
}

/// [`gemm`] with the micro-kernel chosen (tests run both), threads allowed or not, and with
/// `overwrite = Some(alpha)` `c = alpha · a·b` instead of `c += a·b`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_with(
    isa: Isa,
    m: usize,
    a: &[bf16],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    parallel: bool,
    overwrite: Option<f32>,
) {
    let (k, n) = (b.k, b.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        a.len() >= (m - 1) * lda + k && lda >= k,
        "gemm: A has {} elements for [{m}, {k}] rows {lda} apart",
        a.len()
    );
    assert!(
        c.len() >= (m - 1) * ldc + n && ldc >= n,
        "gemm: C has {} elements for [{m}, {n}] rows {ldc} apart",
        c.len()
    );
    let row_blocks = m.div_ceil(MC);
    let col_blocks = b.panels().div_ceil(PANELS_PER_TASK);
    let out = SharedOut(c.as_mut_ptr());
    let task = |t: usize| {
        let (rb, cb) = (t / col_blocks, t % col_blocks);
        let rows = rb * MC..((rb + 1) * MC).min(m);
        let panels = cb * PANELS_PER_TASK..((cb + 1) * PANELS_PER_TASK).min(b.panels());
        // SAFETY: the asserts above bound every address; tasks' blocks are disjoint.
        unsafe { block(isa, rows, panels, (a, lda), b, (out.get(), ldc), overwrite) };
    };
    let tasks = row_blocks * col_blocks;
    if parallel && tasks > 1 && m * n * k >= 64 * 64 * 64 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// Rows `rows` × panels `panels` of `C`, every k-block.
///
/// # Safety
/// `a`, `b` and `c` must cover the addresses the shapes imply (checked by [`gemm_with`]); no
/// other thread writes this block of `c`.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    isa: Isa,
    rows: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    (a, lda): (&[bf16], usize),
    b: &PackedB,
    (c, ldc): (*mut f32, usize),
    overwrite: Option<f32>,
) {
    let pairs = b.pairs();
    let odd = b.k % 2 == 1;
    let panel_len = pairs * NR;
    for pc in (0..pairs).step_by(KC) {
        let pe = (pc + KC).min(pairs);
        // The last block ends on the odd row's half-pair when k is odd.
        let tail = odd && pe == pairs;
        let full = pe - pc - usize::from(tail);
        for p in panels.clone() {
            let bp = unsafe { b.words.as_ptr().add(p * panel_len + pc * NR) };
            let cols = (b.n - p * NR).min(NR);
            let mut i = rows.start;
            while i < rows.end {
                let r = (rows.end - i).min(MR);
                let ap = unsafe { a.as_ptr().add(i * lda + 2 * pc) };
                let cp = unsafe { c.add(i * ldc + p * NR) };
                let t = Tile {
                    a: ap,
                    lda,
                    pairs: full,
                    tail,
                    b: bp,
                    c: cp,
                    ldc,
                    cols,
                    // Overwriting: the first k-block starts from zero instead of C.
                    load_c: overwrite.is_none() || pc > 0,
                    alpha: if pe == pairs {
                        overwrite.unwrap_or(1.0)
                    } else {
                        1.0
                    },
                };
                unsafe { tile(isa, r, t) };
                i += r;
            }
        }
    }
}

/// One micro-tile's operands.
#[derive(Clone, Copy)]
struct Tile {
    /// `A` at the tile's first row and pair.
    a: *const bf16,
    lda: usize,
    /// Whole pairs to multiply.
    pairs: usize,
    /// One more half-pair (the odd last row of `B`; its high halves are zero).
    tail: bool,
    /// The panel at the first pair.
    b: *const u32,
    /// `C` at the tile's first row and column.
    c: *mut f32,
    ldc: usize,
    /// Columns of `C` in this panel (≤ NR).
    cols: usize,
    /// Start from `C` (else from zero).
    load_c: bool,
    /// Scale of the sums when they are stored.
    alpha: f32,
}

/// Dispatch a tile of `r ≤ MR` rows to the kernel monomorphized for it.
unsafe fn tile(isa: Isa, r: usize, t: Tile) {
    macro_rules! by_rows {
        ($f:ident) => {
            match r {
                1 => $f::<1>(t),
                2 => $f::<2>(t),
                3 => $f::<3>(t),
                4 => $f::<4>(t),
                5 => $f::<5>(t),
                6 => $f::<6>(t),
                7 => $f::<7>(t),
                8 => $f::<8>(t),
                9 => $f::<9>(t),
                10 => $f::<10>(t),
                11 => $f::<11>(t),
                _ => $f::<12>(t),
            }
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 => unsafe { by_rows!(tile_avx512bf16) },
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx512Bf16 => unsafe { by_rows!(tile_portable) },
        Isa::Portable => unsafe { by_rows!(tile_portable) },
    }
}

/// The A word of row `r`, pair `q`: `A[r, 2q] | A[r, 2q+1] << 16`.
#[inline(always)]
unsafe fn a_pair(t: &Tile, r: usize, q: usize) -> u32 {
    unsafe { (t.a.add(r * t.lda + 2 * q) as *const u32).read_unaligned() }
}

/// The A word of row `r`'s half-pair after the whole pairs (high half zero).
#[inline(always)]
unsafe fn a_tail(t: &Tile, r: usize) -> u32 {
    unsafe { (*t.a.add(r * t.lda + 2 * t.pairs)).to_bits() as u32 }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn tile_avx512bf16<const R: usize>(t: Tile) {
    use std::arch::x86_64::*;
    let m0: __mmask16 = if t.cols >= 16 {
        0xFFFF
    } else {
        ((1u32 << t.cols) - 1) as u16
    };
    let m1: __mmask16 = if t.cols >= 32 {
        0xFFFF
    } else if t.cols > 16 {
        ((1u32 << (t.cols - 16)) - 1) as u16
    } else {
        0
    };
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    if t.load_c {
        for (r, row) in acc.iter_mut().enumerate() {
            let cr = unsafe { t.c.add(r * t.ldc) };
            row[0] = unsafe { _mm512_maskz_loadu_ps(m0, cr) };
            row[1] = unsafe { _mm512_maskz_loadu_ps(m1, cr.add(16)) };
        }
    }
    // The whole pairs, then the half-pair: no closure in between, so every intrinsic inlines.
    let last = t.pairs + usize::from(t.tail);
    for q in 0..last {
        let bq = unsafe { t.b.add(q * NR) };
        let b0: __m512bh = unsafe { std::mem::transmute(_mm512_loadu_si512(bq as *const _)) };
        let b1: __m512bh =
            unsafe { std::mem::transmute(_mm512_loadu_si512(bq.add(16) as *const _)) };
        let whole = q < t.pairs;
        for (r, row) in acc.iter_mut().enumerate() {
            let word = if whole {
                unsafe { a_pair(&t, r, q) }
            } else {
                unsafe { a_tail(&t, r) }
            };
            let av: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(word as i32)) };
            row[0] = _mm512_dpbf16_ps(row[0], av, b0);
            row[1] = _mm512_dpbf16_ps(row[1], av, b1);
        }
    }
    let alpha = _mm512_set1_ps(t.alpha);
    for (r, row) in acc.iter().enumerate() {
        let cr = unsafe { t.c.add(r * t.ldc) };
        let (v0, v1) = if t.alpha == 1.0 {
            (row[0], row[1])
        } else {
            (_mm512_mul_ps(row[0], alpha), _mm512_mul_ps(row[1], alpha))
        };
        unsafe {
            _mm512_mask_storeu_ps(cr, m0, v0);
            _mm512_mask_storeu_ps(cr.add(16), m1, v1);
        }
    }
}

/// The same sums in portable Rust: each bf16 widened to f32 (exact), the pair's two products
/// added, then accumulated, as `VDPBF16PS` does.
unsafe fn tile_portable<const R: usize>(t: Tile) {
    let wide = |w: u32| (f32::from_bits(w << 16), f32::from_bits(w & 0xFFFF_0000));
    let mut acc = [[0f32; NR]; R];
    if t.load_c {
        for (r, row) in acc.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate().take(t.cols) {
                *v = unsafe { *t.c.add(r * t.ldc + j) };
            }
        }
    }
    for q in 0..t.pairs + usize::from(t.tail) {
        let bq = unsafe { std::slice::from_raw_parts(t.b.add(q * NR), NR) };
        for (r, row) in acc.iter_mut().enumerate() {
            let word = if q < t.pairs {
                unsafe { a_pair(&t, r, q) }
            } else {
                unsafe { a_tail(&t, r) }
            };
            let (a0, a1) = wide(word);
            for (v, &w) in row.iter_mut().zip(bq) {
                let (b0, b1) = wide(w);
                *v += a0 * b0 + a1 * b1;
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (j, v) in row.iter().enumerate().take(t.cols) {
            unsafe { *t.c.add(r * t.ldc + j) = *v * t.alpha };
        }
    }
}

/// `dst[i] = bf16(src[i])` on the calling thread (see [`to_bf16`]).
pub(crate) fn to_bf16_serial(src: &[f32], dst: &mut [bf16]) {
    match Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX512-BF16 (detected).
        Isa::Avx512Bf16 => unsafe { to_bf16_avx512(src, dst) },
        _ => dst
            .iter_mut()
            .zip(src)
            .for_each(|(d, &s)| *d = bf16::from_f32(s)),
    }
}

/// `dst[i] = bf16(src[i])`, round to nearest even (NaN stays NaN), in parallel.
pub(crate) fn to_bf16(src: &[f32], dst: &mut [bf16]) {
    const CHUNK: usize = 1 << 16;
    let isa = Isa::detect();
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX512-BF16 (detected).
            Isa::Avx512Bf16 => unsafe { to_bf16_avx512(s, d) },
            _ => d
                .iter_mut()
                .zip(s)
                .for_each(|(d, &s)| *d = bf16::from_f32(s)),
        });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn to_bf16_avx512(src: &[f32], dst: &mut [bf16]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 16 <= n {
        let v = unsafe { _mm512_loadu_ps(src.as_ptr().add(i)) };
        let h: __m256i = unsafe { std::mem::transmute(_mm512_cvtneps_pbh(v)) };
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, h) };
        i += 16;
    }
    for j in i..n {
        dst[j] = half::bf16::from_f32(src[j]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product in f64 of the bf16 values (the exact sums).
    fn reference(m: usize, k: usize, n: usize, a: &[bf16], b: &[bf16], c0: &[f32]) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = c0[i * n + j] as f64;
                for p in 0..k {
                    s += a[i * k + p].to_f64() * b[p * n + j].to_f64();
                }
                out[i * n + j] = s;
            }
        }
        out
    }

    fn values(len: usize, seed: u64) -> Vec<bf16> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                bf16::from_f32(((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
            })
            .collect()
    }

    #[test]
    fn both_kernels_match_exact_sums_on_every_edge() {
        let mut isas = vec![Isa::Portable];
        if Isa::detect() == Isa::Avx512Bf16 {
            isas.push(Isa::Avx512Bf16);
        }
        // Odd k (a half-pair), k over one cache block, rows not a multiple of MR or MC, columns
        // not a multiple of NR, more panels than one task.
        let shapes = [
            (1, 1, 1),
            (5, 7, 3),
            (13, 2, 33),
            (12, 320, 32),
            (97, 257, 65),
            (200, 300, 300),
        ];
        for isa in isas {
            for &(m, k, n) in &shapes {
                let a = values(m * k, 1);
                let b = values(k * n, 2);
                let c0: Vec<f32> = values(m * n, 3).iter().map(|x| x.to_f32()).collect();
                let mut packed = PackedB::default();
                packed.pack(&b, k, n, n);
                let mut c = c0.clone();
                gemm_with(isa, m, &a, k, &packed, &mut c, n, true, None);
                let want = reference(m, k, n, &a, &b, &c0);
                let err = c
                    .iter()
                    .zip(&want)
                    .map(|(x, y)| (*x as f64 - y).abs())
                    .fold(0f64, f64::max);
                // f32 accumulation of k exact products of magnitude ≤ 1.
                let tol = 1e-6 * (k as f64).max(1.0) + 1e-6;
                assert!(err <= tol, "{isa:?} {m}×{k}×{n}: max error {err} > {tol}");
            }
        }
    }

    #[test]
    fn strided_rows_and_a_repacked_buffer() {
        // A and C with padded rows; the packed buffer reused for a smaller matrix.
        let (m, k, n, lda, ldc) = (14, 40, 20, 48, 25);
        let a = values(m * lda, 4);
        let b = values(k * n, 5);
        let mut packed = PackedB::default();
        packed.pack(&values(100 * 100, 6), 100, 100, 100);
        packed.pack(&b, k, n, n);
        let mut c = vec![0f32; m * ldc];
        gemm(m, &a, lda, &packed, &mut c, ldc);
        for i in 0..m {
            for j in 0..ldc {
                let want: f64 = if j < n {
                    (0..k)
                        .map(|p| a[i * lda + p].to_f64() * b[p * n + j].to_f64())
                        .sum()
                } else {
                    0.0
                };
                let got = c[i * ldc + j] as f64;
                assert!((got - want).abs() < 1e-4, "({i}, {j}): {got} vs {want}");
            }
        }
    }

    #[test]
    fn overwrite_ignores_the_output_and_scales() {
        let (m, k, n) = (29, 300, 45);
        let a = values(m * k, 7);
        let b = values(k * n, 8);
        let mut packed = PackedB::default();
        packed.pack(&b, k, n, n);
        let mut c = vec![f32::NAN; m * n];
        gemm_serial_overwrite(m, &a, k, &packed, &mut c, n, 0.5);
        let want = reference(m, k, n, &a, &b, &vec![0.0; m * n]);
        for (x, y) in c.iter().zip(&want) {
            assert!((*x as f64 - 0.5 * y).abs() < 1e-4, "{x} vs {}", 0.5 * y);
        }
    }

    #[test]
    fn a_transposed_pack_equals_packing_the_transpose() {
        for (n, k) in [(5, 7), (33, 40), (64, 1)] {
            let src = values(n * (k + 3), 9);
            let mut t = vec![bf16::ZERO; k * n];
            for i in 0..k {
                for j in 0..n {
                    t[i * n + j] = src[j * (k + 3) + i];
                }
            }
            let (mut a, mut b) = (PackedB::default(), PackedB::default());
            a.pack_transposed(&src, n, k, k + 3);
            b.pack_with(&t, k, n, n, false);
            let len = b.pairs() * NR * b.panels();
            assert_eq!(a.words[..len], b.words[..len], "[{n}, {k}]");
        }
    }

    #[test]
    fn conversion_rounds_to_nearest_even() {
        let src: Vec<f32> = (0..1000)
            .map(|i| (i as f32 - 500.0) * 1.001_f32.powi(i))
            .chain([
                f32::NAN,
                f32::INFINITY,
                -0.0,
                1.0 + 1.0 / 256.0,
                1.0 + 3.0 / 256.0,
            ])
            .collect();
        let mut dst = vec![bf16::ZERO; src.len()];
        to_bf16(&src, &mut dst);
        for (s, d) in src.iter().zip(&dst) {
            let want = bf16::from_f32(*s);
            assert!(
                want.to_bits() == d.to_bits() || (want.is_nan() && d.is_nan()),
                "{s}: {d} vs {want}"
            );
        }
    }
}
