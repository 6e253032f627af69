use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::Result;
use crate::nn::Linear;
use crate::weights::WeightsView;

/// diffusers' `Timesteps`: the sinusoidal embedding of the timestep (computed in f32).
///
/// `emb[i] = t · exp(−ln(10000)·i / (half − shift))`, then `[sin, cos]` (or `[cos, sin]` when
/// `flip_sin_to_cos`).
pub fn timestep_embedding(
    timestep: f64,
    batch: usize,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    device: &Device,
) -> Tensor<2> {
    let half = dim / 2;
    let t = timestep as f32;
    let mut sin = Vec::with_capacity(half);
    let mut cos = Vec::with_capacity(half);
    for i in 0..half {
        let exponent = -(10000f32.ln()) * (i as f32) / (half as f32 - freq_shift as f32);
        let arg = t * exponent.exp();
        sin.push(arg.sin());
        cos.push(arg.cos());
    }
    let mut row = if flip_sin_to_cos {
        cos.clone()
    } else {
        sin.clone()
    };
    row.extend(if flip_sin_to_cos { sin } else { cos });
    let data: Vec<f32> = (0..batch).flat_map(|_| row.iter().copied()).collect();
    Tensor::from_data(TensorData::new(data, [batch, dim]), device)
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
