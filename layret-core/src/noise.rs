//! Seeded Gaussian noise that is the same on every device and platform, and noise/latents
//! files (`.safetensors`) for injecting and saving tensors.
//!
//! The generator is layret's own and fixed forever: xoshiro256++ seeded through SplitMix64,
//! standard normals by the Box–Muller transform (pairs `r·cos θ`, `r·sin θ`), values written
//! row-major. A seed therefore names the same initial noise on flex, wgpu and cuda. (It is not
//! PyTorch's generator: for bit-comparable runs with diffusers, inject the noise tensor.)

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::weights::Weights;

/// xoshiro256++ seeded with SplitMix64.
#[derive(Debug, Clone)]
pub struct NoiseRng {
    s: [u64; 4],
}

impl NoiseRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Self {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in (0, 1] (53 bits).
    fn uniform_open0(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// `n` standard-normal values.
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let r = (-2.0 * self.uniform_open0().ln()).sqrt();
            let theta = 2.0 * std::f64::consts::PI * self.uniform_open0();
            out.push((r * theta.cos()) as f32);
            out.push((r * theta.sin()) as f32);
        }
        out.truncate(n);
        out
    }
}

/// Standard-normal noise of `shape` from `seed` (see the module docs).
pub fn seeded_noise<const D: usize>(seed: u64, shape: [usize; D], device: &Device) -> Tensor<D> {
    let n = shape.iter().product();
    let values = NoiseRng::new(seed).normals(n);
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Read the tensor `key` from a safetensors file and check it has `expected` shape.
pub fn load_tensor<const D: usize>(
    path: &Path,
    key: &str,
    expected: [usize; D],
    device: &Device,
) -> Result<Tensor<D>> {
    let w = Weights::open(path, device)?;
    match w.shape_of(key) {
        None => Err(Error::MissingTensor {
            file: path.to_path_buf(),
            key: key.to_string(),
        }),
        Some(s) if s != expected => Err(Error::Shape {
            what: format!("`{key}` in {}", path.display()),
            expected: format!("{expected:?}"),
            got: s.to_vec(),
        }),
        Some(_) => w.tensor(key, expected),
    }
}

/// Write named 4-D tensors as f32 to a safetensors file (atomically: a temporary file in the
/// same folder, then a rename, so no half-written file is ever seen under `path`).
pub fn save_tensors(path: &Path, tensors: &[(&str, Tensor<4>)]) -> Result<()> {
    save_tensors_with_metadata(path, tensors, &[])
}

/// [`save_tensors`] with extra `__metadata__` entries (besides `producer = layret`).
pub fn save_tensors_with_metadata(
    path: &Path,
    tensors: &[(&str, Tensor<4>)],
    metadata: &[(&str, String)],
) -> Result<()> {
    let mut owned = Vec::new();
    for (name, t) in tensors {
        let shape = t.dims().to_vec();
        let values = crate::host::to_f32_vec(t.clone(), name)?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        owned.push((name.to_string(), shape, bytes));
    }
    let views = owned
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Safetensors {
                    file: path.to_path_buf(),
                    message: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta: HashMap<String, String> = [("producer".to_string(), "layret".to_string())].into();
    meta.extend(metadata.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| Error::Safetensors {
        file: path.to_path_buf(),
        message: e.to_string(),
    })?;
    crate::atomic::write(path, &bytes)
}
