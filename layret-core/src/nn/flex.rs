//! Access to the flex backend's primitive (`FlexTensor`) for layret's CPU kernels.

use burn::tensor::{DType, Tensor};
use burn_flex::{Flex, FlexTensor};

/// The flex primitive of an f32 tensor (sharing its storage; a strided view is made
/// contiguous), or `None` on another backend or dtype.
pub(crate) fn flex_f32<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    flex_of(t, DType::F32)
}

/// The flex primitive of a bf16 tensor (as [`flex_f32`]).
pub(crate) fn flex_bf16<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    flex_of(t, DType::BF16)
}

/// The flex primitive of a tensor of `dtype`, contiguous, or `None`.
fn flex_of<const D: usize>(t: &Tensor<D>, dtype: DType) -> Option<FlexTensor> {
    if t.dtype() != dtype {
        return None;
    }
    let p = t.clone().try_into_primitive::<Flex>().ok()?;
    if p.layout().is_contiguous() && p.layout().start_offset() == 0 {
        Some(p)
    } else {
        Some(p.to_contiguous())
    }
}

/// The values of a bf16 or f32 flex vector as f32 (a bias), or `None` on another backend or
/// dtype.
pub(crate) fn f32_values(t: &Tensor<1>) -> Option<Vec<f32>> {
    match flex_bf16(t) {
        Some(bf) => Some(
            bf.storage::<half::bf16>()
                .iter()
                .map(|v| v.to_f32())
                .collect(),
        ),
        None => Some(flex_f32(t)?.storage::<f32>().to_vec()),
    }
}
