//! The full-size check of the single-file layout: a random-weight SD 1.5 / 2.1 at the real
//! layer plan, written by `tools/reference/full_size_single_file.py` as a diffusers folder and
//! as an LDM single file. Loads either (the single file with the family's standard configs,
//! no `--config`) and prints the max abs error of the UNet, VAE decode and text encoder
//! against the PyTorch goldens, and the peak RSS over the weights held in memory.
//!
//! Usage (one load per process, so the peak RSS is that load's):
//!   single_file_check OUT_DIR sd15|sd21 folder|file|ckpt

use layret::burn::module::Module;
use layret::burn::tensor::{Device, Tensor};
use layret::core::processor::{DefaultAttention, StepContext};
use layret::core::stable_diffusion::{LoadOptions, StableDiffusion};
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
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [dir, model, which] = &a[..] else {
        eprintln!("usage: single_file_check OUT_DIR sd15|sd21 folder|file|ckpt");
        std::process::exit(2);
    };
    let root = std::path::Path::new(dir);
    let path = match which.as_str() {
        "file" => root.join(format!("{model}.safetensors")),
        "ckpt" => root.join(format!("{model}.ckpt")),
        _ => root.join(model),
    };
    let dev = Device::flex();
    let t0 = std::time::Instant::now();
    let sd = StableDiffusion::load(&path, &dev, &LoadOptions::default()).expect("load");
    let secs = t0.elapsed().as_secs_f64();
    let peak = vm_hwm_kb() * 1024;
    let params = sd.unet().num_params() + sd.vae().num_params() + sd.text_encoder().num_params();
    let g = Weights::open(root.join(format!("golden_{model}.safetensors")), &dev).expect("goldens");
    let t4 = |k: &str| -> Tensor<4> {
        let s = g.shape_of(k).expect(k).to_vec();
        g.tensor(k, [s[0], s[1], s[2], s[3]]).expect(k)
    };
    let t3 = |k: &str| -> Tensor<3> {
        let s = g.shape_of(k).expect(k).to_vec();
        g.tensor(k, [s[0], s[1], s[2]]).expect(k)
    };
    let err = |a: Tensor<4>, b: Tensor<4>| -> f32 {
        let v = (a - b).abs().max().into_scalar::<f32>();
        assert!(v.is_finite(), "non-finite output");
        v
    };
    let sample = t4("sample");
    let ctx = t3("encoder_hidden_states");
    let mut report = vec![];
    for t in [981.0, 1.0] {
        let e = sd
            .unet()
            .forward(
                sample.clone(),
                t,
                &ctx,
                &mut DefaultAttention,
                &StepContext::plain(0, t, 1),
            )
            .unwrap();
        report.push(format!(
            "unet t{t} {:.2e}",
            err(e, t4(&format!("eps_t{t}")))
        ));
    }
    let dec = sd.vae().decode(t4("latents")).expect("decode");
    report.push(format!("vae {:.2e}", err(dec, t4("decoded"))));
    let bytes = std::fs::read(root.join(format!("golden_{model}.safetensors"))).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("goldens");
    let ids: Vec<u32> = st
        .tensor("input_ids")
        .expect("input_ids")
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as u32)
        .collect();
    let h = sd.text_encoder().encode(&[ids], 0).expect("encode");
    let want = t3("last_hidden_state");
    let he = (h - want).abs().max().into_scalar::<f32>();
    report.push(format!("text {he:.2e}"));
    println!(
        "{model} {which}: loaded in {secs:.1}s; {}; params {params} ({:.2} GB f32); peak RSS {:.2} GB = {:.3}× the weights",
        report.join(", "),
        params as f64 * 4.0 / 1e9,
        peak as f64 / 1e9,
        peak as f64 / (params as f64 * 4.0)
    );
}
