//! The journal of a resumable stream: for each shard, how far its bytes reached the packs (the
//! next byte to fetch), the SHA-256 state of every byte before it, and the few bytes held back of
//! a unit (an element, or a quantization block) that a piece cut. It is written only after the
//! pack bytes it covers are on disk, by an atomic rename, so whatever a crash leaves, the journal
//! on disk never claims more than the partial packs hold. A journal is trusted only when its
//! fingerprint (the packs' layouts, the sources, the shards' sizes, digests and headers) is the
//! one the new run computes; anything else about it is a reason to start over, never an error.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::digest::common::hazmat::SerializableState;
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::fs::{open_regular, Input};
use crate::output::AtomicFile;

const FORMAT: &str = "heartmula-burn stream journal 1";
/// A journal is a few hundred bytes per shard: anything larger is not ours.
const MAX_JOURNAL_BYTES: u64 = 16 << 20;

#[derive(Serialize, Deserialize)]
struct JournalFile {
    format: String,
    fingerprint: String,
    shards: Vec<JournalShard>,
}

#[derive(Serialize, Deserialize)]
struct JournalShard {
    next: u64,
    sha256_state: String,
    carry: String,
}

/// One shard's progress as journaled.
#[derive(Clone)]
pub struct ShardProgress {
    /// The next byte of the shard to fetch: every byte before it is in the packs (but `carry`).
    pub next: u64,
    /// SHA-256 of the shard's bytes before `next`.
    pub hasher: Sha256,
    /// The bytes before `next` of a unit not yet converted.
    pub carry: Vec<u8>,
}

/// Writes the journal for `shards` (in the order the fingerprint lists them), atomically.
pub fn write(path: &Path, fingerprint: &str, shards: &[ShardProgress]) -> Result<()> {
    let file = JournalFile {
        format: FORMAT.to_string(),
        fingerprint: fingerprint.to_string(),
        shards: shards
            .iter()
            .map(|s| JournalShard {
                next: s.next,
                sha256_state: to_hex(&s.hasher.serialize()),
                carry: to_hex(&s.carry),
            })
            .collect(),
    };
    let text = serde_json::to_vec(&file).expect("a journal always serializes");
    let out = AtomicFile::create(path, text.len() as u64, true)?;
    out.write_at(&text, 0)?;
    out.commit()
}

/// The journal at `path` if it is one for `fingerprint` and `shards` shards; `Err(reason)` (for
/// the user) when there is none or it cannot be trusted.
pub fn read(path: &Path, fingerprint: &str, shards: usize) -> std::result::Result<Vec<ShardProgress>, String> {
    // Opened as every input is: a FIFO planted there would block the open forever.
    let file = match open_regular(path, Input::Journal) {
        Ok(f) => f,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err("it left no journal (it stopped before its first checkpoint)".into())
        }
        Err(e) => return Err(format!("its journal cannot be read ({e})")),
    };
    let mut text = Vec::new();
    file.take(MAX_JOURNAL_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("its journal cannot be read ({e})"))?;
    if text.len() as u64 > MAX_JOURNAL_BYTES {
        return Err("its journal is too large to be one".into());
    }
    let journal: JournalFile = serde_json::from_slice(&text).map_err(|_| "its journal is not one".to_string())?;
    if journal.format != FORMAT {
        return Err("its journal is of another format".into());
    }
    if journal.fingerprint != fingerprint || journal.shards.len() != shards {
        return Err("it was made for other packs, options or shards (another commit?)".into());
    }
    journal
        .shards
        .into_iter()
        .map(|s| {
            let state = from_hex(&s.sha256_state).ok_or("its journal is damaged")?;
            let state = state.as_slice().try_into().map_err(|_| "its journal is damaged")?;
            Ok(ShardProgress {
                next: s.next,
                hasher: Sha256::deserialize(state).map_err(|_| "its journal is damaged")?,
                carry: from_hex(&s.carry).ok_or("its journal is damaged")?,
            })
        })
        .collect::<std::result::Result<_, &str>>()
        .map_err(str::to_string)
}

/// Deletes the journal (a missing one is fine).
pub fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, "cannot remove the journal", e)),
        _ => Ok(()),
    }
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn a_hash_state_survives_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let mut hasher = Sha256::new();
        hasher.update(b"hello, ");
        let progress = ShardProgress {
            next: 7,
            hasher,
            carry: vec![0, 1, 254, 255],
        };
        write(&path, "fp", std::slice::from_ref(&progress)).unwrap();
        let mut back = read(&path, "fp", 1).unwrap();
        assert_eq!((back[0].next, back[0].carry.clone()), (7, vec![0, 1, 254, 255]));
        back[0].hasher.update(b"world");
        assert_eq!(back.remove(0).hasher.finalize(), Sha256::digest(b"hello, world"));
    }

    #[test]
    fn a_foreign_damaged_or_other_journal_is_never_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        assert!(read(&path, "fp", 1).err().unwrap().contains("no journal"));
        let progress = ShardProgress {
            next: 0,
            hasher: Sha256::new(),
            carry: vec![],
        };
        write(&path, "fp", &[progress]).unwrap();
        assert!(read(&path, "fp", 1).is_ok());
        let err = read(&path.join("j"), "fp", 1).err().unwrap(); // a file where a folder should be
        assert!(err.starts_with("its journal cannot be read"), "{err}");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read(&fifo, "fp", 1).err().unwrap(); // at once, not waiting for a writer
        assert!(
            err.starts_with("its journal cannot be read") && err.contains("FIFO"),
            "{err}"
        );
        assert!(read(&path, "other", 1).err().unwrap().contains("other packs"));
        assert!(read(&path, "fp", 2).err().unwrap().contains("other packs"));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"carry\":\"\"", "\"carry\":\"0g\"")).unwrap();
        assert!(read(&path, "fp", 1).err().unwrap().contains("damaged"));
        std::fs::write(&path, text.replace(FORMAT, "something else")).unwrap();
        assert!(read(&path, "fp", 1).err().unwrap().contains("another format"));
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        assert!(read(&path, "fp", 1).err().unwrap().contains("not one"));
        let state_start = text.find("sha256_state\":\"").unwrap() + 15;
        let mut short = text.clone();
        short.replace_range(state_start..state_start + 2, "");
        std::fs::write(&path, short).unwrap();
        assert!(read(&path, "fp", 1).err().unwrap().contains("damaged"));
        std::fs::write(&path, vec![b' '; MAX_JOURNAL_BYTES as usize]).unwrap();
        assert!(
            read(&path, "fp", 1).err().unwrap().contains("not one"),
            "at the bound: read"
        );
        std::fs::write(&path, vec![b' '; (MAX_JOURNAL_BYTES + 1) as usize]).unwrap();
        assert!(read(&path, "fp", 1).err().unwrap().contains("too large"));
        let err = remove(&path.join("j")).unwrap_err().to_string(); // not a folder: a real failure
        assert!(err.contains("cannot remove the journal"), "{err}");
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert!(!path.exists());
    }
}
