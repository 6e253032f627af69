//! Checked reading of `.safetensors` weight files into burn tensors.
//!
//! [`Weights`] memory-maps one file, validates its header, and hands out tensors by their
//! checkpoint key (`down_blocks.0.resnets.1.conv1.weight`) with the shape the model's config
//! implies. Every way a file can disagree with the model is an [`Error`] naming the file and the
//! key: missing, mis-shaped, non-float dtype, NaN/Inf, and (through [`Weights::finish`]) tensors
//! the model did not use. F32, F16 and BF16 files are read; values are converted to the load
//! dtype.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// Where one tensor lives in the file.
#[derive(Debug, Clone)]
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// One memory-mapped safetensors file, read tensor by tensor.
///
/// Keys that were read are remembered, so [`Weights::finish`] can report the ones the model
/// never asked for.
pub struct Weights {
    path: PathBuf,
    mmap: Option<memmap2::Mmap>,
    /// Random weights (benches, architecture tests): every key exists with the asked shape.
    random: Option<(RefCell<crate::noise::NoiseRng>, f32)>,
    data_start: usize,
    entries: HashMap<String, Entry>,
    used: RefCell<BTreeSet<String>>,
    requested: RefCell<Vec<(String, Vec<usize>)>>,
    device: Device,
    dtype: DType,
    metadata: HashMap<String, String>,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("path", &self.path)
            .field("tensors", &self.entries.len())
            .finish()
    }
}

impl Weights {
    /// Open and validate `path`; tensors are created on `device` as f32.
    pub fn open(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::open_as(path, device, DType::F32)
    }

    /// Open and validate `path`; tensors are created on `device` with float dtype `dtype`.
    pub fn open_as(path: impl AsRef<Path>, device: &Device, dtype: DType) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if !path.exists() {
            return Err(Error::MissingFile {
                what: "weights file".into(),
                path,
            });
        }
        let file = std::fs::File::open(&path).map_err(|e| Error::io("opening", &path, e))?;
        // SAFETY: the map is read-only and the file is not modified by layret while mapped.
        let mmap =
            unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io("mapping", &path, e))?;
        let bad = |e: safetensors::SafeTensorError| Error::Safetensors {
            file: path.clone(),
            message: e.to_string(),
        };
        // Full validation (header, offsets, buffer length) before anything is read.
        SafeTensors::deserialize(&mmap).map_err(bad)?;
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(bad)?;
        let file_metadata = metadata.metadata().clone().unwrap_or_default();
        let entries = metadata
            .tensors()
            .into_iter()
            .map(|(k, info)| {
                (
                    k,
                    Entry {
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        start: info.data_offsets.0,
                        end: info.data_offsets.1,
                    },
                )
            })
            .collect();
        Ok(Self {
            path,
            mmap: Some(mmap),
            random: None,
            data_start: 8 + header_len,
            entries,
            used: RefCell::new(BTreeSet::new()),
            requested: RefCell::new(Vec::new()),
            device: device.clone(),
            dtype,
            metadata: file_metadata,
        })
    }

    /// Random weights: every key asked for exists, with values `N(0, std²)` drawn from
    /// `seed` in the order the model asks for them. For benches and architecture tests that
    /// need a full-size model without a multi-GB file.
    pub fn random(device: &Device, dtype: DType, seed: u64, std: f32) -> Self {
        Self {
            path: PathBuf::from("<random weights>"),
            mmap: None,
            random: Some((RefCell::new(crate::noise::NoiseRng::new(seed)), std)),
            data_start: 0,
            entries: HashMap::new(),
            used: RefCell::new(BTreeSet::new()),
            requested: RefCell::new(Vec::new()),
            device: device.clone(),
            dtype,
            metadata: HashMap::new(),
        }
    }

    /// For [`Weights::random`]: every (key, shape) the model asked for, in order — the
    /// checkpoint layout of that architecture (used to write benchmark weight files).
    pub fn requested(&self) -> Vec<(String, Vec<usize>)> {
        self.requested.borrow().clone()
    }

    /// The file's `__metadata__` (string pairs; empty if it has none).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// The file these weights come from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the file holds `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// All keys in the file, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.entries.keys().cloned().collect();
        k.sort();
        k
    }

    /// The dtypes in the file with their tensor counts, e.g. `F16×686`.
    pub fn dtype_summary(&self) -> String {
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for e in self.entries.values() {
            *counts.entry(format!("{:?}", e.dtype)).or_default() += 1;
        }
        counts
            .into_iter()
            .map(|(d, n)| format!("{d}×{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The shape stored for `key`, if present.
    pub fn shape_of(&self, key: &str) -> Option<&[usize]> {
        self.entries.get(key).map(|e| e.shape.as_slice())
    }

    /// A view of the keys under `prefix` (joined with a dot).
    pub fn pp(&self, prefix: &str) -> WeightsView<'_> {
        WeightsView {
            weights: self,
            prefix: prefix.to_string(),
        }
    }

    /// Read `key` as f32 values, checking that its shape is `shape`.
    pub fn read_f32(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.read_data(key, shape, DType::F32)?
            .try_into_vec_as::<f32>()
            .map_err(|e| Error::TensorDtype {
                file: self.path.clone(),
                key: key.to_string(),
                dtype: format!("{e:?}"),
            })
    }

    /// Read `key` as `TensorData` of float dtype `dtype`, checking shape and values.
    ///
    /// A file dtype equal to `dtype` is copied once out of the map; other float dtypes are
    /// converted through f32. The map's pages of the tensor are released right after, so peak
    /// memory stays near the size of the weights in memory (no second copy in the page cache
    /// counted against the process).
    fn read_data(&self, key: &str, shape: &[usize], dtype: DType) -> Result<TensorData> {
        if let Some((rng, std)) = &self.random {
            self.requested
                .borrow_mut()
                .push((key.to_string(), shape.to_vec()));
            let n = shape.iter().product();
            let mut v = rng.borrow_mut().normals(n);
            v.iter_mut().for_each(|x| *x *= std);
            let data = TensorData::new(v, shape.to_vec());
            return Ok(if dtype == DType::F32 {
                data
            } else {
                data.convert_dtype(dtype)
            });
        }
        let entry = self.entries.get(key).ok_or_else(|| Error::MissingTensor {
            file: self.path.clone(),
            key: key.to_string(),
        })?;
        if entry.shape != shape {
            return Err(Error::TensorShape {
                file: self.path.clone(),
                key: key.to_string(),
                expected: shape.to_vec(),
                got: entry.shape.clone(),
            });
        }
        let Some(mmap) = &self.mmap else {
            unreachable!("file-backed weights always hold their map")
        };
        let (start, end) = (self.data_start + entry.start, self.data_start + entry.end);
        let bytes = &mmap[start..end];
        let non_finite = |count: usize| Error::NonFiniteTensor {
            file: self.path.clone(),
            key: key.to_string(),
            count,
        };
        let data = match entry.dtype {
            Dtype::F16 if dtype == DType::F16 => {
                let v: Vec<half::f16> = bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                    .collect();
                let bad = v.iter().filter(|x| !x.is_finite()).count();
                if bad > 0 {
                    return Err(non_finite(bad));
                }
                TensorData::new(v, shape.to_vec())
            }
            Dtype::BF16 if dtype == DType::BF16 => {
                let v: Vec<half::bf16> = bytes
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]))
                    .collect();
                let bad = v.iter().filter(|x| !x.is_finite()).count();
                if bad > 0 {
                    return Err(non_finite(bad));
                }
                TensorData::new(v, shape.to_vec())
            }
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => {
                let v: Vec<f32> = match entry.dtype {
                    Dtype::F32 => bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                    Dtype::F16 => bytes
                        .chunks_exact(2)
                        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect(),
                    _ => bytes
                        .chunks_exact(2)
                        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect(),
                };
                let bad = v.iter().filter(|x| !x.is_finite()).count();
                if bad > 0 {
                    return Err(non_finite(bad));
                }
                let data = TensorData::new(v, shape.to_vec());
                if dtype == DType::F32 {
                    data
                } else {
                    data.convert_dtype(dtype)
                }
            }
            other => {
                return Err(Error::TensorDtype {
                    file: self.path.clone(),
                    key: key.to_string(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        self.release_pages(mmap, start, end);
        self.used.borrow_mut().insert(key.to_string());
        Ok(data)
    }

    /// Drop the map's resident pages of `[start, end)` (whole pages inside the range only).
    fn release_pages(&self, mmap: &memmap2::Mmap, start: usize, end: usize) {
        #[cfg(unix)]
        {
            const PAGE: usize = 4096;
            let (a, b) = (start.div_ceil(PAGE) * PAGE, (end / PAGE) * PAGE);
            if b > a {
                // SAFETY: the map is read-only and file-backed; dropped pages are read back
                // from the file if touched again, so no data is lost.
                let _ = unsafe {
                    mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, b - a)
                };
            }
        }
        #[cfg(not(unix))]
        let _ = (mmap, start, end);
    }

    /// Read `key` as a tensor of shape `shape` on this file's device and dtype.
    pub fn tensor<const D: usize>(&self, key: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let data = self.read_data(key, &shape, self.dtype)?;
        Ok(Tensor::from_data(data, &self.device))
    }

    /// Fail with [`Error::UnexpectedTensors`] if the file holds keys that were never read
    /// (other than those `ignore` accepts).
    pub fn finish(&self, ignore: impl Fn(&str) -> bool) -> Result<()> {
        let used = self.used.borrow();
        let mut unused: Vec<String> = self
            .entries
            .keys()
            .filter(|k| !used.contains(*k) && !ignore(k))
            .cloned()
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort();
        let count = unused.len();
        unused.truncate(5);
        Err(Error::UnexpectedTensors {
            file: self.path.clone(),
            count,
            keys: unused,
        })
    }
}

/// The keys of a [`Weights`] file under a prefix, as a module's loader sees them.
#[derive(Clone)]
pub struct WeightsView<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl<'a> WeightsView<'a> {
    /// The full key of `name` under this view.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// A view one level deeper.
    pub fn pp(&self, name: impl std::fmt::Display) -> WeightsView<'a> {
        WeightsView {
            weights: self.weights,
            prefix: self.key(&name.to_string()),
        }
    }

    /// Read `name` (under this view) with shape `shape`.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        self.weights.tensor(&self.key(name), shape)
    }

    /// Whether `name` (under this view) exists in the file.
    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(&self.key(name))
    }

    /// The underlying file.
    pub fn weights(&self) -> &'a Weights {
        self.weights
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        self.weights.device()
    }
}
