//! Writing a `.safetensors` file tensor by tensor, when every tensor's name, dtype and shape
//! is known before its values are (a reference branch computed step by step): the header is
//! written first, then each tensor's bytes in the declared order, into a temporary file that
//! is renamed into place only once complete — no half-written file is ever seen under the
//! final name.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Tensor};

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
        let Some((want, dtype, shape)) = self.order.get(self.next) else {
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
        let bytes: Vec<u8> = match dtype {
            StoredAs::F32 => crate::host::to_f32_vec(t.clone(), name)?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            StoredAs::F16 => t
                .clone()
                .cast(DType::F16)
                .into_data()
                .convert::<half::f16>()
                .try_into_vec::<half::f16>()
                .map_err(|e| Error::invalid(name, format!("cannot read the values back: {e:?}")))?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        };
        let tmp = self.tmp.clone();
        if let Some(out) = self.out.as_mut() {
            out.write_all(&bytes)
                .map_err(|e| Error::io("writing", &tmp, e))?;
        }
        self.next += 1;
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
