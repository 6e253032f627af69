//! Access to the flex backend's primitive (`FlexTensor`) for layret's CPU kernels.

use burn::tensor::{DType, Tensor};
use burn_flex::{Flex, FlexTensor};

/// The flex primitive of an f32 tensor (sharing its storage; a strided view is made
/// contiguous), or `None` on another backend or dtype.
pub(crate) fn flex_f32<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let p = t.clone().try_into_primitive::<Flex>().ok()?;
    if p.layout().is_contiguous() && p.layout().start_offset() == 0 {
        Some(p)
    } else {
        Some(p.to_contiguous())
    }
}
