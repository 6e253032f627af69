//! Copying tensor values to host memory.

use burn::tensor::Tensor;

use crate::error::{Error, Result};

/// The values of `t` as f32, row-major (converting from the tensor's dtype).
pub fn to_f32_vec<const D: usize>(t: Tensor<D>, what: &str) -> Result<Vec<f32>> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::invalid(what, format!("cannot read the values back: {e:?}")))
}

/// A stable name of a float dtype (`f32`, `f16`, `bf16`, …) for messages and cache keys.
pub fn dtype_name(dtype: burn::tensor::DType) -> &'static str {
    use burn::tensor::DType;
    match dtype {
        DType::F64 => "f64",
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "other",
    }
}
