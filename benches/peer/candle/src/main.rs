//! candle-transformers' side of the peer comparison (bench-only, its own Cargo workspace so the
//! main build never compiles candle). Loads SD 1.5 UNet weights (diffusers naming) with
//! candle-transformers 0.11's `stable_diffusion` UNet on the CPU, runs it on the inputs in INPUTS
//! (keys `sample`, `encoder_hidden_states`, `timestep`), prints the median time per step over
//! RUNS, and writes the output (key `eps`) to OUT.
//!
//! Usage: peer_candle WEIGHTS INPUTS OUT [RUNS]

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::stable_diffusion::StableDiffusionConfig;

fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (weights, inputs, out) = (
        a.first().context("WEIGHTS missing")?,
        a.get(1).context("INPUTS missing")?,
        a.get(2).context("OUT missing")?,
    );
    let runs: usize = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    let dev = Device::Cpu;
    // v1_5 without sliced attention (None), 512×512: the UNet config does not depend on the size.
    let cfg = StableDiffusionConfig::v1_5(None, None, None);
    let unet = cfg.build_unet(weights, &dev, 4, false, DType::F32)?;
    let inp = candle_core::safetensors::load(inputs, &dev)?;
    let sample = inp.get("sample").context("no `sample`")?;
    let ctx = inp
        .get("encoder_hidden_states")
        .context("no `encoder_hidden_states`")?;
    let t = inp
        .get("timestep")
        .context("no `timestep`")?
        .flatten_all()?
        .to_vec1::<f32>()?[0] as f64;
    let mut times = Vec::new();
    let mut eps: Option<Tensor> = None;
    for _ in 0..runs {
        let t0 = std::time::Instant::now();
        let e = unet.forward(sample, t, ctx)?;
        // candle is eager on the CPU; copying out makes sure every op has run.
        let e = Tensor::new(e.flatten_all()?.to_vec1::<f32>()?, &dev)?.reshape(e.shape())?;
        times.push(t0.elapsed().as_secs_f64());
        eps = Some(e);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "candle_cpu median_s {:.3} runs {:?}",
        times[times.len() / 2],
        times
    );
    let eps = eps.context("RUNS must be ≥ 1")?;
    candle_core::safetensors::save(&[("eps", eps)].into_iter().collect(), out)?;
    Ok(())
}
