//! Reading `config.json` files into typed configs with errors that name the file.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

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
