use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::Result;
use crate::nn::Linear;
use crate::weights::WeightsView;

/// diffusers' `Timesteps` (the UNet's `time_proj`): the sinusoidal embedding of a timestep.
///
/// `emb[i] = t · f_i` with `f_i = exp(−ln(10000)·i / (half − shift))`, then `[sin, cos]` (or
/// `[cos, sin]` when `flip_sin_to_cos`). The frequencies are computed once, in f32 on the host
/// as PyTorch does, and uploaded with the model; each step multiplies them by `t` on the
/// device (no upload, no read), reduces the arguments to `[−π, π]` (Cody–Waite, exact for
/// SD's timesteps) and takes sin/cos there — within ≈ 3e-7 of PyTorch's `sin(t·f_i)`, also on
/// GPUs whose sin is only accurate near zero.
#[derive(Module, Debug)]
pub struct Timesteps {
    /// `[half]`.
    pub freqs: Tensor<1>,
    /// `flip_sin_to_cos`.
    pub flip_sin_to_cos: bool,
}

impl Timesteps {
    /// The embedding of width `dim` (even) on `device`.
    pub fn new(dim: usize, flip_sin_to_cos: bool, freq_shift: f64, device: &Device) -> Self {
        let half = dim / 2;
        let freqs: Vec<f32> = (0..half)
            .map(|i| (-(10000f32.ln()) * (i as f32) / (half as f32 - freq_shift as f32)).exp())
            .collect();
        Self {
            freqs: Tensor::from_data(TensorData::new(freqs, [half]), device),
            flip_sin_to_cos,
        }
    }

    /// The embedding of `timestep` for `batch` rows.
    ///
    /// # Shapes
    /// `[batch, dim]`.
    pub fn forward(&self, timestep: f64, batch: usize) -> Tensor<2> {
        // 2π = C1 + C2 + C3 with C1 = 201/32 (k·C1 exact for |k| < 2¹⁵) and C2, C3 its f32 tail.
        const C1: f32 = 6.28125;
        const C2: f32 = 0.001_935_307_2;
        const C3: f32 = 1.025_313_2e-11;
        let arg = self.freqs.clone().mul_scalar(timestep as f32);
        let k = (arg.clone() * (1.0 / std::f64::consts::TAU)).round();
        let r = arg - k.clone() * C1 as f64 - k.clone() * C2 as f64 - k * C3 as f64;
        let (sin, cos) = (r.clone().sin(), r.cos());
        let row = if self.flip_sin_to_cos {
            Tensor::cat(vec![cos, sin], 0)
        } else {
            Tensor::cat(vec![sin, cos], 0)
        };
        let dim = row.dims()[0];
        row.reshape([1, dim]).expand([batch, dim])
    }
}

/// diffusers' `TimestepEmbedding`: `linear_2(silu(linear_1(x)))`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    /// `in → temb`.
    pub linear_1: Linear,
    /// `temb → temb`.
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    /// Load `linear_1` and `linear_2`.
    pub fn load(vb: &WeightsView, d_in: usize, d_out: usize) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::load(&vb.pp("linear_1"), d_in, d_out, true)?,
            linear_2: Linear::load(&vb.pp("linear_2"), d_out, d_out, true)?,
        })
    }

    /// # Shapes
    /// `[B, in]` → `[B, temb]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reduced embedding against `sin`/`cos` of the f32 argument in f64, over SD's
    /// timesteps (0..=999) and both orders.
    #[test]
    fn timesteps_match_the_unreduced_definition() {
        let device = Device::flex();
        for flip in [true, false] {
            let proj = Timesteps::new(320, flip, 1.0, &device);
            let freqs: Vec<f32> = proj.freqs.clone().into_data().try_into_vec_as().unwrap();
            for t in [0.0, 1.0, 261.0, 500.5, 981.0, 999.0] {
                let got: Vec<f32> = proj.forward(t, 2).into_data().try_into_vec_as().unwrap();
                assert_eq!(got.len(), 640);
                let mut worst = 0f64;
                for (i, &f) in freqs.iter().enumerate() {
                    let arg = (t as f32 * f) as f64;
                    let (s, c) = (arg.sin(), arg.cos());
                    let (a, b) = if flip { (c, s) } else { (s, c) };
                    worst = worst
                        .max((got[i] as f64 - a).abs())
                        .max((got[160 + i] as f64 - b).abs());
                }
                // Row 1 is row 0.
                assert_eq!(got[..320], got[320..]);
                assert!(worst <= 1e-6, "t = {t}, flip {flip}: {worst}");
            }
        }
    }
}
