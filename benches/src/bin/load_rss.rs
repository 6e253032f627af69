//! Load a UNet weights file (SD 1.5 architecture) and print the parameter bytes, the file
//! size and the process's peak RSS (VmHWM), to check that loading makes no double copies.
//!
//! Usage: load_rss WEIGHTS.safetensors [f32|f16|bf16]   (the dtype the weights are held in)

use layret::burn::tensor::{DType, Device};
use layret::core::unet::{UNet2DConditionModel, UNetConfig};
use layret::core::weights::Weights;

fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: load_rss WEIGHTS.safetensors [f32|f16|bf16]");
    let dtype = match args.next().as_deref() {
        Some("f16") => DType::F16,
        Some("bf16") => DType::BF16,
        _ => DType::F32,
    };
    let before = vm_hwm_kb();
    let t = std::time::Instant::now();
    let w = Weights::open_as(&path, &Device::flex(), dtype).unwrap();
    let unet = UNet2DConditionModel::load(&w, &UNetConfig::v1_5()).unwrap();
    w.finish(|_| false).unwrap();
    let secs = t.elapsed().as_secs_f64();
    drop(w);
    let file = std::fs::metadata(&path).unwrap().len();
    let params: usize = layret::burn::module::Module::num_params(&unet);
    let bytes_per = if dtype == DType::F32 { 4 } else { 2 };
    // Every parameter really is held in the dtype asked for.
    let held = unet.dtype();
    assert_eq!(
        held, dtype,
        "the weights are held in {held:?}, not {dtype:?}"
    );
    let peak = vm_hwm_kb() * 1024;
    println!(
        "file {:.1} MB, params {} ({:.1} MB as {:?}), load {:.1}s, peak RSS {:.1} MB (before {:.1} MB), ratio peak/weights {:.2}",
        file as f64 / 1e6,
        params,
        (params * bytes_per) as f64 / 1e6,
        dtype,
        secs,
        peak as f64 / 1e6,
        before as f64 * 1024.0 / 1e6,
        peak as f64 / (params * bytes_per) as f64
    );
    drop(unet);
}
