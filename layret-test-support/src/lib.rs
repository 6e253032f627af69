//! Helpers shared by the test suites of layret's crates (a dev-dependency only).
//!
//! - [`fixtures`]: the committed fixtures folder (`tests/fixtures/` at the repository root).
//! - [`golden`] / [`golden_tensor`]: tensors written by `tools/reference/` with PyTorch.
//! - [`max_abs_diff`] and friends: the largest absolute difference, **failing on any
//!   non-finite value** in either side (a NaN must never score 0 and pass a tolerance).
//! - [`tempdir`]: a fresh, uniquely named temporary folder per call (removed on drop), so
//!   tests running in parallel threads never share one.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use tempfile::TempDir;

/// `tests/fixtures/` at the repository root (or `$LAYRET_FIXTURES`, for test binaries run
/// from another checkout, e.g. on a lent GPU machine by tools/gpu/device_check.sh).
pub fn fixtures() -> PathBuf {
    match std::env::var_os("LAYRET_FIXTURES") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures"),
    }
}

/// A path under `tests/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    fixtures().join(rel)
}

/// The device the tests run on: the flex CPU, or the one `LAYRET_TEST_DEVICE` names
/// (`cpu`, or `wgpu` in a build with this crate's `wgpu` feature — tools/gpu/parity.sh).
///
/// # Panics
/// On a device name this build cannot run (a test must not pass on the wrong device).
pub fn device() -> Device {
    match std::env::var("LAYRET_TEST_DEVICE").as_deref() {
        Err(_) | Ok("") | Ok("cpu") | Ok("flex") => Device::flex(),
        #[cfg(feature = "wgpu")]
        Ok("wgpu") => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        Ok(other) => panic!(
            "LAYRET_TEST_DEVICE={other:?}: this build runs cpu{}",
            if cfg!(feature = "wgpu") {
                " or wgpu"
            } else {
                " (build layret-test-support with `--features wgpu` for wgpu)"
            }
        ),
    }
}

/// Whether the tests run on a device other than the flex CPU (`LAYRET_TEST_DEVICE`).
pub fn on_gpu_backend() -> bool {
    device() != Device::flex()
}

/// How much looser than PyTorch's CPU f32-vs-half spread a half-precision run (`name`: `bf16`,
/// `f16`) may be on the test device: 1 on the CPU; 6 for f16 on a GPU backend, whose burn
/// kernels (wgpu/cubecl matmul and convolution) sum in f16 where PyTorch's CPU kernels sum in
/// f32 (measured on lavapipe: 3.5–4.8× PyTorch's f16 spread; docs/precision.md).
pub fn half_tolerance_factor(name: &str) -> f64 {
    if name == "f16" && on_gpu_backend() {
        6.0
    } else {
        1.0
    }
}

/// A golden tensor: values (as f64) and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Golden {
    /// Row-major values.
    pub values: Vec<f64>,
    /// The shape.
    pub shape: Vec<usize>,
}

/// The tensor `key` of `tests/fixtures/golden/<file>`, if present (f64, f32, f16, bf16, i64,
/// u8 are read as f64).
pub fn try_golden(file: &str, key: &str) -> Option<Golden> {
    try_golden_file(&fixtures().join("golden").join(file), key)
}

/// The tensor `key` of the safetensors file `path`; panics naming file and key if absent.
pub fn golden_file(path: &Path, key: &str) -> Golden {
    try_golden_file(path, key).unwrap_or_else(|| panic!("{}: no tensor `{key}`", path.display()))
}

/// The tensor `key` of the safetensors file `path`, if present.
pub fn try_golden_file(path: &Path, key: &str) -> Option<Golden> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
    let t = st.tensor(key).ok()?;
    let data = t.data();
    let values = match t.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f64)
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect(),
        Dtype::U8 => data.iter().map(|&b| b as f64).collect(),
        d => panic!("{file}:{key}: unexpected dtype {d:?}"),
    };
    Some(Golden {
        values,
        shape: t.shape().to_vec(),
    })
}

/// The tensor `key` of `tests/fixtures/golden/<file>`; panics naming file and key if absent.
pub fn golden(file: &str, key: &str) -> Golden {
    try_golden(file, key).unwrap_or_else(|| panic!("{file}: no tensor `{key}`"))
}

/// A golden tensor on the test device, as f32. Lower-rank goldens get unit axes inserted
/// after the first one until they have rank `D`.
pub fn golden_tensor<const D: usize>(file: &str, key: &str) -> Tensor<D> {
    let g = golden(file, key);
    let mut shape = g.shape.clone();
    while shape.len() < D {
        shape.insert(1.min(shape.len()), 1);
    }
    let shape: [usize; D] = shape
        .try_into()
        .unwrap_or_else(|s| panic!("{file}:{key}: rank of {s:?} is not {D}"));
    let values: Vec<f32> = g.values.iter().map(|&v| v as f32).collect();
    Tensor::from_data(TensorData::new(values, shape), &device())
}

/// The values of a tensor as f64 (converting from its dtype).
pub fn to_f64<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .unwrap_or_else(|e| panic!("cannot read the tensor back: {e:?}"))
        .into_iter()
        .map(f64::from)
        .collect()
}

/// The f32 bit patterns of a tensor (for bit-identity checks).
pub fn bits<const D: usize>(t: Tensor<D>) -> Vec<u32> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .unwrap_or_else(|e| panic!("cannot read the tensor back: {e:?}"))
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// The largest `|a − b|` over two equally long slices. Panics — the test fails — if the
/// lengths differ or **any value on either side is NaN or infinite** (an all-NaN output must
/// never score 0), naming the first offending index.
pub fn max_abs_diff_values(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(
        got.len(),
        want.len(),
        "compared {} values with {} expected",
        got.len(),
        want.len()
    );
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("non-finite value {} at index {i} in the output", got[i]);
    }
    if let Some(i) = want.iter().position(|v| !v.is_finite()) {
        panic!(
            "non-finite value {} at index {i} in the expected values",
            want[i]
        );
    }
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

/// [`max_abs_diff_values`] of a tensor against a golden, after checking the shapes.
pub fn max_abs_diff<const D: usize>(got: Tensor<D>, want: &Golden) -> f64 {
    assert_eq!(got.dims().to_vec(), want.shape, "shape");
    max_abs_diff_values(&to_f64(got), &want.values)
}

/// [`max_abs_diff_values`] of two tensors of the same shape.
pub fn max_abs_diff_tensors<const D: usize>(got: Tensor<D>, want: Tensor<D>) -> f64 {
    assert_eq!(got.dims(), want.dims(), "shape");
    max_abs_diff_values(&to_f64(got), &to_f64(want))
}

/// Assert `max |got − want| ≤ tol` (NaN-safe), naming `what` on failure.
pub fn assert_close<const D: usize>(got: Tensor<D>, want: &Golden, tol: f64, what: &str) {
    let err = max_abs_diff(got, want);
    assert!(err <= tol, "{what}: max abs error {err:e} > {tol:e}");
}

/// A fresh, uniquely named empty folder, deleted when the handle drops. It dereferences to
/// its [`Path`], so `dir.join("x")` and `&dir` work where a path is expected.
pub fn tempdir() -> TestDir {
    TestDir(
        tempfile::Builder::new()
            .prefix("layret-test-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary folder: {e}")),
    )
}

/// A temporary folder (see [`tempdir`]).
#[derive(Debug)]
pub struct TestDir(TempDir);

impl TestDir {
    /// The folder.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<std::ffi::OsStr> for TestDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.path().as_os_str()
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

/// Assert `err ≤ tol`, and print the error (seen with `--nocapture`: tools/gpu/parity.sh
/// reports every suite's max errors from these lines).
///
/// # Panics
/// When `err > tol` or `err` is not finite.
#[track_caller]
pub fn assert_within(err: f64, tol: f64, what: std::fmt::Arguments<'_>) {
    eprintln!("max abs error {what}: {err:.3e} (tolerance {tol:.0e})");
    assert!(err <= tol, "{what}: max abs error {err} > {tol}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_score_zero_and_differences_are_measured() {
        assert_eq!(max_abs_diff_values(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert_eq!(max_abs_diff_values(&[1.0, 2.5], &[1.0, 2.0]), 0.5);
    }

    #[test]
    #[should_panic(expected = "non-finite value NaN at index 1 in the output")]
    fn nan_in_the_output_fails() {
        max_abs_diff_values(&[0.0, f64::NAN], &[0.0, 0.0]);
    }

    #[test]
    #[should_panic(expected = "non-finite value NaN at index 0 in the output")]
    fn all_nan_output_fails() {
        // `fold(0.0, f64::max)` alone would score this 0.
        max_abs_diff_values(&[f64::NAN; 4], &[0.5; 4]);
    }

    #[test]
    #[should_panic(expected = "in the expected values")]
    fn infinity_in_the_expected_values_fails() {
        max_abs_diff_values(&[0.0], &[f64::INFINITY]);
    }

    #[test]
    #[should_panic(expected = "non-finite")]
    fn nan_tensor_against_a_golden_fails() {
        let t = Tensor::<1>::from_data(TensorData::new(vec![f32::NAN; 3], [3]), &device());
        let g = Golden {
            values: vec![0.0; 3],
            shape: vec![3],
        };
        max_abs_diff(t, &g);
    }

    #[test]
    #[should_panic(expected = "compared 1 values with 2 expected")]
    fn length_mismatch_fails() {
        max_abs_diff_values(&[0.0], &[0.0, 0.0]);
    }

    #[test]
    fn temp_folders_are_unique() {
        let (a, b) = (tempdir(), tempdir());
        assert_ne!(a.path(), b.path());
        assert!(a.path().is_dir() && b.path().is_dir());
    }
}
