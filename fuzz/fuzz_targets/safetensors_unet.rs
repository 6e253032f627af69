//! Arbitrary bytes as the tiny UNet's weights file: open, validate, build the model (and run
//! it when that succeeds).
#![no_main]

use std::path::Path;

use burn::tensor::{DType, Device, Tensor};
use layret_core::attention::{DefaultAttention, StepContext};
use layret_core::unet::{UNet2DConditionModel, UNetConfig};
use layret_core::weights::Weights;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = std::env::temp_dir().join(format!("layret-fuzz-unet-{}.safetensors", std::process::id()));
    if std::fs::write(&f, data).is_err() {
        return;
    }
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/sd1-tiny/unet"));
    let Ok(cfg) = UNetConfig::from_file(&dir.join("config.json")) else { return };
    let dev = Device::flex();
    let Ok(w) = Weights::open_as(&f, &dev, DType::F32) else { return };
    if let Ok(unet) = UNet2DConditionModel::load(&w, &cfg) {
        let x = Tensor::<4>::zeros([1, 4, 8, 8], &dev);
        let c = Tensor::<3>::zeros([1, 77, 16], &dev);
        if unet.check_inputs(&x, &c).is_ok() {
            let _ = unet.forward(x, 1.0, &c, &mut DefaultAttention, &StepContext::plain(0, 1.0, 1));
        }
    }
});
