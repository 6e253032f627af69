//! The CLIP BPE tokenizer, reproducing transformers' `CLIPTokenizer`.
//!
//! Built on the `tokenizers` crate with exactly the pipeline transformers uses for CLIP: NFC,
//! whitespace runs collapsed to one space, lower-casing, CLIP's split pattern, byte-level
//! mapping, BPE with the `</w>` end-of-word suffix. A model folder's `tokenizer/` is read from
//! `tokenizer.json` when present, else from `vocab.json` + `merges.txt` (the layout of SD
//! folders on the Hub); `tokenizer_config.json` names the pad token (SD 1.x pads with
//! `<|endoftext|>`, SD 2.x with `!`) and the maximum length.
//!
//! Encoding is explicit about length: [`ClipTokenizer::encode`] fails with
//! [`Error::PromptTooLong`] past the maximum (77 with BOS/EOS), [`ClipTokenizer::encode_with`]
//! can truncate instead.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};

/// CLIP's begin-of-text token.
pub const BOS_TOKEN: &str = "<|startoftext|>";
/// CLIP's end-of-text token (also the SD 1.x pad token).
pub const EOS_TOKEN: &str = "<|endoftext|>";
/// CLIP's split pattern (transformers' `CLIPTokenizer`).
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// What to do with a prompt longer than the text encoder's maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Fail with [`Error::PromptTooLong`] (the default: a silently cut prompt makes a
    /// different image than the user asked for).
    #[default]
    Error,
    /// Keep BOS, the first `max - 2` tokens and EOS, as transformers does with
    /// `truncation=True`.
    Truncate,
}

/// A CLIP tokenizer with BOS/EOS, padding and an explicit length policy.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    bos: u32,
    eos: u32,
    pad: u32,
    max_len: usize,
    /// Multi-vector tokens (textual inversion): `(token, n)` expands to
    /// `token token_1 … token_{n-1}` in prompts.
    multi_vector: Vec<(String, usize)>,
}

fn tok_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Tokenizer {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// A token field of `tokenizer_config.json`: a string or an AddedToken object.
fn token_field(cfg: &Value, key: &str) -> Option<String> {
    match cfg.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// A BPE vocabulary: token → id.
type Vocab = serde_json::Map<String, Value>;

/// GPT-2's byte-to-symbol table, as CLIP builds it: the printable bytes map to themselves,
/// the rest to code points from 256 up, in byte order.
fn bytes_to_unicode() -> Vec<char> {
    let mut printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~')).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut table = vec!['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    table
}

/// CLIP's vocabulary (token → id) and merges from the built-in `bpe_simple_vocab_16e6`, exactly
/// as CLIP builds them: the 256 byte symbols in GPT-2's order, their `</w>` forms, one token per
/// merge (the first 48894 lines after the header), then the two special tokens.
fn builtin_vocab() -> Result<(Vocab, Vec<(String, String)>)> {
    use std::io::Read;
    static GZ: &[u8] = include_bytes!("clip/bpe_simple_vocab_16e6.txt.gz");
    let origin = Path::new("<built-in CLIP vocabulary>");
    let mut text = String::new();
    flate2::read::GzDecoder::new(GZ)
        .read_to_string(&mut text)
        .map_err(|e| tok_err(origin, format!("cannot decompress: {e}")))?;
    let merges: Vec<(String, String)> = text
        .split('\n')
        .skip(1)
        .take(49152 - 256 - 2)
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap_or((l, ""));
            (a.to_string(), b.to_string())
        })
        .collect();
    // The byte symbols in the order CLIP lists them: printable bytes first, then the rest.
    let table = bytes_to_unicode();
    let mut order: Vec<usize> = (0..256).collect();
    order.sort_by_key(|&b| u32::from(table[b]) >= 256);
    let mut tokens: Vec<String> = order.iter().map(|&b| table[b].to_string()).collect();
    let words: Vec<String> = tokens.iter().map(|t| format!("{t}</w>")).collect();
    tokens.extend(words);
    tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    tokens.push(BOS_TOKEN.into());
    tokens.push(EOS_TOKEN.into());
    if tokens.len() != 49408 {
        return Err(tok_err(
            origin,
            format!("built {} tokens, expected 49408", tokens.len()),
        ));
    }
    let vocab = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, Value::from(i as u64)))
        .collect();
    Ok((vocab, merges))
}

/// The files [`ClipTokenizer::from_model_dir`] reads for `dir` (those that exist), in a fixed
/// order, for content fingerprints.
pub(crate) fn tokenizer_files(dir: &Path) -> Vec<PathBuf> {
    let sub = dir.join("tokenizer");
    let dir = if sub.is_dir() { sub } else { dir.to_path_buf() };
    let json = dir.join("tokenizer.json");
    let mut files = vec![dir.join("tokenizer_config.json")];
    if json.exists() {
        files.push(json);
    } else {
        files.push(dir.join("vocab.json"));
        files.push(dir.join("merges.txt"));
    }
    files.retain(|f| f.exists());
    files
}

impl ClipTokenizer {
    /// Load a model folder's `tokenizer/` subfolder (or the folder itself if it holds the
    /// tokenizer files).
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let sub = dir.join("tokenizer");
        if sub.is_dir() {
            Self::from_dir(sub)
        } else {
            Self::from_dir(dir)
        }
    }

    /// Load `tokenizer.json`, or `vocab.json` + `merges.txt`, from `dir`, with
    /// `tokenizer_config.json` if present.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::MissingFile {
                what: "tokenizer folder".into(),
                path: dir.to_path_buf(),
            });
        }
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path)
                .map_err(|e| Error::io("reading", &cfg_path, e))?;
            serde_json::from_str(&text).map_err(|e| Error::Config {
                file: cfg_path.clone(),
                message: e.to_string(),
            })?
        } else {
            json!({})
        };

        let json_path = dir.join("tokenizer.json");
        let (inner, path) = if json_path.exists() {
            let t = Tokenizer::from_file(&json_path)
                .map_err(|e| tok_err(&json_path, format!("cannot parse: {e}")))?;
            (t, json_path)
        } else {
            let vocab_path = dir.join("vocab.json");
            let merges_path = dir.join("merges.txt");
            for (p, what) in [
                (&vocab_path, "tokenizer vocabulary (vocab.json)"),
                (&merges_path, "tokenizer merges (merges.txt)"),
            ] {
                if !p.exists() {
                    return Err(Error::MissingFile {
                        what: format!("{what}; no tokenizer.json either"),
                        path: p.clone(),
                    });
                }
            }
            (
                Self::build_from_vocab(&vocab_path, &merges_path)?,
                dir.to_path_buf(),
            )
        };

        let id = |tok: &str| {
            inner
                .token_to_id(tok)
                .ok_or_else(|| tok_err(&path, format!("token {tok:?} is not in the vocabulary")))
        };
        let bos = id(&token_field(&cfg, "bos_token").unwrap_or_else(|| BOS_TOKEN.into()))?;
        let eos = id(&token_field(&cfg, "eos_token").unwrap_or_else(|| EOS_TOKEN.into()))?;
        let pad_tok = token_field(&cfg, "pad_token").unwrap_or_else(|| EOS_TOKEN.into());
        let pad = id(&pad_tok)?;
        let max_len = match cfg.get("model_max_length").and_then(Value::as_u64) {
            // transformers writes a huge sentinel when the length is unset.
            Some(n) if n > 0 && n < 1_000_000 => n as usize,
            _ => 77,
        };
        if max_len < 2 {
            return Err(Error::Config {
                file: cfg_path,
                message: format!("model_max_length {max_len} leaves no room for BOS/EOS"),
            });
        }
        Ok(Self {
            inner,
            path,
            bos,
            eos,
            pad,
            max_len,
            multi_vector: Vec::new(),
        })
    }

    /// The CLIP tokenizer every SD 1.x/2.x model uses, from the BPE vocabulary built into
    /// layret (OpenAI CLIP's `bpe_simple_vocab_16e6.txt.gz`, 49408 tokens), for models that
    /// carry no tokenizer files (single-file checkpoints). `pad_token` is the padding SD 1.x
    /// (`<|endoftext|>`) or SD 2.x (`!`) uses; 77 tokens.
    pub fn builtin(pad_token: &str) -> Result<Self> {
        let origin = Path::new("<built-in CLIP vocabulary>");
        let (vocab, merges) = builtin_vocab()?;
        let inner = Self::build(vocab, merges, origin)?;
        let id = |tok: &str| {
            inner
                .token_to_id(tok)
                .ok_or_else(|| tok_err(origin, format!("token {tok:?} is not in the vocabulary")))
        };
        Ok(Self {
            bos: id(BOS_TOKEN)?,
            eos: id(EOS_TOKEN)?,
            pad: id(pad_token)?,
            inner,
            path: origin.to_path_buf(),
            max_len: 77,
            multi_vector: Vec::new(),
        })
    }

    /// The transformers CLIP pipeline over a vocab.json / merges.txt pair.
    fn build_from_vocab(vocab_path: &Path, merges_path: &Path) -> Result<Tokenizer> {
        let vocab_text =
            std::fs::read_to_string(vocab_path).map_err(|e| Error::io("reading", vocab_path, e))?;
        let vocab: serde_json::Map<String, Value> = serde_json::from_str(&vocab_text)
            .map_err(|e| tok_err(vocab_path, format!("not a JSON object of token ids: {e}")))?;
        for (tok, id) in &vocab {
            if !id.is_u64() {
                return Err(tok_err(
                    vocab_path,
                    format!("token {tok:?} has id {id}, expected a non-negative integer"),
                ));
            }
        }
        let merges_text = std::fs::read_to_string(merges_path)
            .map_err(|e| Error::io("reading", merges_path, e))?;
        let mut merges = Vec::new();
        for (n, line) in merges_text.lines().enumerate() {
            if (n == 0 && line.starts_with("#version")) || line.is_empty() {
                continue;
            }
            let parts: Vec<&str> = line.split(' ').collect();
            if parts.len() != 2 {
                return Err(tok_err(
                    merges_path,
                    format!(
                        "line {}: expected two space-separated symbols, got {line:?}",
                        n + 1
                    ),
                ));
            }
            merges.push((parts[0].to_string(), parts[1].to_string()));
        }
        Self::build(vocab, merges, vocab_path)
    }

    /// The transformers CLIP pipeline over a vocabulary and merges (`origin` names them in
    /// errors).
    fn build(vocab: Vocab, merges: Vec<(String, String)>, origin: &Path) -> Result<Tokenizer> {
        let vocab_path = origin;
        let merges: Vec<Value> = merges.into_iter().map(|(a, b)| json!([a, b])).collect();
        let mut added = Vec::new();
        for tok in [BOS_TOKEN, EOS_TOKEN] {
            let Some(id) = vocab.get(tok).and_then(Value::as_u64) else {
                return Err(tok_err(
                    vocab_path,
                    format!("special token {tok} is missing"),
                ));
            };
            added.push(
                json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true}),
            );
        }
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"},
                {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
                {"type": "Lowercase"}]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": CLIP_PATTERN}, "behavior": "Removed",
                 "invert": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                 "use_regex": true}]},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": EOS_TOKEN,
                "continuing_subword_prefix": "", "end_of_word_suffix": "</w>",
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges},
        });
        let text = doc.to_string();
        text.parse::<Tokenizer>()
            .map_err(|e| tok_err(vocab_path, format!("cannot build the BPE model: {e}")))
    }

    /// The file or folder the tokenizer was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The padded length (77 for CLIP).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The begin-of-text id.
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// The end-of-text id.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// The padding id.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of `token`, if it is in the vocabulary (added tokens included).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary entry of `id` (e.g. `"dog</w>"`, `</w>` marking a word's end), if any.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Add new tokens (e.g. textual-inversion placeholders) as transformers' `add_tokens`
    /// does; returns their ids. Fails if one is already in the vocabulary.
    pub fn add_tokens(&mut self, tokens: &[&str]) -> Result<Vec<u32>> {
        for t in tokens {
            if self.inner.token_to_id(t).is_some() {
                return Err(tok_err(
                    &self.path,
                    format!("token {t:?} is already in the vocabulary"),
                ));
            }
        }
        let added: Vec<AddedToken> = tokens
            .iter()
            .map(|t| AddedToken::from(t.to_string(), false).normalized(true))
            .collect();
        self.inner.add_tokens(&added);
        tokens
            .iter()
            .map(|t| {
                self.inner
                    .token_to_id(t)
                    .ok_or_else(|| tok_err(&self.path, format!("token {t:?} was not added")))
            })
            .collect()
    }

    /// Add a textual-inversion token of `n` vectors: `token`, `token_1`, … `token_{n-1}`, as
    /// diffusers does; prompts mentioning `token` are expanded to all of them. Returns the ids.
    pub fn add_multi_vector_token(&mut self, token: &str, n: usize) -> Result<Vec<u32>> {
        if n == 0 {
            return Err(tok_err(
                &self.path,
                format!("token {token:?} needs at least one vector"),
            ));
        }
        let names: Vec<String> = std::iter::once(token.to_string())
            .chain((1..n).map(|i| format!("{token}_{i}")))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let ids = self.add_tokens(&refs)?;
        if n > 1 {
            self.multi_vector.push((token.to_string(), n));
        }
        Ok(ids)
    }

    /// diffusers' `maybe_convert_prompt`: every multi-vector token the prompt uses is replaced
    /// by the sequence of its vector tokens.
    pub fn expand_prompt(&self, prompt: &str) -> Result<String> {
        if self.multi_vector.is_empty() {
            return Ok(prompt.to_string());
        }
        let ids = self.raw_ids(prompt)?;
        let mut out = prompt.to_string();
        for (token, n) in &self.multi_vector {
            let Some(id) = self.inner.token_to_id(token) else {
                continue;
            };
            if ids.contains(&id) {
                let replacement: Vec<String> = std::iter::once(token.clone())
                    .chain((1..*n).map(|i| format!("{token}_{i}")))
                    .collect();
                out = out.replace(token.as_str(), &replacement.join(" "));
            }
        }
        Ok(out)
    }

    fn raw_ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err(&self.path, format!("cannot encode {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The BPE ids of `text` without BOS/EOS or padding (how phrases are matched in prompts);
    /// multi-vector tokens are expanded first.
    pub fn encode_phrase(&self, text: &str) -> Result<Vec<u32>> {
        let text = self.expand_prompt(text)?;
        let enc = self
            .inner
            .encode(text.as_str(), false)
            .map_err(|e| tok_err(&self.path, format!("cannot encode {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `[BOS, tokens…, EOS, pad…]` of length [`max_len`](Self::max_len); fails with
    /// [`Error::PromptTooLong`] if the prompt does not fit.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        self.encode_with(prompt, Truncation::Error)
    }

    /// Like [`encode`](Self::encode) with an explicit length policy.
    pub fn encode_with(&self, prompt: &str, truncation: Truncation) -> Result<Vec<u32>> {
        let mut body = self.encode_phrase(prompt)?;
        let room = self.max_len - 2;
        if body.len() > room {
            match truncation {
                Truncation::Error => {
                    return Err(Error::PromptTooLong {
                        prompt: prompt.to_string(),
                        tokens: body.len() + 2,
                        max: self.max_len,
                    });
                }
                Truncation::Truncate => body.truncate(room),
            }
        }
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.bos);
        ids.extend(body);
        ids.push(self.eos);
        ids.resize(self.max_len, self.pad);
        Ok(ids)
    }

    /// The number of tokens `prompt` needs, BOS and EOS included.
    pub fn token_count(&self, prompt: &str) -> Result<usize> {
        Ok(self.encode_phrase(prompt)?.len() + 2)
    }
}
