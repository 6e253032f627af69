//! Turning attention maps into masks, exactly as docs/method.md defines each operation.

use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Int, Tensor, TensorData};
use layret_core::Result;
pub use layret_core::nn::{nearest_indices, resize_nearest};

use crate::store::AttentionRecord;

/// The head-averaged maps of `records` averaged over layers: `[rows, Lq, Lk]`.
///
/// Returns `None` when `records` is empty.
pub fn average_layers(records: &[&AttentionRecord]) -> Option<Tensor<3>> {
    let n = records.len();
    let mut sum: Option<Tensor<3>> = None;
    for r in records {
        let m = r.probs.clone().mean_dim(1).squeeze_dim::<3>(1);
        sum = Some(match sum {
            Some(s) => s + m,
            None => m,
        });
    }
    sum.map(|s| s / n as f64)
}

/// The sum over token positions `tokens` of `[rows, Lq, Lk]` maps: `[rows, Lq]`.
pub fn select_tokens(maps: Tensor<3>, tokens: &[usize]) -> Tensor<2> {
    let device = maps.device();
    let idx: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [tokens.len()]), &device);
    maps.select(2, idx).sum_dim(2).squeeze_dim::<2>(2)
}

/// Per-row min-max normalization to [0, 1]; a row with max = min becomes all zeros.
pub fn min_max_normalize(map: Tensor<2>) -> Tensor<2> {
    let min = map.clone().min_dim(1);
    let max = map.clone().max_dim(1);
    let range = max - min.clone();
    let flat = range.clone().equal_elem(0.0);
    let safe = range.mask_fill(flat.clone(), 1.0);
    let out = (map - min) / safe;
    let dims = out.dims();
    out.mask_fill(flat.expand(dims), 0.0)
}

/// `map ≥ tau` as 0/1 floats.
pub fn threshold(map: Tensor<2>, tau: f64) -> Tensor<2> {
    map.greater_equal_elem(tau).float()
}

/// Otsu's boundary over 256 bins, in f64, as docs/method.md defines it: bin `min(⌊256·v⌋, 255)`;
/// for each boundary `b` in 1..=255, class 0 = bins < b, class 1 = bins ≥ b, `w` = class
/// count / total, `μ` = mean bin index of the class; score `w0·w1·(μ0 − μ1)²`, 0 if a class is
/// empty; the first maximal `b` wins. The subject is `bin ≥ b`.
pub fn otsu_boundary(values: &[f32]) -> usize {
    let mut hist = [0u64; 256];
    for &v in values {
        let bin = ((256.0 * v as f64).floor().max(0.0) as usize).min(255);
        hist[bin] += 1;
    }
    let total = values.len() as f64;
    let (mut best_b, mut best) = (1usize, f64::NEG_INFINITY);
    for b in 1..=255usize {
        let (mut n0, mut s0, mut n1, mut s1) = (0u64, 0f64, 0u64, 0f64);
        for (i, &c) in hist.iter().enumerate() {
            if i < b {
                n0 += c;
                s0 += (i as u64 * c) as f64;
            } else {
                n1 += c;
                s1 += (i as u64 * c) as f64;
            }
        }
        let score = if n0 == 0 || n1 == 0 {
            0.0
        } else {
            let (w0, w1) = (n0 as f64 / total, n1 as f64 / total);
            let (m0, m1) = (s0 / n0 as f64, s1 / n1 as f64);
            w0 * w1 * (m0 - m1) * (m0 - m1)
        };
        if score > best {
            best = score;
            best_b = b;
        }
    }
    best_b
}

/// Per-row Otsu binarization of maps in [0, 1]: `[rows, N]` → 0/1.
pub fn otsu(map: Tensor<2>) -> Result<Tensor<2>> {
    let [rows, n] = map.dims();
    let device = map.device();
    let values = layret_core::host::to_f32_vec(map, "attention map")?;
    let mut out = Vec::with_capacity(rows * n);
    for row in values.chunks(n.max(1)).take(rows) {
        let b = otsu_boundary(row);
        out.extend(row.iter().map(|&v| {
            let bin = ((256.0 * v as f64).floor().max(0.0) as usize).min(255);
            if bin >= b { 1.0f32 } else { 0.0 }
        }));
    }
    Ok(Tensor::from_data(TensorData::new(out, [rows, n]), &device))
}

/// 3×3 max-pool dilation with stride 1 and zero padding 1 (masks are ≥ 0, so padding with
/// zeros and with −∞ agree).
///
/// # Shapes
/// `[B, 1, h, w]` → `[B, 1, h, w]`.
pub fn dilate3x3(mask: Tensor<4>) -> Tensor<4> {
    let mut options = MaxPoolOptions::new([3, 3]);
    options.stride = [1, 1];
    options.padding = [(1, 1), (1, 1)];
    options.dilation = [1, 1];
    options.ceil_mode = false;
    max_pool2d(mask, options)
}

/// A mask (or map) `[n, 1, H, W]` resized to the feature map of `site` by the nearest rule,
/// flattened to its tokens: `[n, site.height · site.width]` — what a processor multiplies
/// with the site's queries or keys.
pub fn mask_at_site(mask: Tensor<4>, site: &layret_core::processor::AttentionSite) -> Tensor<2> {
    let n = mask.dims()[0];
    resize_nearest(mask, site.height, site.width).reshape([n, site.height * site.width])
}

/// `[rows, h·w]` → `[rows, 1, h, w]`.
pub fn to_spatial(map: Tensor<2>, height: usize, width: usize) -> Tensor<4> {
    let rows = map.dims()[0];
    map.reshape([rows, 1, height, width])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn t2(v: &[f32], rows: usize) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(v.to_vec(), [rows, v.len() / rows]),
            &Device::flex(),
        )
    }

    fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    #[test]
    fn otsu_on_literal_values() {
        // Two clusters: bins 25 (v=0.1) ×3 and 230 (v=0.9) ×1. Every b in 26..=230 separates
        // them with the same score; the first maximal one (26) wins.
        assert_eq!(otsu_boundary(&[0.1, 0.1, 0.1, 0.9]), 26);
        // All in one bin: every score is 0, so b = 1; value 0 (bin 0) is below it.
        assert_eq!(otsu_boundary(&[0.0, 0.0]), 1);
        // v = 1.0 goes to bin 255.
        assert_eq!(otsu_boundary(&[0.0, 1.0]), 1);
        let m = otsu(t2(&[0.1, 0.1, 0.1, 0.9, 0.0, 1.0, 0.5, 0.5], 2)).unwrap();
        assert_eq!(vals(m), vec![0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn normalize_threshold_select() {
        let m = min_max_normalize(t2(&[1.0, 3.0, 2.0, 5.0, 5.0, 5.0], 2));
        assert_eq!(vals(m.clone()), vec![0.0, 1.0, 0.5, 0.0, 0.0, 0.0]);
        assert_eq!(vals(threshold(m, 0.5)), vec![0.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
        let maps = Tensor::<3>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [1, 2, 3]),
            &Device::flex(),
        );
        assert_eq!(vals(select_tokens(maps, &[0, 2])), vec![4.0, 10.0]);
    }

    #[test]
    fn dilation_and_resize() {
        let mut v = vec![0.0f32; 16];
        v[5] = 1.0; // (1, 1) of a 4×4
        let m = Tensor::<4>::from_data(TensorData::new(v, [1, 1, 4, 4]), &Device::flex());
        let d = vals(dilate3x3(m.clone()));
        let want: Vec<f32> = (0..16)
            .map(|i| if i / 4 <= 2 && i % 4 <= 2 { 1.0 } else { 0.0 })
            .collect();
        assert_eq!(d, want);
        assert_eq!(nearest_indices(4, 8), vec![0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(nearest_indices(4, 3), vec![0, 1, 2]);
        assert_eq!(nearest_indices(3, 4), vec![0, 0, 1, 2]);
        let r = resize_nearest(m, 2, 2);
        assert_eq!(vals(r), vec![0.0, 0.0, 0.0, 0.0]);
    }
}
