//! Turning attention maps into masks, exactly as docs/method.md defines each operation.

use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Int, Tensor, TensorData};
use layret_core::Result;
pub use layret_core::nn::{nearest_index_tensor, nearest_indices, resize_nearest};

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
///
/// Contiguous runs of positions are summed as slices on the device (no index tensor is
/// uploaded); a subject word's tokens are one run.
pub fn select_tokens(maps: Tensor<3>, tokens: &[usize]) -> Tensor<2> {
    let [rows, lq, _] = maps.dims();
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for &t in tokens {
        match runs.last_mut() {
            Some(last) if last.end == t => last.end += 1,
            _ => runs.push(t..t + 1),
        }
    }
    let mut sum: Option<Tensor<2>> = None;
    for r in runs {
        let part = maps
            .clone()
            .slice([0..rows, 0..lq, r])
            .sum_dim(2)
            .squeeze_dim::<2>(2);
        sum = Some(match sum {
            Some(s) => s + part,
            None => part,
        });
    }
    sum.unwrap_or_else(|| Tensor::zeros([rows, lq], &maps.device()))
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
///
/// On the flex CPU this is [`otsu_boundary`] in f64, as docs/method.md defines it; on other
/// devices [`otsu_on_device`] (no device→host read).
pub fn otsu(map: Tensor<2>) -> Result<Tensor<2>> {
    if !layret_core::host::is_host_resident(&map.device()) {
        return Ok(otsu_on_device(map));
    }
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

/// Values per chunk of the on-device histogram (bounds its `[rows, chunk, 256]` one-hot).
const HISTOGRAM_CHUNK: usize = 1024;

/// [`otsu`] computed with tensor operations on the map's device: the same bins, boundaries,
/// scores and first-maximum rule as [`otsu_boundary`], with the scores in f32 instead of f64.
/// Counts and bin sums are integers below 2²⁴, exact in f32; only boundaries whose f64 scores
/// differ by less than f32's rounding (≈ 1e-7 relative) could be ordered differently.
///
/// # Shapes
/// `[rows, N]` → `[rows, N]` (0/1).
pub fn otsu_on_device(map: Tensor<2>) -> Tensor<2> {
    let [rows, n] = map.dims();
    let device = map.device();
    let bins = (map.cast(burn::tensor::DType::F32) * 256.0)
        .floor()
        .clamp(0.0, 255.0);
    let levels = Tensor::<1, Int>::arange(0..256, &device).float();
    // hist[r, i] = #{values of row r in bin i}, in chunks of the values.
    let mut hist = Tensor::<2>::zeros([rows, 256], &device);
    let mut start = 0;
    while start < n {
        let end = (start + HISTOGRAM_CHUNK).min(n);
        let part = bins
            .clone()
            .slice([0..rows, start..end])
            .unsqueeze_dim::<3>(2);
        let onehot = part
            .equal(
                levels
                    .clone()
                    .reshape([1, 1, 256])
                    .expand([rows, end - start, 256]),
            )
            .float();
        hist = hist + onehot.sum_dim(1).squeeze_dim::<2>(1);
        start = end;
    }
    // Class 0 of boundary b (1..=255) holds bins 0..b: cumulative sums up to bin b − 1.
    let n0 = hist.clone().cumsum(1).slice([0..rows, 0..255]);
    let s0 = (hist.clone() * levels.clone().reshape([1, 256]))
        .cumsum(1)
        .slice([0..rows, 0..255]);
    let total_sum = (hist * levels.reshape([1, 256])).sum_dim(1); // [rows, 1]
    let total = n as f64;
    let n1 = n0.clone().neg().add_scalar(total);
    let s1 = s0.clone().neg() + total_sum;
    let empty = n0
        .clone()
        .equal_elem(0.0)
        .bool_or(n1.clone().equal_elem(0.0));
    let m0 = s0 / n0.clone().clamp_min(1.0);
    let m1 = s1 / n1.clone().clamp_min(1.0);
    let diff = m0 - m1;
    let score = (n0 / total) * (n1 / total) * diff.clone() * diff;
    let score = score.mask_fill(empty, 0.0);
    // The first maximal boundary: the smallest index whose score equals the row's maximum.
    let best = score.clone().max_dim(1);
    let index = Tensor::<1, Int>::arange(0..255, &device)
        .float()
        .reshape([1, 255])
        .expand([rows, 255]);
    let at_max = score.equal(best.expand([rows, 255]));
    let first = index.mask_fill(at_max.bool_not(), 255.0).min_dim(1); // [rows, 1]
    let boundary = first.add_scalar(1.0);
    bins.greater_equal(boundary.expand([rows, n])).float()
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
    fn otsu_on_device_agrees_with_the_f64_definition() {
        // Ties (two clusters with empty bins between), one-bin rows, values at 0 and 1, and
        // random maps wider than a histogram chunk.
        let mut rows: Vec<Vec<f32>> = vec![
            vec![0.1, 0.1, 0.1, 0.9],
            vec![0.0, 0.0, 0.0, 0.0],
            vec![0.0, 1.0, 1.0, 1.0],
            vec![0.5, 0.5, 0.5, 0.5],
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        // Uniform, skewed and bimodal random rows.
        let mut wide: Vec<Vec<f32>> = Vec::new();
        for r in 0..6 {
            let row: Vec<f32> = (0..2500)
                .map(|i| {
                    let u = next();
                    match r % 3 {
                        0 => u,
                        1 => u * u * u,
                        _ => {
                            if i % 5 == 0 {
                                0.7 + 0.3 * u
                            } else {
                                0.2 * u
                            }
                        }
                    }
                })
                .collect();
            wide.push(row);
        }
        for (set, width) in [(&mut rows, 4usize), (&mut wide, 2500)] {
            let flat: Vec<f32> = set.iter().flatten().copied().collect();
            let host = vals(otsu(t2(&flat, set.len())).unwrap());
            let device = vals(otsu_on_device(t2(&flat, set.len())));
            assert_eq!(host, device, "width {width}");
            // And the host path is the definition, row by row.
            for (i, row) in set.iter().enumerate() {
                let b = otsu_boundary(row);
                let want: Vec<f32> = row
                    .iter()
                    .map(|&v| (((256.0 * v as f64).floor() as usize).min(255) >= b) as u8 as f32)
                    .collect();
                assert_eq!(&host[i * width..(i + 1) * width], &want[..]);
            }
        }
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
