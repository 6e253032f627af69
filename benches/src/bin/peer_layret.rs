//! layret's side of the peer comparison: load SD 1.5 UNet weights (diffusers naming), run the
//! UNet on the inputs in INPUTS (keys `sample`, `encoder_hidden_states`, `timestep`), print the
//! median time per step over RUNS, and write the output (key `eps`) to OUT.
//!
//! Usage: peer_layret WEIGHTS INPUTS OUT [RUNS] [DTYPE]
//!
//! DTYPE (f32, bf16 or f16; default f32) is the dtype the UNet holds its weights and computes
//! in; the inputs and the output stay f32 (the UNet casts at its boundary).

use layret::burn::tensor::{DType, Device, Tensor};
use layret::core::noise::{load_tensor, save_tensors};
use layret::core::processor::{DefaultAttention, StepContext};
use layret::core::unet::{UNet2DConditionModel, UNetConfig};
use layret::core::weights::Weights;

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (weights, inputs, out) = (&a[0], &a[1], &a[2]);
    let runs: usize = a.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    let dtype = match a.get(4).map(String::as_str) {
        None | Some("f32") => DType::F32,
        Some("bf16") => DType::BF16,
        Some("f16") => DType::F16,
        Some(other) => panic!("DTYPE {other:?}: expected f32, bf16 or f16"),
    };
    // As the `layret` binary does: freed activation buffers reused, not re-faulted.
    layret::allocator::keep_freed_memory();
    let dev = Device::flex();
    let w = Weights::open_as(weights, &dev, dtype).unwrap();
    let unet = UNet2DConditionModel::load(&w, &UNetConfig::v1_5()).unwrap();
    drop(w);
    let iw = Weights::open(inputs, &dev).unwrap();
    let s = iw.shape_of("sample").unwrap().to_vec();
    let sample: Tensor<4> =
        load_tensor(inputs.as_ref(), "sample", [s[0], s[1], s[2], s[3]], &dev).unwrap();
    let c = iw.shape_of("encoder_hidden_states").unwrap().to_vec();
    let ctx: Tensor<3> = iw
        .tensor("encoder_hidden_states", [c[0], c[1], c[2]])
        .unwrap();
    let t = iw.read_f32("timestep", &[1]).unwrap()[0] as f64;
    let sc = StepContext::plain(0, t, s[0]);
    let mut times = Vec::new();
    let mut eps = None;
    for _ in 0..runs {
        let t0 = std::time::Instant::now();
        let e = unet
            .forward(sample.clone(), t, &ctx, &mut DefaultAttention, &sc)
            .unwrap();
        let e = Tensor::from_data(e.into_data(), &dev);
        times.push(t0.elapsed().as_secs_f64());
        eps = Some(e);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "layret_flex median_s {:.3} runs {:?}",
        times[times.len() / 2],
        times
    );
    save_tensors(out.as_ref(), &[("eps", eps.unwrap())]).unwrap();
}
