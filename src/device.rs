//! Choosing the burn device and dtype from strings (`--device`, `--dtype`).

use burn::tensor::{DType, Device};

use crate::{Error, Result};

/// The device named by `spec`: `cpu` (flex), `wgpu`, `cuda` or `cuda:N`.
///
/// A backend this binary was built without is [`Error::DeviceUnavailable`] naming the cargo
/// feature that enables it.
pub fn parse_device(spec: &str) -> Result<Device> {
    let unavailable = |feature: &str| Error::DeviceUnavailable {
        device: spec.to_string(),
        message: format!(
            "this build has no `{feature}` backend; rebuild with `cargo build --release --features {feature}`"
        ),
    };
    match spec {
        "cpu" | "flex" => Ok(Device::flex()),
        "wgpu" => {
            #[cfg(feature = "wgpu")]
            {
                Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
            }
            #[cfg(not(feature = "wgpu"))]
            {
                Err(unavailable("wgpu"))
            }
        }
        s if s == "cuda" || s.starts_with("cuda:") => {
            let index = match s.strip_prefix("cuda:") {
                None => None,
                Some(n) => Some(n.parse::<usize>().map_err(|_| {
                    Error::invalid(
                        "device",
                        format!("{s:?}: the CUDA index must be a number, as in cuda:0"),
                    )
                })?),
            };
            #[cfg(feature = "cuda")]
            {
                Ok(match index {
                    Some(i) => Device::cuda(i),
                    None => Device::cuda(burn::tensor::DeviceIndex::Default),
                })
            }
            #[cfg(not(feature = "cuda"))]
            {
                let _ = index;
                Err(unavailable("cuda"))
            }
        }
        other => Err(Error::invalid(
            "device",
            format!("{other:?}; expected cpu, wgpu, cuda or cuda:N"),
        )),
    }
}

/// The dtype named by `spec`: `f32`, `f16` or `bf16`.
pub fn parse_dtype(spec: &str) -> Result<DType> {
    match spec {
        "f32" | "fp32" => Ok(DType::F32),
        "f16" | "fp16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(Error::invalid(
            "dtype",
            format!("{other:?}; expected f32, f16 or bf16"),
        )),
    }
}
