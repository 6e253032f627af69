//! The one error type of the layret crate family.
//!
//! Every variant says *what* was wrong and *where* (file, key, expected vs got), so that a
//! message printed by the CLI or logged by an application is enough to fix the input.

use std::path::PathBuf;

/// Result alias used across layret.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in layret, from a missing file to a prompt that is too long.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or folder could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("reading", "writing", "opening", ...).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },

    /// A file that must exist is missing.
    #[error("missing {what}: {} does not exist", path.display())]
    MissingFile {
        /// What the file is ("text encoder weights", "tokenizer vocabulary", ...).
        what: String,
        /// The path that was looked for.
        path: PathBuf,
    },

    /// The folder is not a diffusers Stable Diffusion folder.
    #[error("{} is not a diffusers Stable Diffusion folder: {reason}", path.display())]
    NotADiffusersFolder {
        /// The folder.
        path: PathBuf,
        /// Why (which file or subfolder is missing or wrong).
        reason: String,
    },

    /// A file given as a single-file checkpoint is not an SD 1.x/2.x one.
    #[error("{} is not a usable single-file checkpoint: {reason}", path.display())]
    NotASingleFile {
        /// The file.
        path: PathBuf,
        /// What was found instead (SDXL, an inpainting UNet, no UNet keys, …).
        reason: String,
    },

    /// A configuration file could not be parsed or has a missing/invalid field.
    #[error("invalid config {}: {message}", file.display())]
    Config {
        /// The config file.
        file: PathBuf,
        /// What is wrong (serde's message names the field, line and column).
        message: String,
    },

    /// A configuration names a setting layret does not support.
    #[error("unsupported setting in {}: `{key}` = {value} ({supported})", file.display())]
    UnsupportedConfig {
        /// The config file.
        file: PathBuf,
        /// The setting.
        key: String,
        /// Its value in the file.
        value: String,
        /// What is supported.
        supported: String,
    },

    /// A safetensors file is malformed (truncated, bad header, ...).
    #[error("malformed safetensors file {}: {message}", file.display())]
    Safetensors {
        /// The file.
        file: PathBuf,
        /// The parser's message.
        message: String,
    },

    /// A PyTorch pickle (`.bin`, `.pt`, `.ckpt`) is malformed, truncated, or holds something
    /// other than tensors and plain data.
    #[error("PyTorch file {}: {message}", file.display())]
    Pickle {
        /// The file.
        file: PathBuf,
        /// What is wrong (the reader's message, or what was found where).
        message: String,
    },

    /// A tensor the model needs is absent from the weights file.
    #[error("missing tensor `{key}` in {}", file.display())]
    MissingTensor {
        /// The file.
        file: PathBuf,
        /// The checkpoint key.
        key: String,
    },

    /// The weights file holds tensors the model does not use (a different architecture?).
    #[error("unexpected tensors in {} ({count} in all, e.g. {}); the config does not describe these weights", file.display(), keys.join(", "))]
    UnexpectedTensors {
        /// The file.
        file: PathBuf,
        /// The number of unexpected keys.
        count: usize,
        /// The first few unexpected keys.
        keys: Vec<String>,
    },

    /// A tensor in the weights file has the wrong shape.
    #[error("tensor `{key}` in {} has shape {got:?}, expected {expected:?}", file.display())]
    TensorShape {
        /// The file.
        file: PathBuf,
        /// The checkpoint key.
        key: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        got: Vec<usize>,
    },

    /// A tensor in the weights file has a dtype layret cannot load.
    #[error("tensor `{key}` in {} has dtype {dtype}, expected a float dtype (F32, F16, BF16)", file.display())]
    TensorDtype {
        /// The file.
        file: PathBuf,
        /// The checkpoint key.
        key: String,
        /// The dtype in the file.
        dtype: String,
    },

    /// A tensor in the weights file holds NaN or infinite values.
    #[error("tensor `{key}` in {} holds {count} non-finite values (NaN/Inf)", file.display())]
    NonFiniteTensor {
        /// The file.
        file: PathBuf,
        /// The checkpoint key.
        key: String,
        /// How many values are not finite.
        count: usize,
    },

    /// A tensor holds values beyond the range of the dtype it is loaded in (f16: |x| > 65504).
    #[error(
        "tensor `{key}` in {} has {count} values beyond {dtype}'s range (largest |x| = {max}); load it in f32 or bf16",
        file.display()
    )]
    DtypeOverflow {
        /// The file.
        file: PathBuf,
        /// The checkpoint key.
        key: String,
        /// The load dtype (`f16`).
        dtype: String,
        /// How many values overflow.
        count: usize,
        /// The largest magnitude in the tensor.
        max: f32,
    },

    /// The tokenizer files are missing or malformed.
    #[error("tokenizer {}: {message}", path.display())]
    Tokenizer {
        /// The tokenizer file or folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A prompt needs more tokens than the text encoder takes.
    #[error(
        "prompt is {tokens} tokens long (with BOS/EOS), the text encoder takes at most {max}; shorten it or enable truncation: \"{prompt}\""
    )]
    PromptTooLong {
        /// The prompt.
        prompt: String,
        /// Its token count including BOS and EOS.
        tokens: usize,
        /// The maximum (77 for CLIP).
        max: usize,
    },

    /// A phrase that must appear in a prompt does not.
    #[error("the phrase \"{phrase}\" does not appear in the prompt \"{prompt}\"")]
    PhraseNotInPrompt {
        /// The phrase.
        phrase: String,
        /// The prompt.
        prompt: String,
    },

    /// A tensor passed at run time has the wrong shape.
    #[error("{what} has shape {got:?}, expected {expected}")]
    Shape {
        /// Which tensor ("initial noise", "input_ids", ...).
        what: String,
        /// The shape that was expected, in words or numbers.
        expected: String,
        /// The shape that was given.
        got: Vec<usize>,
    },

    /// An argument or setting has an invalid value.
    #[error("invalid {name}: {message}")]
    InvalidArgument {
        /// The argument ("steps", "width", "guidance", ...).
        name: String,
        /// What is wrong, with the value given.
        message: String,
    },

    /// An image could not be read, or is not usable.
    #[error("image {}: {message}", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// The requested device's backend is not compiled into this binary.
    #[error("device `{device}` is not available: {message}")]
    DeviceUnavailable {
        /// The device asked for.
        device: String,
        /// Why (e.g. which cargo feature enables it).
        message: String,
    },

    /// The device cannot compute in the requested float dtype (wgpu's WGSL has no bf16).
    #[error("device `{device}` cannot compute in {dtype}; use {alternatives}")]
    UnsupportedDtype {
        /// The device.
        device: String,
        /// The dtype asked for (`--dtype` / `--vae-dtype`).
        dtype: String,
        /// The dtypes it can use instead, e.g. "f16 or f32".
        alternatives: String,
    },

    /// The caller asked to stop (its progress callback answered `ControlFlow::Break`, e.g. on
    /// Ctrl-C); the work finished before is kept by the caller.
    #[error("cancelled at {stage} step {step}/{total}")]
    Cancelled {
        /// The stage that was running.
        stage: String,
        /// Its last finished step.
        step: usize,
        /// Its steps in all.
        total: usize,
    },

    /// A processor asked for a branch the batch does not have.
    #[error("branch {branch} is not in this batch (its branches: {branches})")]
    UnknownBranch {
        /// The branch asked for.
        branch: String,
        /// The batch's branches, in order.
        branches: String,
    },

    /// Recorded keys/values a processor needs are missing.
    #[error("no recorded keys/values of the {branch} branch for {site} at step {step}; {hint}")]
    MissingKv {
        /// Whose keys/values ("context", "reference", ...).
        branch: String,
        /// The attention site.
        site: String,
        /// The sampling step.
        step: usize,
        /// What to do about it.
        hint: String,
    },

    /// A route that must handle a site in every pass matched none.
    #[error(
        "the route {route} matched no attention site in a {pass} pass; check its selector against `layret sites`"
    )]
    UnmatchedRoute {
        /// The route's selector, in words.
        route: String,
        /// The pass (sample, invert, reference).
        pass: String,
    },

    /// An attention processor failed.
    #[error("attention processor at {site}: {message}")]
    Processor {
        /// The attention site.
        site: String,
        /// What went wrong.
        message: String,
    },

    /// Sampling produced non-finite values.
    #[error("non-finite values (NaN/Inf) in {what} at step {step}; {suggestion}")]
    NonFinite {
        /// What went non-finite ("latents", "noise prediction").
        what: String,
        /// The sampling step.
        step: usize,
        /// What to try instead.
        suggestion: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Io`].
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name: name.into(),
            message: message.into(),
        }
    }
}
