//! Writing a `.safetensors` file tensor by tensor, when every tensor's name, dtype and shape
//! is known before its values are (a reference branch computed step by step): the header is
//! written first, then each tensor's bytes in the declared order, into a temporary file that
//! is renamed into place only once complete — no half-written file is ever seen under the
//! final name.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use burn::tensor::Tensor;

use crate::error::{Error, Result};

/// The dtypes the writer stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredAs {
    /// 32-bit float.
    F32,
    /// IEEE half (values rounded to nearest).
    F16,
}

impl StoredAs {
    fn size(self) -> usize {
        match self {
            StoredAs::F32 => 4,
            StoredAs::F16 => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            StoredAs::F32 => "F32",
            StoredAs::F16 => "F16",
        }
    }
}

/// A `.safetensors` file being written in a fixed, declared order.
pub struct SafetensorsWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<std::fs::File>>,
    order: Vec<(String, StoredAs, Vec<usize>)>,
    next: usize,
}

impl std::fmt::Debug for SafetensorsWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsWriter")
            .field("path", &self.path)
            .field("written", &self.next)
            .field("tensors", &self.order.len())
            .finish()
    }
}

impl SafetensorsWriter {
    /// Start writing `path` with these tensors, in this order, and `metadata`.
    pub fn create(
        path: &Path,
        tensors: Vec<(String, StoredAs, Vec<usize>)>,
        metadata: &[(&str, String)],
    ) -> Result<Self> {
        let tmp = crate::atomic::temp_path(path);
        let mut header = serde_json::Map::new();
        let mut offset = 0usize;
        for (name, dtype, shape) in &tensors {
            let n = shape.iter().product::<usize>() * dtype.size();
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [offset, offset + n]}),
            );
            offset += n;
        }
        let meta: BTreeMap<String, String> = [("producer".to_string(), "layret".to_string())]
            .into_iter()
            .chain(metadata.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .collect();
        header.insert("__metadata__".into(), serde_json::json!(meta));
        let mut text = serde_json::Value::Object(header).to_string();
        while !text.len().is_multiple_of(8) {
            text.push(' ');
        }
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let w = |out: &mut BufWriter<std::fs::File>, b: &[u8]| {
            out.write_all(b).map_err(|e| Error::io("writing", &tmp, e))
        };
        w(&mut out, &(text.len() as u64).to_le_bytes())?;
        w(&mut out, text.as_bytes())?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            out: Some(out),
            order: tensors,
            next: 0,
        })
    }

    /// Write the next tensor: its name and shape must be the next declared ones.
    pub fn write<const D: usize>(&mut self, name: &str, t: &Tensor<D>) -> Result<()> {
        self.write_batch(&[(name, t)])
    }

    /// Write the next tensors, in order (each must be the next declared one), reading their
    /// values back from the device at most twice — once for those stored as f32 and once for
    /// those stored as f16 — instead of once per tensor.
    pub fn write_batch<const D: usize>(&mut self, items: &[(&str, &Tensor<D>)]) -> Result<()> {
        let mut stored = Vec::with_capacity(items.len());
        for (i, (name, t)) in items.iter().enumerate() {
            let Some((want, dtype, shape)) = self.order.get(self.next + i) else {
                return Err(Error::invalid(
                    "tensor file",
                    format!(
                        "{}: `{name}` is past the declared tensors",
                        self.path.display()
                    ),
                ));
            };
            if want != name || shape.as_slice() != t.dims() {
                return Err(Error::invalid(
                    "tensor file",
                    format!(
                        "{}: expected `{want}` {shape:?} next, got `{name}` {:?}",
                        self.path.display(),
                        t.dims()
                    ),
                ));
            }
            stored.push(*dtype);
        }
        // One flattened tensor per stored dtype, read back once.
        let flat = |as_f16: bool| -> Option<Tensor<1>> {
            let parts: Vec<Tensor<1>> = items
                .iter()
                .zip(&stored)
                .filter(|(_, d)| matches!(d, StoredAs::F16) == as_f16)
                .map(|((_, t), _)| {
                    let n: usize = t.dims().iter().product();
                    // Tensors of several dtypes (f32 maps, a bf16 model's keys) go into one
                    // read-back: each in the stored dtype first.
                    let to = if as_f16 {
                        burn::tensor::DType::F16
                    } else {
                        burn::tensor::DType::F32
                    };
                    let t = (*t).clone().reshape([n]);
                    if t.dtype() == to { t } else { t.cast(to) }
                })
                .collect();
            (!parts.is_empty()).then(|| Tensor::cat(parts, 0))
        };
        let what = items.first().map_or("tensors", |(n, _)| *n);
        let f32_values = match flat(false) {
            Some(t) => crate::host::to_f32_vec(t, what)?,
            None => Vec::new(),
        };
        let f16_values = match flat(true) {
            Some(t) => crate::host::to_f16_vec(t, what)?,
            None => Vec::new(),
        };
        let (mut at32, mut at16) = (0usize, 0usize);
        let mut bytes: Vec<u8> = Vec::new();
        for ((_, t), dtype) in items.iter().zip(&stored) {
            let n: usize = t.dims().iter().product();
            match dtype {
                StoredAs::F32 => {
                    bytes.extend(
                        f32_values[at32..at32 + n]
                            .iter()
                            .flat_map(|v| v.to_le_bytes()),
                    );
                    at32 += n;
                }
                StoredAs::F16 => {
                    bytes.extend(
                        f16_values[at16..at16 + n]
                            .iter()
                            .flat_map(|v| v.to_le_bytes()),
                    );
                    at16 += n;
                }
            }
        }
        let tmp = self.tmp.clone();
        if let Some(out) = self.out.as_mut() {
            out.write_all(&bytes)
                .map_err(|e| Error::io("writing", &tmp, e))?;
        }
        self.next += items.len();
        Ok(())
    }

    /// Flush, sync and rename into place; every declared tensor must have been written.
    pub fn finish(mut self) -> Result<()> {
        if self.next != self.order.len() {
            return Err(Error::invalid(
                "tensor file",
                format!(
                    "{}: {} of {} tensors written",
                    self.path.display(),
                    self.next,
                    self.order.len()
                ),
            ));
        }
        let tmp = self.tmp.clone();
        let io = |e| Error::io("writing", &tmp, e);
        if let Some(out) = self.out.take() {
            let file = out.into_inner().map_err(|e| io(e.into_error()))?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io("renaming", &self.path, e))
    }
}

impl Drop for SafetensorsWriter {
    /// An unfinished file is removed (an error or a cancel mid-way leaves nothing).
    fn drop(&mut self) {
        if self.out.is_some() {
            self.out = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
