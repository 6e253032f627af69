//! Copying tensor values to host memory — the one door for device→host reads.
//!
//! Every read of tensor values by layret's library code goes through this module and is
//! counted ([`device_reads`]), so tests can show that a sampling step on a GPU backend reads
//! nothing back (each read is a synchronization point that stalls the device's queue). The
//! flex CPU kernels read their operands in place and are not counted: on flex, tensors live
//! in host memory. With `LAYRET_TRACE_READS=1` in the environment each read prints its
//! backtrace to stderr.

use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::{Bool, Device, Tensor};

use crate::error::{Error, Result};

static DEVICE_READS: AtomicU64 = AtomicU64::new(0);

/// How many device→host reads of tensor values layret's library code has made in this
/// process (all threads).
pub fn device_reads() -> u64 {
    DEVICE_READS.load(Ordering::Relaxed)
}

/// Count one read; with `LAYRET_TRACE_READS` set, print where it came from (a backtrace).
fn count_read() {
    DEVICE_READS.fetch_add(1, Ordering::Relaxed);
    if std::env::var_os("LAYRET_TRACE_READS").is_some() {
        eprintln!(
            "layret: device→host read\n{}",
            std::backtrace::Backtrace::force_capture()
        );
    }
}

/// Whether tensors on `device` live in host memory (the flex CPU backend), where reading
/// them back costs no transfer and no queue synchronization.
pub fn is_host_resident(device: &Device) -> bool {
    *device == Device::flex()
}

/// The values of `t` as f32, row-major (converting from the tensor's dtype).
pub fn to_f32_vec<const D: usize>(t: Tensor<D>, what: &str) -> Result<Vec<f32>> {
    count_read();
    t.into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::invalid(what, format!("cannot read the values back: {e:?}")))
}

/// The values of `t` as f16, row-major (cast on the device first, so half the bytes cross).
pub fn to_f16_vec<const D: usize>(t: Tensor<D>, what: &str) -> Result<Vec<half::f16>> {
    count_read();
    t.cast(burn::tensor::DType::F16)
        .into_data()
        .convert::<half::f16>()
        .try_into_vec::<half::f16>()
        .map_err(|e| Error::invalid(what, format!("cannot read the values back: {e:?}")))
}

/// The values of a boolean tensor, row-major (read as 0/1 floats: every backend can).
pub fn to_bool_vec<const D: usize>(t: Tensor<D, Bool>, what: &str) -> Result<Vec<bool>> {
    Ok(to_f32_vec(t.float(), what)?
        .into_iter()
        .map(|v| v != 0.0)
        .collect())
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

/// `Ok` if `device` computes in `dtype`, else [`Error::UnsupportedDtype`](crate::Error) naming
/// the float dtypes it does support (checked before any weight is created: burn's GPU
/// backends panic, or compute garbage, in a dtype the device lacks).
pub fn check_dtype(device: &burn::tensor::Device, dtype: burn::tensor::DType) -> crate::Result<()> {
    check_dtype_with(&format!("{device:?}"), dtype, |d| device.supports_dtype(d))
}

/// [`check_dtype`] for a device named `device` that supports what `supports` says.
pub fn check_dtype_with(
    device: &str,
    dtype: burn::tensor::DType,
    supports: impl Fn(burn::tensor::DType) -> bool,
) -> crate::Result<()> {
    use burn::tensor::DType;
    if supports(dtype) {
        return Ok(());
    }
    let alternatives: Vec<&str> = [DType::F16, DType::BF16, DType::F32]
        .into_iter()
        .filter(|&d| supports(d))
        .map(dtype_name)
        .collect();
    Err(crate::Error::UnsupportedDtype {
        device: device.to_string(),
        dtype: dtype_name(dtype).into(),
        alternatives: alternatives.join(" or "),
    })
}
