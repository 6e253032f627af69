//! Write SD 1.5-architecture UNet weights (random, seeded) in diffusers naming to a
//! safetensors file, f32 or f16: the one file benches and peer comparisons load.
//!
//! Usage: sd15_weights OUT.safetensors [f32|f16]

use layret::burn::tensor::{DType, Device};
use layret::core::noise::NoiseRng;

fn main() {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .expect("usage: sd15_weights OUT.safetensors [f32|f16]");
    let f16 = matches!(args.next().as_deref(), Some("f16"));
    // The architecture's key list, from a random build of the model.
    let (_, w) = layret_benches::sd15_unet(&Device::flex(), DType::F32, 0);
    let keys = w.requested();
    let mut rng = NoiseRng::new(1234);
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(keys.len());
    let mut total = 0usize;
    for (key, shape) in keys {
        let n: usize = shape.iter().product();
        let is_norm_weight = key.contains("norm") && key.ends_with("weight");
        let vals = rng.normals(n);
        let vals = vals.into_iter().map(|v| {
            if is_norm_weight {
                1.0 + 0.02 * v
            } else {
                0.02 * v
            }
        });
        let bytes: Vec<u8> = if f16 {
            vals.flat_map(|v| half::f16::from_f32(v).to_le_bytes())
                .collect()
        } else {
            vals.flat_map(|v| v.to_le_bytes()).collect()
        };
        total += n;
        data.push((key, shape, bytes));
    }
    let dtype = if f16 {
        safetensors::Dtype::F16
    } else {
        safetensors::Dtype::F32
    };
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(dtype, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, std::path::Path::new(&out)).unwrap();
    eprintln!("wrote {out}: {} tensors, {total} parameters", data.len());
}
