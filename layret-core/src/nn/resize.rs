use burn::tensor::{Int, Tensor, TensorData};

/// Source indices of a nearest-neighbour resize from `input` to `output` samples:
/// `src = ⌊dst · input / output⌋` (PyTorch's `nearest`, and docs/method.md's rule).
pub fn nearest_indices(input: usize, output: usize) -> Vec<usize> {
    (0..output).map(|d| (d * input) / output).collect()
}

/// Nearest-neighbour resize of the last two axes to `[height, width]`.
///
/// # Shapes
/// `[B, C, H, W]` → `[B, C, height, width]`.
pub fn resize_nearest(x: Tensor<4>, height: usize, width: usize) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    if (h, w) == (height, width) {
        return x;
    }
    if height == 2 * h && width == 2 * w {
        // Exact 2× upsampling: a broadcast copy, no gather.
        return x
            .reshape([b, c, h, 1, w, 1])
            .expand([b, c, h, 2, w, 2])
            .reshape([b, c, height, width]);
    }
    let device = x.device();
    let idx = |input: usize, output: usize| {
        let v: Vec<i64> = nearest_indices(input, output)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        Tensor::<1, Int>::from_data(TensorData::new(v, [output]), &device)
    };
    x.select(2, idx(h, height)).select(3, idx(w, width))
}
