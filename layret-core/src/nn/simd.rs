//! Vectorized math shared by the CPU kernels: a branch-free `exp`, and AVX2+FMA versions of it
//! and of the loops built on it (row max, softmax's `exp`/sum, SiLU, GEGLU), chosen at run time.

/// Whether this CPU runs the [`avx2`] kernels (AVX2 and FMA; the check is cached by std).
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `exp(x)` to ~2 ulp for x ≤ 88, branch-free so loops over it vectorize: Cody–Waite range
/// reduction by ln 2 and a degree-6 polynomial on |r| ≤ ln2/2.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.0);
    let t = x * std::f32::consts::LOG2_E;
    // Round to nearest by adding 1.5·2²³ (branch-free, vectorizes without SSE4.1).
    let n = (t + 12_582_912.0) - 12_582_912.0;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    let bits = ((n as i32 + 127) << 23) as u32;
    p * f32::from_bits(bits)
}

/// AVX2+FMA kernels, 8 lanes: row max, `exp` (the same Cody–Waite reduction and polynomial as
/// [`exp_approx`], with fused multiply-adds) and what is built on it. Callers check
/// [`has_avx2_fma`] first.
#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hmax(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_max_ps(lo, hi);
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Largest element (−∞ for an empty slice).
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::nn) unsafe fn max(x: &[f32]) -> f32 {
        let mut vm = _mm256_set1_ps(f32::NEG_INFINITY);
        let chunks = x.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            // SAFETY: `c` holds 8 floats.
            vm = _mm256_max_ps(vm, unsafe { _mm256_loadu_ps(c.as_ptr()) });
        }
        let mut best = unsafe { hmax(vm) };
        for &v in rest {
            best = if v > best { v } else { best };
        }
        best
    }

    /// `exp(x)` on 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn exp(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-87.3)),
            _mm256_set1_ps(88.0),
        );
        let t = _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E));
        let n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm256_set1_ps(0.001_388_889);
        for c in [0.008_333_334, 0.041_666_668, 0.166_666_67, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let bits = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        );
        _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
    }

    /// `x ← exp(x − shift)` in place; returns the sum.
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::nn) unsafe fn exp_sub_sum(x: &mut [f32], shift: f32) -> f32 {
        let vs = _mm256_set1_ps(shift);
        let mut acc = _mm256_setzero_ps();
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` holds 8 floats.
            unsafe {
                let e = exp(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), vs));
                _mm256_storeu_ps(c.as_mut_ptr(), e);
                acc = _mm256_add_ps(acc, e);
            }
        }
        let mut sum = unsafe { hsum(acc) };
        for v in chunks.into_remainder() {
            *v = super::exp_approx(*v - shift);
            sum += *v;
        }
        sum
    }

    /// `x ← x / (1 + e^(−x))` (SiLU) in place.
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::nn) unsafe fn silu_in_place(x: &mut [f32]) {
        let one = _mm256_set1_ps(1.0);
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: `c` holds 8 floats.
            unsafe {
                let v = _mm256_loadu_ps(c.as_ptr());
                let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), v));
                _mm256_storeu_ps(c.as_mut_ptr(), _mm256_div_ps(v, _mm256_add_ps(one, e)));
            }
        }
        for v in chunks.into_remainder() {
            *v /= 1.0 + super::exp_approx(-*v);
        }
    }

    /// `o = h · gelu(gate)` with the exact-erf GELU of
    /// [`gelu_erf`](crate::nn::cpu_pointwise::gelu_erf), 8 lanes at a time.
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::nn) unsafe fn geglu_row(o: &mut [f32], h: &[f32], gate: &[f32]) {
        const C: [f32; 9] = [
            0.170_872_77,
            -0.822_152_23,
            1.488_515_9,
            -1.135_204,
            0.278_868_07,
            -0.186_288_06,
            0.096_784_18,
            0.374_091_96,
            1.000_023_7,
        ];
        let n = o.len().min(h.len()).min(gate.len());
        let body = n - n % 8;
        let sign = _mm256_set1_ps(-0.0);
        for i in (0..body).step_by(8) {
            // SAFETY: i + 8 ≤ n for all three slices.
            unsafe {
                let x = _mm256_loadu_ps(gate.as_ptr().add(i));
                let z = _mm256_mul_ps(
                    _mm256_andnot_ps(sign, x),
                    _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2),
                );
                let t = _mm256_div_ps(
                    _mm256_set1_ps(1.0),
                    _mm256_fmadd_ps(_mm256_set1_ps(0.5), z, _mm256_set1_ps(1.0)),
                );
                let mut q = _mm256_set1_ps(C[0]);
                for &c in &C[1..] {
                    q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(c));
                }
                // t·q − 1.2655 − z²
                let arg =
                    _mm256_fnmadd_ps(z, z, _mm256_fmadd_ps(t, q, _mm256_set1_ps(-1.265_512_2)));
                let erfc = _mm256_mul_ps(t, exp(arg));
                let pos = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ);
                let e = _mm256_blendv_ps(erfc, _mm256_sub_ps(_mm256_set1_ps(2.0), erfc), pos);
                let g = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5), x), e);
                let hv = _mm256_loadu_ps(h.as_ptr().add(i));
                _mm256_storeu_ps(o.as_mut_ptr().add(i), _mm256_mul_ps(hv, g));
            }
        }
        for i in body..n {
            o[i] = h[i] * crate::nn::cpu_pointwise::gelu_erf(gate[i]);
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn exp_matches_the_scalar_exp() {
            if !super::super::has_avx2_fma() {
                return;
            }
            let xs: Vec<f32> = (-900..=900).map(|i| i as f32 / 10.0).collect();
            let mut v = xs.clone();
            // SAFETY: AVX2 and FMA were detected.
            // Shift by the max, as the softmax does (the sum then stays finite).
            let sum = unsafe { super::exp_sub_sum(&mut v, 90.0) };
            let mut want_sum = 0f64;
            for (x, e) in xs.iter().zip(&v) {
                let want = (x - 90.0).clamp(-87.3, 88.0).exp();
                want_sum += want as f64;
                assert!(
                    ((e - want) / want).abs() < 4e-7,
                    "exp({x} − 90): {e} vs {want}"
                );
            }
            assert!(((sum as f64 - want_sum) / want_sum).abs() < 1e-5);
            // SAFETY: as above.
            assert_eq!(unsafe { super::max(&xs) }, 90.0);
            assert_eq!(unsafe { super::max(&xs[..5]) }, -89.6);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        for i in -870..=880 {
            let x = i as f32 / 10.0;
            let (a, b) = (exp_approx(x), x.exp());
            assert!(((a - b) / b).abs() < 4e-7, "exp({x}): {a} vs {b}");
        }
    }
}
