//! Helpers shared by the integration tests: fixture paths and golden tensors.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{Device, Tensor};
use safetensors::{Dtype, SafeTensors};

/// `tests/fixtures/` at the repository root.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// The flex CPU device the tests run on.
pub fn device() -> Device {
    Device::flex()
}

/// A golden tensor as (values, shape); f32 and i64 tensors are returned as f64 values.
pub fn golden(file: &str, key: &str) -> (Vec<f64>, Vec<usize>) {
    let path = fixtures().join("golden").join(file);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st
        .tensor(key)
        .unwrap_or_else(|e| panic!("{file}:{key}: {e}"));
    let data = t.data();
    let values = match t.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        d => panic!("{file}:{key}: unexpected dtype {d:?}"),
    };
    (values, t.shape().to_vec())
}

/// Max absolute difference between a tensor and a golden, after checking shapes.
pub fn max_abs_diff<const D: usize>(got: Tensor<D>, want: &(Vec<f64>, Vec<usize>)) -> f64 {
    assert_eq!(got.dims().to_vec(), want.1, "shape");
    let got: Vec<f32> = got.into_data().try_into_vec_as::<f32>().unwrap();
    got.iter()
        .zip(&want.0)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max)
}

/// A golden f32 tensor loaded onto the test device.
pub fn golden_tensor<const D: usize>(file: &str, key: &str) -> Tensor<D> {
    let (values, shape) = golden(file, key);
    let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    let shape: [usize; D] = shape
        .try_into()
        .unwrap_or_else(|s| panic!("{key}: rank of {s:?}"));
    Tensor::from_data(burn::tensor::TensorData::new(values, shape), &device())
}

/// A fresh empty temporary folder for one test.
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("layret-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The values of a tensor as f64.
pub fn to_f64<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// A golden u8 tensor as (values, shape).
pub fn golden_u8(file: &str, key: &str) -> (Vec<u8>, Vec<usize>) {
    let path = fixtures().join("golden").join(file);
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(key).unwrap();
    assert_eq!(t.dtype(), Dtype::U8);
    (t.data().to_vec(), t.shape().to_vec())
}
