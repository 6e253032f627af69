//! Shared helpers of layret's benches and measurement tools: the SD 1.5 UNet with random
//! weights, and the device list benches run on.

use layret::burn::tensor::{DType, Device};
use layret::core::unet::{UNet2DConditionModel, UNetConfig};
use layret::core::weights::Weights;

/// The devices compiled into this build: flex always, wgpu/cuda with their features.
pub fn devices() -> Vec<(&'static str, Device)> {
    #[allow(unused_mut)]
    let mut v = vec![("flex", Device::flex())];
    #[cfg(feature = "wgpu")]
    v.push((
        "wgpu",
        layret::device::parse_device("wgpu").expect("wgpu device"),
    ));
    #[cfg(feature = "cuda")]
    v.push((
        "cuda",
        layret::device::parse_device("cuda").expect("cuda device"),
    ));
    v
}

/// SD 1.5's UNet with N(0, 0.02²) random weights (seeded), and the weights it asked for.
pub fn sd15_unet(device: &Device, dtype: DType, seed: u64) -> (UNet2DConditionModel, Weights) {
    let w = Weights::random(device, dtype, seed, 0.02);
    let unet = UNet2DConditionModel::load(&w, &UNetConfig::v1_5()).expect("v1_5 preset loads");
    (unet, w)
}
