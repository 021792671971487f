//! One error type whose `Display` is a single line naming the file and, where there is one, the tensor.
//! The variants say whose fault it is (an input, a pack being read, the output), so that bindings
//! can raise the matching exception class.

use std::path::{Path, PathBuf};

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file.
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// An input (safetensors shard, `.npy` file, or a pack read as a source) or one of its tensors
    /// is not what it should be.
    #[error("{}", located(path, tensor.as_deref(), message))]
    Source {
        path: PathBuf,
        tensor: Option<String>,
        message: String,
    },
    /// A Burn pack that cannot be read (or would not be read by Burn).
    #[error("{}", located(path, tensor.as_deref(), message))]
    PackFile {
        path: PathBuf,
        tensor: Option<String>,
        message: String,
    },
    /// The output cannot be written as asked (exists, no room, no such folder, is an input).
    #[error("{}: {message}", path.display())]
    Output { path: PathBuf, message: String },
    /// The caller asked to stop (Ctrl-C, a signal, an exception in the progress callback).
    #[error("interrupted")]
    Cancelled,
}

fn located(path: &Path, tensor: Option<&str>, message: &str) -> String {
    match tensor {
        Some(tensor) => format!("{}: tensor '{tensor}': {message}", path.display()),
        None => format!("{}: {message}", path.display()),
    }
}

impl Error {
    pub fn io(path: &Path, what: &'static str, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    }

    pub fn source(path: &Path, message: impl Into<String>) -> Self {
        Error::Source {
            path: path.to_path_buf(),
            tensor: None,
            message: message.into(),
        }
    }

    pub fn source_tensor(path: &Path, tensor: &str, message: impl Into<String>) -> Self {
        Error::Source {
            path: path.to_path_buf(),
            tensor: Some(tensor.to_string()),
            message: message.into(),
        }
    }

    /// The same fault, of a pack read as such (`verify`'s pack) rather than of a source.
    pub fn of_pack(self) -> Self {
        match self {
            Error::Source { path, tensor, message } => Error::PackFile { path, tensor, message },
            other => other,
        }
    }

    pub fn pack_file(path: &Path, message: impl Into<String>) -> Self {
        Error::PackFile {
            path: path.to_path_buf(),
            tensor: None,
            message: message.into(),
        }
    }

    pub fn pack_tensor(path: &Path, tensor: &str, message: impl Into<String>) -> Self {
        Error::PackFile {
            path: path.to_path_buf(),
            tensor: Some(tensor.to_string()),
            message: message.into(),
        }
    }

    pub fn output(path: &Path, message: impl Into<String>) -> Self {
        Error::Output {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_file_and_the_tensor() {
        let p = Path::new("/x/a.safetensors");
        assert_eq!(
            Error::source_tensor(p, "w", "not found").to_string(),
            "/x/a.safetensors: tensor 'w': not found"
        );
        assert_eq!(
            Error::pack_file(p, "bad magic").to_string(),
            "/x/a.safetensors: bad magic"
        );
        let io = Error::io(p, "cannot open shard", std::io::Error::from_raw_os_error(libc::ENOENT));
        assert!(io
            .to_string()
            .starts_with("/x/a.safetensors: cannot open shard: No such file"));
    }

    #[test]
    fn a_source_fault_of_a_pack_becomes_a_pack_fault_with_the_same_words() {
        let p = Path::new("/x/p.bpk");
        let fault = Error::source_tensor(p, "w", "shrank").of_pack();
        assert!(
            matches!(&fault, Error::PackFile { tensor: Some(t), .. } if t == "w"),
            "{fault:?}"
        );
        assert_eq!(fault.to_string(), "/x/p.bpk: tensor 'w': shrank");
        assert!(matches!(Error::output(p, "exists").of_pack(), Error::Output { .. }));
    }
}
