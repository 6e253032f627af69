//! UNet forward at SD 1.5 architecture (random weights), batch 2 (one CFG pair), latents 32×32
//! and 64×64, on every backend compiled in.

use criterion::{Criterion, criterion_group, criterion_main};
use layret::burn::tensor::{DType, Tensor};
use layret::core::noise::seeded_noise;
use layret::core::processor::{DefaultAttention, StepContext};

fn unet(c: &mut Criterion) {
    for (name, device) in layret_benches::devices() {
        let (unet, _) = layret_benches::sd15_unet(&device, DType::F32, 0);
        let context: Tensor<3> = seeded_noise(2, [2, 77, 768], &device);
        let mut group = c.benchmark_group(format!("unet_sd15_{name}"));
        group.sample_size(10);
        for side in [32usize, 64] {
            let sample: Tensor<4> = seeded_noise(1, [2, 4, side, side], &device);
            let ctx = StepContext::plain(0, 500.0, 2);
            group.bench_function(format!("b2_{side}x{side}"), |b| {
                b.iter(|| {
                    let eps = unet
                        .forward(sample.clone(), 500.0, &context, &mut DefaultAttention, &ctx)
                        .unwrap();
                    // Wait for the result (GPU backends run asynchronously).
                    let _ = eps.slice([0..1, 0..1, 0..1, 0..1]).into_data();
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, unet);
criterion_main!(benches);
