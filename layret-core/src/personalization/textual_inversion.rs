use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor};

use crate::clip::ClipTextEncoder;
use crate::error::{Error, Result};
use crate::tokenizer::ClipTokenizer;
use crate::weights::Weights;

/// A learned embedding: one token, `n` vectors.
#[derive(Debug, Clone)]
pub struct TextualInversion {
    /// The placeholder token (e.g. `<cat-toy>`).
    pub token: String,
    /// `[n, dim]`.
    pub vectors: Tensor<2>,
    /// The file it came from.
    pub path: PathBuf,
}

impl TextualInversion {
    /// Read an embedding file — `.safetensors`, or a pickle (`learned_embeds.bin`, A1111's
    /// `.pt`) read as data: diffusers' format (`{token: [dim]}` or `{token: [n, dim]}`) or
    /// A1111/kohya's (`emb_params` or `string_to_param.*`: `[n, dim]`, no token name). `token`
    /// names the placeholder; without it an A1111 file's token is its file stem, as A1111
    /// names embeddings (`my-style.pt` → `my-style`), and a diffusers file's its key.
    pub fn load(path: &Path, token: Option<&str>, device: &Device) -> Result<Self> {
        let w = Weights::open(path, device)?;
        let keys = w.keys();
        let invalid = |message: String| Error::InvalidArgument {
            name: "textual inversion".into(),
            message: format!("{}: {message}", path.display()),
        };
        let (key, file_token) = if let Some(k) = keys
            .iter()
            .find(|k| *k == "emb_params" || k.starts_with("string_to_param"))
        {
            (k.clone(), None)
        } else if keys.len() == 1 {
            (keys[0].clone(), Some(keys[0].clone()))
        } else if keys.is_empty() {
            return Err(invalid("the file holds no embedding".into()));
        } else {
            return Err(invalid(format!(
                "expected one token's embedding, `emb_params` or `string_to_param`, found {} tensors ({})",
                keys.len(),
                keys.iter().take(4).cloned().collect::<Vec<_>>().join(", ")
            )));
        };
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let token = match (token, file_token) {
            (Some(t), _) => t.to_string(),
            (None, Some(t)) => t,
            (None, None) => stem,
        };
        if token.trim().is_empty() {
            return Err(invalid("the token is empty".into()));
        }
        let shape = w.shape_of(&key).map(<[usize]>::to_vec).unwrap_or_default();
        let vectors: Tensor<2> = match shape.as_slice() {
            [d] => w.tensor::<1>(&key, [*d])?.reshape([1, *d]),
            [n, d] if *n > 0 => w.tensor(&key, [*n, *d])?,
            _ => {
                return Err(Error::TensorShape {
                    file: path.to_path_buf(),
                    key,
                    expected: vec![0, 0],
                    got: shape,
                });
            }
        };
        Ok(Self {
            token,
            vectors,
            path: path.to_path_buf(),
        })
    }

    /// Number of vectors.
    pub fn num_vectors(&self) -> usize {
        self.vectors.dims()[0]
    }

    /// Add the token(s) to `tokenizer` and return a text encoder with the vectors appended to
    /// its token embedding (diffusers' `load_textual_inversion`). Fails on a dimension
    /// mismatch (naming both), a token already in the vocabulary, or a tokenizer/encoder pair
    /// whose vocabularies are out of step.
    pub fn apply(
        &self,
        tokenizer: &mut ClipTokenizer,
        encoder: &ClipTextEncoder,
    ) -> Result<ClipTextEncoder> {
        let [n, d] = self.vectors.dims();
        if d != encoder.hidden_size() {
            return Err(Error::InvalidArgument {
                name: "textual inversion".into(),
                message: format!(
                    "{}: the embedding has dimension {d}, the text encoder {} (a file for another base model?)",
                    self.path.display(),
                    encoder.hidden_size()
                ),
            });
        }
        if tokenizer.vocab_size() != encoder.vocab_size() {
            return Err(Error::invalid(
                "textual inversion",
                format!(
                    "the tokenizer has {} tokens but the text encoder {} rows",
                    tokenizer.vocab_size(),
                    encoder.vocab_size()
                ),
            ));
        }
        let ids = tokenizer.add_multi_vector_token(&self.token, n)?;
        let first = encoder.vocab_size() as u32;
        if ids
            .iter()
            .enumerate()
            .any(|(i, &id)| id != first + i as u32)
        {
            return Err(Error::invalid(
                "textual inversion",
                format!("token ids {ids:?} are not the next rows of the embedding ({first}…)"),
            ));
        }
        encoder.with_extra_tokens(self.vectors.clone())
    }
}
