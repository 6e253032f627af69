//! Reading `config.json` files into typed configs with errors that name the file.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Check the settings of a config that layret does not read: each must be in `fixed` with an
/// accepted value (JSON text), be ignorable (`_`-prefixed or in `ignored`), or it is an
/// [`Error::UnsupportedConfig`]; `unknown` describes what an unknown key is.
pub fn check_other_settings(
    file: &Path,
    other: &serde_json::Map<String, serde_json::Value>,
    fixed: &[(&str, &[&str])],
    ignored: &[&str],
    unknown: &str,
) -> Result<()> {
    for (key, value) in other {
        let s = value.to_string();
        let supported = match fixed.iter().find(|(k, _)| k == key) {
            Some((_, ok)) if ok.contains(&s.as_str()) => continue,
            Some((_, ok)) => format!("supported: {}", ok.join(" or ")),
            None if key.starts_with('_') || ignored.contains(&key.as_str()) => continue,
            None => unknown.to_string(),
        };
        return Err(Error::UnsupportedConfig {
            file: file.to_path_buf(),
            key: key.clone(),
            value: s,
            supported,
        });
    }
    Ok(())
}

/// Read and parse a JSON config file; `what` says which one for the missing-file error.
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    if !path.exists() {
        return Err(Error::MissingFile {
            what: what.to_string(),
            path: path.to_path_buf(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        file: path.to_path_buf(),
        message: e.to_string(),
    })
}
