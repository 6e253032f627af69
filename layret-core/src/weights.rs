//! Checked reading of weight files into burn tensors.
//!
//! A [`TensorFile`] is one opened file: a memory-mapped `.safetensors` file, or a PyTorch
//! pickle (`.bin`, `.pt`, `.ckpt`; read with burn's `pytorch-reader`, never executed, a pickle
//! holding anything but tensors, dicts, lists, numbers and strings refused). [`Weights`] hands
//! out its tensors by the checkpoint key a model asks for (`down_blocks.0.resnets.1.conv1.weight`)
//! with the shape the model's config implies — through a [`KeyMap`] when the file names them
//! another way (the original LDM single-file layout). Every way a file can disagree with the
//! model is an [`Error`] naming the file and the key: missing, mis-shaped, non-float dtype,
//! NaN/Inf, and (through [`Weights::finish`]) tensors the model did not use. F32, F16, BF16
//! (and F64 pickles) are read; values are converted to the load dtype, one tensor at a time,
//! so peak memory stays near the weights in memory.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::SafeTensors;

use crate::error::{Error, Result};

/// The element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoredDtype {
    /// 64-bit float (pickles only; narrowed on load).
    F64,
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// Anything else (integers, bools): refused as a weight, named in the error.
    Other(&'static str),
}

impl StoredDtype {
    fn name(self) -> &'static str {
        match self {
            StoredDtype::F64 => "F64",
            StoredDtype::F32 => "F32",
            StoredDtype::F16 => "F16",
            StoredDtype::BF16 => "BF16",
            StoredDtype::Other(n) => n,
        }
    }

    fn size(self) -> usize {
        match self {
            StoredDtype::F64 => 8,
            StoredDtype::F32 => 4,
            StoredDtype::F16 | StoredDtype::BF16 => 2,
            StoredDtype::Other(_) => 1,
        }
    }
}

/// Where a tensor's bytes are.
enum Source {
    /// `[start, end)` of the safetensors data section.
    Mmap { start: usize, end: usize },
    /// A tensor of a PyTorch pickle, read on demand.
    Pickle(pytorch_reader::Tensor),
}

/// One stored tensor.
struct Entry {
    dtype: StoredDtype,
    shape: Vec<usize>,
    source: Source,
}

/// The container a [`TensorFile`] was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// `.safetensors`.
    Safetensors,
    /// A PyTorch pickle (`torch.save`: zip or legacy container).
    Pickle,
}

/// One opened weights file: its tensors by key, shapes and dtypes known, bytes read only when
/// asked for.
pub struct TensorFile {
    path: PathBuf,
    format: FileFormat,
    mmap: Option<memmap2::Mmap>,
    data_start: usize,
    entries: HashMap<String, Entry>,
    metadata: HashMap<String, String>,
}

impl std::fmt::Debug for TensorFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorFile")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("tensors", &self.entries.len())
            .finish()
    }
}

/// Whether `bytes` (a file's first bytes) open a safetensors file: a little-endian u64 header
/// length then `{`.
fn looks_like_safetensors(bytes: &[u8]) -> bool {
    bytes.len() >= 9 && bytes[8] == b'{'
}

impl TensorFile {
    /// Open `path`, a `.safetensors` file or a PyTorch pickle (told apart by content, not by
    /// extension), validating its structure before anything is read.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if !path.exists() {
            return Err(Error::MissingFile {
                what: "weights file".into(),
                path,
            });
        }
        let mut head = [0u8; 9];
        let n = {
            use std::io::Read;
            let mut f = std::fs::File::open(&path).map_err(|e| Error::io("opening", &path, e))?;
            let mut got = 0;
            while got < head.len() {
                match f.read(&mut head[got..]) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) => return Err(Error::io("reading", &path, e)),
                }
            }
            got
        };
        if looks_like_safetensors(&head[..n]) {
            Self::open_safetensors(path)
        } else if n >= 2 && (head[0] == 0x80 || &head[..2] == b"PK") {
            Self::open_pickle(path)
        } else {
            // Neither: let the safetensors parser say why (truncated, bad header, ...).
            Self::open_safetensors(path)
        }
    }

    fn open_safetensors(path: PathBuf) -> Result<Self> {
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
                let dtype = match info.dtype {
                    safetensors::Dtype::F64 => StoredDtype::F64,
                    safetensors::Dtype::F32 => StoredDtype::F32,
                    safetensors::Dtype::F16 => StoredDtype::F16,
                    safetensors::Dtype::BF16 => StoredDtype::BF16,
                    other => StoredDtype::Other(safetensors_dtype_name(other)),
                };
                (
                    k,
                    Entry {
                        dtype,
                        shape: info.shape.clone(),
                        source: Source::Mmap {
                            start: info.data_offsets.0,
                            end: info.data_offsets.1,
                        },
                    },
                )
            })
            .collect();
        Ok(Self {
            path,
            format: FileFormat::Safetensors,
            mmap: Some(mmap),
            data_start: 8 + header_len,
            entries,
            metadata: file_metadata,
        })
    }

    fn open_pickle(path: PathBuf) -> Result<Self> {
        let bad = |message: String| Error::Pickle {
            file: path.clone(),
            message,
        };
        // First the whole object tree as data: anything but containers, numbers, strings and
        // tensors (a class, a callable, an object) is refused before any tensor is read.
        let tree = pytorch_reader::PytorchReader::read_pickle_data(&path, None)
            .map_err(|e| bad(e.to_string()))?;
        check_pickle_tree(&tree, "").map_err(bad)?;
        // Checkpoints of trainers nest the weights under `state_dict`; their top-level numbers
        // and strings (`global_step`, `epoch`) are kept as the file's metadata.
        let nested = matches!(&tree, pytorch_reader::PickleValue::Dict(d)
            if matches!(d.get("state_dict"), Some(pytorch_reader::PickleValue::Dict(_))));
        let mut metadata = HashMap::new();
        if let pytorch_reader::PickleValue::Dict(d) = &tree {
            for (k, v) in d {
                let text = match v {
                    pytorch_reader::PickleValue::Int(i) => i.to_string(),
                    pytorch_reader::PickleValue::Float(f) => f.to_string(),
                    pytorch_reader::PickleValue::String(s) => s.clone(),
                    _ => continue,
                };
                metadata.insert(k.clone(), text);
            }
        }
        let reader = if nested {
            pytorch_reader::PytorchReader::with_top_level_key(&path, "state_dict")
        } else {
            pytorch_reader::PytorchReader::new(&path)
        }
        .map_err(|e| bad(e.to_string()))?;
        let mut entries = HashMap::new();
        for (key, t) in reader.into_tensors() {
            use pytorch_reader::DType as P;
            let dtype = match t.dtype() {
                P::F64 => StoredDtype::F64,
                P::F32 => StoredDtype::F32,
                P::F16 => StoredDtype::F16,
                P::BF16 => StoredDtype::BF16,
                P::I64 => StoredDtype::Other("I64"),
                P::I32 => StoredDtype::Other("I32"),
                P::I16 => StoredDtype::Other("I16"),
                P::I8 => StoredDtype::Other("I8"),
                P::U64 => StoredDtype::Other("U64"),
                P::U32 => StoredDtype::Other("U32"),
                P::U16 => StoredDtype::Other("U16"),
                P::U8 => StoredDtype::Other("U8"),
                P::Bool => StoredDtype::Other("BOOL"),
            };
            entries.insert(
                key,
                Entry {
                    dtype,
                    shape: t.shape().to_vec(),
                    source: Source::Pickle(t),
                },
            );
        }
        Ok(Self {
            path,
            format: FileFormat::Pickle,
            mmap: None,
            data_start: 0,
            entries,
            metadata,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Safetensors or pickle.
    pub fn format(&self) -> FileFormat {
        self.format
    }

    /// The safetensors `__metadata__` (string pairs; empty for pickles and files without).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// All keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.entries.keys().cloned().collect();
        k.sort();
        k
    }

    /// Whether the file holds `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// The shape stored for `key`.
    pub fn shape_of(&self, key: &str) -> Option<&[usize]> {
        self.entries.get(key).map(|e| e.shape.as_slice())
    }

    /// The dtype stored for `key`.
    pub fn dtype_of(&self, key: &str) -> Option<StoredDtype> {
        self.entries.get(key).map(|e| e.dtype)
    }

    /// The dtypes in the file with their tensor counts, e.g. `F16×686`.
    pub fn dtype_summary(&self) -> String {
        let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
        for e in self.entries.values() {
            *counts.entry(e.dtype.name()).or_default() += 1;
        }
        counts
            .into_iter()
            .map(|(d, n)| format!("{d}×{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Parameter count of all float tensors.
    pub fn parameters(&self) -> usize {
        self.entries
            .values()
            .filter(|e| !matches!(e.dtype, StoredDtype::Other(_)))
            .map(|e| e.shape.iter().product::<usize>())
            .sum()
    }

    /// The raw bytes of `key` (little-endian, row-major), the whole tensor or rows
    /// `[start, start+len)` of its first axis.
    fn bytes(&self, key: &str, rows: Option<(usize, usize)>) -> Result<Vec<u8>> {
        let entry = self.entries.get(key).ok_or_else(|| Error::MissingTensor {
            file: self.path.clone(),
            key: key.to_string(),
        })?;
        let row_bytes = |total: usize| {
            let n0 = entry.shape.first().copied().unwrap_or(1).max(1);
            total / n0
        };
        match &entry.source {
            Source::Mmap { start, end } => {
                let Some(mmap) = &self.mmap else {
                    unreachable!("safetensors entries always have their map")
                };
                let (mut a, mut b) = (self.data_start + start, self.data_start + end);
                if let Some((r0, n)) = rows {
                    let rb = row_bytes(b - a);
                    (a, b) = (a + r0 * rb, a + (r0 + n) * rb);
                }
                let out = mmap[a..b].to_vec();
                release_pages(mmap, a, b);
                Ok(out)
            }
            Source::Pickle(t) => {
                let all = t.read().map_err(|e| Error::Pickle {
                    file: self.path.clone(),
                    message: format!("reading `{key}`: {e}"),
                })?;
                if all.len() != entry.shape.iter().product::<usize>() * entry.dtype.size() {
                    return Err(Error::Pickle {
                        file: self.path.clone(),
                        message: format!(
                            "`{key}` holds {} bytes, its shape says otherwise",
                            all.len()
                        ),
                    });
                }
                Ok(match rows {
                    None => all,
                    Some((r0, n)) => {
                        let rb = row_bytes(all.len());
                        all[r0 * rb..(r0 + n) * rb].to_vec()
                    }
                })
            }
        }
    }
}

/// The name of a safetensors dtype.
fn safetensors_dtype_name(d: safetensors::Dtype) -> &'static str {
    use safetensors::Dtype as D;
    match d {
        D::BOOL => "BOOL",
        D::U8 => "U8",
        D::I8 => "I8",
        D::I16 => "I16",
        D::U16 => "U16",
        D::I32 => "I32",
        D::U32 => "U32",
        D::I64 => "I64",
        D::U64 => "U64",
        _ => "an unsupported dtype",
    }
}

/// A pickle's values may be containers, numbers, strings, bytes and tensors; anything else (a
/// class, a callable, an arbitrary object — a pickle that would run code when unpickled by
/// Python) is refused, naming what was found and where.
fn check_pickle_tree(v: &pytorch_reader::PickleValue, at: &str) -> std::result::Result<(), String> {
    use pytorch_reader::PickleValue as V;
    match v {
        V::None | V::Bool(_) | V::Int(_) | V::Float(_) | V::String(_) | V::Bytes(_) => Ok(()),
        V::List(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, x)| check_pickle_tree(x, &format!("{at}[{i}]"))),
        V::Dict(d) => {
            let mut keys: Vec<&String> = d.keys().collect();
            keys.sort();
            keys.into_iter().try_for_each(|k| {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                check_pickle_tree(&d[k], &path)
            })
        }
        V::Unsupported(t) if t == "torch.Tensor" => Ok(()),
        V::Unsupported(t) => Err(format!(
            "it holds a `{t}` at `{}`: only tensors, dicts, lists, numbers and strings are read (a pickle referencing code is never executed)",
            if at.is_empty() { "<root>" } else { at }
        )),
    }
}

/// Drop the map's resident pages of `[start, end)` (whole pages inside the range only).
fn release_pages(mmap: &memmap2::Mmap, start: usize, end: usize) {
    #[cfg(unix)]
    {
        const PAGE: usize = 4096;
        let (a, b) = (start.div_ceil(PAGE) * PAGE, (end / PAGE) * PAGE);
        if b > a {
            // SAFETY: the map is read-only and file-backed; dropped pages are read back from
            // the file if touched again, so no data is lost.
            let _ = unsafe {
                mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, b - a)
            };
        }
    }
    #[cfg(not(unix))]
    let _ = (mmap, start, end);
}

/// How one key a model asks for is found in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The file's key.
    pub key: String,
    /// Rows `[start, start+len)` of the file tensor's first axis (a fused `in_proj` split into
    /// q/k/v), if not the whole tensor.
    pub rows: Option<(usize, usize)>,
    /// The file tensor may have another shape with the same element count (a `[c, c, 1, 1]`
    /// 1×1 convolution read as a `[c, c]` linear weight).
    pub reshape: bool,
}

impl Mapped {
    /// The same key, whole tensor, same shape.
    pub fn same(key: &str) -> Self {
        Self {
            key: key.to_string(),
            rows: None,
            reshape: false,
        }
    }
}

/// How a model's keys are named in a file: a model key to the file's, and which file keys the
/// model owns (those it must use all of, for [`Weights::finish`]).
pub trait KeyMap {
    /// The file key (and transform) of `model_key`, or `None` if the file cannot hold it.
    fn map(&self, model_key: &str) -> Option<Mapped>;
    /// Whether the file key `file_key` belongs to this model (and must be used).
    fn owns(&self, file_key: &str) -> bool;
}

/// Random weights for benches and architecture tests.
struct RandomSource {
    rng: RefCell<crate::noise::NoiseRng>,
    std: f32,
    requested: RefCell<Vec<(String, Vec<usize>)>>,
}

/// The tensors of one model in a [`TensorFile`], read tensor by tensor.
///
/// Keys that were read are remembered, so [`Weights::finish`] can report the ones the model
/// never asked for.
pub struct Weights {
    file: Option<Arc<TensorFile>>,
    random: Option<RandomSource>,
    map: Option<Box<dyn KeyMap>>,
    used: RefCell<BTreeSet<String>>,
    device: Device,
    dtype: DType,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

impl Weights {
    /// Open and validate `path` (safetensors or a PyTorch pickle); tensors are created on
    /// `device` as f32.
    pub fn open(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::open_as(path, device, DType::F32)
    }

    /// Open and validate `path`; tensors are created on `device` with float dtype `dtype`.
    pub fn open_as(path: impl AsRef<Path>, device: &Device, dtype: DType) -> Result<Self> {
        crate::host::check_dtype(device, dtype)?;
        Ok(Self::of(
            Arc::new(TensorFile::open(path)?),
            None,
            device,
            dtype,
        ))
    }

    /// A model's view of an opened file, through `map` (the file's own key names when `None`).
    pub fn of(
        file: Arc<TensorFile>,
        map: Option<Box<dyn KeyMap>>,
        device: &Device,
        dtype: DType,
    ) -> Self {
        Self {
            file: Some(file),
            random: None,
            map,
            used: RefCell::new(BTreeSet::new()),
            device: device.clone(),
            dtype,
        }
    }

    /// Random weights: every key asked for exists, with values `N(0, std²)` drawn from
    /// `seed` in the order the model asks for them. For benches and architecture tests that
    /// need a full-size model without a multi-GB file.
    pub fn random(device: &Device, dtype: DType, seed: u64, std: f32) -> Self {
        Self {
            file: None,
            random: Some(RandomSource {
                rng: RefCell::new(crate::noise::NoiseRng::new(seed)),
                std,
                requested: RefCell::new(Vec::new()),
            }),
            map: None,
            used: RefCell::new(BTreeSet::new()),
            device: device.clone(),
            dtype,
        }
    }

    /// For [`Weights::random`]: every (key, shape) the model asked for, in order — the
    /// checkpoint layout of that architecture (used to write benchmark weight files).
    pub fn requested(&self) -> Vec<(String, Vec<usize>)> {
        self.random
            .as_ref()
            .map(|r| r.requested.borrow().clone())
            .unwrap_or_default()
    }

    /// The file these weights come from (`<random weights>` for random ones).
    pub fn path(&self) -> &Path {
        match &self.file {
            Some(f) => f.path(),
            None => Path::new("<random weights>"),
        }
    }

    /// The opened file, if any.
    pub fn file(&self) -> Option<&Arc<TensorFile>> {
        self.file.as_ref()
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The file's `__metadata__` (empty for pickles, random weights and files without).
    pub fn metadata(&self) -> &HashMap<String, String> {
        static EMPTY: std::sync::OnceLock<HashMap<String, String>> = std::sync::OnceLock::new();
        match &self.file {
            Some(f) => f.metadata(),
            None => EMPTY.get_or_init(HashMap::new),
        }
    }

    fn resolve(&self, model_key: &str) -> Option<Mapped> {
        match &self.map {
            Some(m) => m.map(model_key),
            None => Some(Mapped::same(model_key)),
        }
    }

    /// Whether the weights hold `key` (a model key).
    pub fn contains(&self, key: &str) -> bool {
        match (&self.file, self.resolve(key)) {
            (Some(f), Some(m)) => f.contains(&m.key),
            _ => false,
        }
    }

    /// All keys of the file (its own names), sorted.
    pub fn keys(&self) -> Vec<String> {
        self.file.as_ref().map(|f| f.keys()).unwrap_or_default()
    }

    /// The dtypes in the file with their tensor counts, e.g. `F16×686`.
    pub fn dtype_summary(&self) -> String {
        self.file
            .as_ref()
            .map(|f| f.dtype_summary())
            .unwrap_or_default()
    }

    /// The shape stored for the file key `key`, if present.
    pub fn shape_of(&self, key: &str) -> Option<&[usize]> {
        self.file.as_ref()?.shape_of(key)
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
                file: self.path().to_path_buf(),
                key: key.to_string(),
                dtype: format!("{e:?}"),
            })
    }

    /// Read the model key `key` as `TensorData` of float dtype `dtype`, checking shape and
    /// values.
    ///
    /// A file dtype equal to `dtype` is copied once out of the file; other float dtypes are
    /// converted through f32. The map's pages of the tensor are released right after, so peak
    /// memory stays near the size of the weights in memory (no second copy in the page cache
    /// counted against the process).
    fn read_data(&self, key: &str, shape: &[usize], dtype: DType) -> Result<TensorData> {
        if let Some(r) = &self.random {
            r.requested
                .borrow_mut()
                .push((key.to_string(), shape.to_vec()));
            let n = shape.iter().product();
            let mut v = r.rng.borrow_mut().normals(n);
            v.iter_mut().for_each(|x| *x *= r.std);
            let data = TensorData::new(v, shape.to_vec());
            return Ok(if dtype == DType::F32 {
                data
            } else {
                data.convert_dtype(dtype)
            });
        }
        let Some(file) = &self.file else {
            unreachable!("weights are file-backed or random")
        };
        let path = file.path().to_path_buf();
        let m = self.resolve(key).ok_or_else(|| Error::MissingTensor {
            file: path.clone(),
            key: key.to_string(),
        })?;
        let entry = file
            .entries
            .get(&m.key)
            .ok_or_else(|| Error::MissingTensor {
                file: path.clone(),
                key: m.key.clone(),
            })?;
        let stored: Vec<usize> = match m.rows {
            Some((_, n)) => {
                let mut s = entry.shape.clone();
                if let Some(first) = s.first_mut() {
                    *first = n;
                }
                s
            }
            None => entry.shape.clone(),
        };
        let fits = stored == shape
            || (m.reshape && stored.iter().product::<usize>() == shape.iter().product::<usize>());
        if !fits {
            return Err(Error::TensorShape {
                file: path,
                key: m.key,
                expected: shape.to_vec(),
                got: stored,
            });
        }
        if let StoredDtype::Other(name) = entry.dtype {
            return Err(Error::TensorDtype {
                file: path,
                key: m.key,
                dtype: name.to_string(),
            });
        }
        let bytes = file.bytes(&m.key, m.rows)?;
        let non_finite = |count: usize| Error::NonFiniteTensor {
            file: path.clone(),
            key: m.key.clone(),
            count,
        };
        let data = match entry.dtype {
            StoredDtype::F16 if dtype == DType::F16 => {
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
            StoredDtype::BF16 if dtype == DType::BF16 => {
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
            d => {
                let v: Vec<f32> = match d {
                    StoredDtype::F64 => bytes
                        .chunks_exact(8)
                        .map(|c| {
                            f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                                as f32
                        })
                        .collect(),
                    StoredDtype::F32 => bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                    StoredDtype::F16 => bytes
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
                if dtype == DType::F16 {
                    // Rounding to f16 turns |x| > 65504 into ±Inf: refuse rather than load it.
                    let limit = half::f16::MAX.to_f32();
                    let count = v.iter().filter(|x| x.abs() > limit).count();
                    if count > 0 {
                        return Err(Error::DtypeOverflow {
                            file: path.clone(),
                            key: m.key.clone(),
                            dtype: "f16".into(),
                            count,
                            max: v.iter().fold(0f32, |a, x| a.max(x.abs())),
                        });
                    }
                }
                let data = TensorData::new(v, shape.to_vec());
                if dtype == DType::F32 {
                    data
                } else {
                    data.convert_dtype(dtype)
                }
            }
        };
        self.used.borrow_mut().insert(m.key);
        Ok(data)
    }

    /// Read the model key `key` as a tensor of shape `shape` on this file's device and dtype.
    pub fn tensor<const D: usize>(&self, key: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let data = self.read_data(key, &shape, self.dtype)?;
        // Created in the load dtype itself: `&device` alone would convert to the device's
        // default float (f32), widening half weights in memory.
        Ok(Tensor::from_data(data, (&self.device, self.dtype)))
    }

    /// Read the model key `key` as a tensor of shape `shape` in host memory (the flex
    /// device), for layout changes before [`Tensor::from_data`] uploads it once.
    pub fn host_tensor<const D: usize>(&self, key: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let data = self.read_data(key, &shape, self.dtype)?;
        Ok(Tensor::from_data(data, (&Device::flex(), self.dtype)))
    }

    /// The matrix `key` (`[rows, cols]` in the file) transposed to `[cols, rows]`, contiguous,
    /// on this file's device: transposed in host memory, then uploaded once (no copy from the
    /// device back to the host).
    pub fn transposed_matrix(&self, key: &str, [rows, cols]: [usize; 2]) -> Result<Tensor<2>> {
        let host = self.host_tensor(key, [rows, cols])?.transpose();
        Ok(Tensor::from_data(
            host.into_data(),
            (&self.device, self.dtype),
        ))
    }

    /// The file keys this view owns (all of them without a [`KeyMap`]).
    fn owned(&self) -> Vec<String> {
        let Some(file) = &self.file else {
            return Vec::new();
        };
        file.entries
            .keys()
            .filter(|k| self.map.as_ref().is_none_or(|m| m.owns(k)))
            .cloned()
            .collect()
    }

    /// The owned file keys not read yet (other than those `ignore` accepts), sorted.
    pub fn unused(&self, ignore: impl Fn(&str) -> bool) -> Vec<String> {
        let used = self.used.borrow();
        let mut unused: Vec<String> = self
            .owned()
            .into_iter()
            .filter(|k| !used.contains(k) && !ignore(k))
            .collect();
        unused.sort();
        unused
    }

    /// Whether the file key `key` was read.
    pub fn was_used(&self, key: &str) -> bool {
        self.used.borrow().contains(key)
    }

    /// Fail with [`Error::UnexpectedTensors`] if the file holds keys (of this view) that were
    /// never read (other than those `ignore` accepts).
    pub fn finish(&self, ignore: impl Fn(&str) -> bool) -> Result<()> {
        let mut unused = self.unused(ignore);
        if unused.is_empty() {
            return Ok(());
        }
        let count = unused.len();
        unused.truncate(5);
        Err(Error::UnexpectedTensors {
            file: self.path().to_path_buf(),
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

    /// Read `name` (under this view) in host memory (see [`Weights::host_tensor`]).
    pub fn host_tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        self.weights.host_tensor(&self.key(name), shape)
    }

    /// The matrix `name` (under this view, `[rows, cols]`) as a contiguous `[cols, rows]`
    /// tensor (see [`Weights::transposed_matrix`]).
    pub fn transposed_matrix(&self, name: &str, shape: [usize; 2]) -> Result<Tensor<2>> {
        self.weights.transposed_matrix(&self.key(name), shape)
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
