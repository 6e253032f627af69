use burn::tensor::{Device, Int, Tensor};

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
    x.select(2, nearest_index_tensor(h, height, &device))
        .select(3, nearest_index_tensor(w, width, &device))
}

/// [`nearest_indices`] as an index tensor computed on `device` (integer arithmetic there, no
/// upload from the host).
///
/// # Shapes
/// `[output]`.
pub fn nearest_index_tensor(input: usize, output: usize, device: &Device) -> Tensor<1, Int> {
    Tensor::<1, Int>::arange(0..output as i64, device)
        .mul_scalar(input as i64)
        .div_scalar(output as i64)
}
