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
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = UNetConfig::from_json(text, p) {
            let _ = c.levels();
        }
        let _ = ClipTextConfig::from_json(text, p);
        if let Ok(c) = VaeConfig::from_json(text, p) {
            let _ = c.downsample_factor();
        }
    }
    if let Ok(c) = serde_json::from_slice::<SchedulerConfig>(data) {
        if c.validate(p).is_ok() && c.num_train_timesteps <= 10_000 {
            for n in [1usize, 7, 50] {
                let _ = DdimScheduler::new(c.clone(), n, 0.0);
            }
        }
    }
});
