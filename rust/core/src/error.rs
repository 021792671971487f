//! One error type whose `Display` is a single line naming the file and, where there is one, the tensor.

use std::path::{Path, PathBuf};

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file.
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A safetensors shard whose header or layout is not valid.
    #[error("{path}: not a valid safetensors file: {message}")]
    BadShard { path: PathBuf, message: String },
    /// A tensor that cannot be packed as asked (missing, wrong dtype or shape, unsupported cast).
    #[error("{path}: tensor '{tensor}': {message}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    /// A Burn pack that cannot be read, or a pack that cannot be written as asked.
    #[error("{path}: {message}")]
    Pack { path: PathBuf, message: String },
    /// An invalid request that names no file (e.g. duplicate output names).
    #[error("{0}")]
    Invalid(String),
    /// The caller asked to stop (Ctrl-C).
    #[error("interrupted")]
    Cancelled,
}

impl Error {
    pub fn io(path: &Path, what: &'static str, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    }

    pub fn pack(path: &Path, message: impl Into<String>) -> Self {
        Error::Pack {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    pub fn tensor(path: &Path, tensor: &str, message: impl Into<String>) -> Self {
        Error::Tensor {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            message: message.into(),
        }
    }
}
