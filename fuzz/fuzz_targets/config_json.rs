//! UNet, VAE, text-encoder and scheduler configs from arbitrary bytes: parse, validate, and
//! derive the level plan without panicking.
#![no_main]

use std::path::Path;

use layret_core::clip::ClipTextConfig;
use layret_core::scheduler::{DdimScheduler, SchedulerConfig};
use layret_core::unet::UNetConfig;
use layret_core::vae::VaeConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = Path::new("fuzz/config.json");
    if let Ok(c) = serde_json::from_slice::<UNetConfig>(data) {
        if c.validate(p).is_ok() {
            let _ = c.levels();
            let _ = c.down_types();
        }
    }
    if let Ok(c) = serde_json::from_slice::<VaeConfig>(data) {
        if c.validate(p).is_ok() {
            let _ = c.downsample_factor();
        }
    }
    if let Ok(c) = serde_json::from_slice::<ClipTextConfig>(data) {
        let _ = c.validate(p);
    }
    if let Ok(c) = serde_json::from_slice::<SchedulerConfig>(data) {
        if c.validate(p).is_ok() && c.num_train_timesteps <= 10_000 {
            for n in [1usize, 7, 50] {
                let _ = DdimScheduler::new(c.clone(), n, 0.0);
            }
        }
    }
});
