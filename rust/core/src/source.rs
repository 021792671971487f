//! Safetensors shards, memory-mapped and indexed with the `safetensors` crate's own header parser
//! (which also checks that offsets are contiguous, in range and match shape x dtype).

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::Metadata;
use safetensors::SafeTensors;

/// The `safetensors` crate's own bound on a header (`MAX_HEADER_SIZE`, not exported).
const MAX_HEADER_LEN: u64 = 100_000_000;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::fs::{open_regular, FileStamp, Input};
use crate::guard::MapGuard;

/// One tensor of a shard, with its absolute byte range in the shard file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTensor {
    pub name: String,
    /// Burn dtype, or None for safetensors dtypes Burn cannot hold (fp8, fp4, complex).
    pub dtype: Option<DType>,
    /// The safetensors dtype name as written in the header ("F32", "F8_E4M3", ...).
    pub source_dtype: String,
    pub shape: Vec<u64>,
    pub file_offset: u64,
    pub byte_len: u64,
}

/// A memory-mapped safetensors file and its parsed header, tensors in file order.
pub struct Shard {
    pub path: PathBuf,
    pub file: File,
    /// The file as it was opened, before any byte was read (see `check_unchanged`).
    pub stamp: FileStamp,
    /// Keeps the process alive if the file shrinks under the map (see `guard`); declared before
    /// `mmap` so that it is unregistered before the map goes.
    guard: MapGuard,
    pub mmap: Mmap,
    pub tensors: Vec<SourceTensor>,
    pub metadata: ShardMetadata,
    /// A `.npy` file: one tensor, named after the file's stem (bf16 arrives as U16, see `npy`).
    pub is_npy: bool,
}

impl Shard {
    pub fn open(path: &Path) -> Result<Shard> {
        let file = open_regular(path, Input::Shard)?;
        let stamp = FileStamp::of(&file.metadata().map_err(|e| Error::io(path, "cannot stat shard", e))?);
        let len = stamp.size;
        if len < 8 {
            return Err(Error::source(
                path,
                format!("not a valid safetensors file: only {len} bytes, shorter than the 8-byte header length"),
            ));
        }
        // SAFETY: the map is read-only. A file truncated underneath it would fault on reads past
        // its new end; the guard turns that into zeros plus a recorded fault that `check` reports.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, "cannot map shard", e))?;
        let guard = MapGuard::register(mmap.as_ptr(), mmap.len());
        let is_npy = path.extension().is_some_and(|e| e == "npy");
        let (tensors, metadata) = if is_npy {
            npy_tensor(path, &mmap)?
        } else if path.extension().is_some_and(|e| e == "bpk") {
            pack_tensors(path, &mmap)?
        } else {
            parse_safetensors(path, &mmap)?
        };
        let shard = Shard {
            path: path.to_path_buf(),
            file,
            stamp,
            guard,
            mmap,
            tensors,
            metadata,
            is_npy,
        };
        shard.check(None)?; // the header was read through the map too
        Ok(shard)
    }

    pub fn bytes(&self, tensor: &SourceTensor) -> &[u8] {
        &self.mmap[tensor.file_offset as usize..(tensor.file_offset + tensor.byte_len) as usize]
    }

    /// Fails if any read of the map so far faulted because the file shrank under it (the bytes
    /// read there were zeros, not the file's). Call after reading each chunk of `tensor`.
    pub fn check(&self, tensor: Option<&SourceTensor>) -> Result<()> {
        let Some(offset) = self.guard.fault() else {
            return Ok(());
        };
        let size = self
            .file
            .metadata()
            .map(|m| m.len().to_string())
            .unwrap_or_else(|_| "?".into());
        let message = format!(
            "the file shrank while being read (byte {offset} is past its end; it is {size} bytes now): \
             was it still being written or replaced?"
        );
        let name = tensor
            .map(|t| t.name.as_str())
            .or_else(|| self.tensor_at(offset).map(|t| t.name.as_str()));
        Err(match name {
            Some(name) => Error::source_tensor(&self.path, name, message),
            None => Error::source(&self.path, message),
        })
    }

    /// Fails if the file changed since it was opened: its size or modification time (through the
    /// open descriptor), or the file its path names (replaced by another one, or removed). Call
    /// after its last byte was read: the output would otherwise match neither version.
    pub fn check_unchanged(&self) -> Result<()> {
        self.check(None)?; // a shrink under the map says more (which byte, which tensor)
        let changed = |what: String| {
            Error::source(
                &self.path,
                format!(
                    "changed while being read ({what}): the output would match neither version; \
                     was it still being written or replaced?"
                ),
            )
        };
        let now = self
            .file
            .metadata()
            .map_err(|e| Error::io(&self.path, "cannot stat shard", e))?;
        let named = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) => return Err(changed(format!("its name no longer leads to it: {e}"))),
        };
        let mut stamp = FileStamp::of(&now);
        (stamp.dev, stamp.ino) = (named.dev(), named.ino());
        match stamp.changes_since(&self.stamp) {
            Some(what) => Err(changed(what)),
            None => Ok(()),
        }
    }

    /// The error to report when a read of `tensor` up to file offset `end` failed (a write from
    /// the mapping that the kernel answered with EFAULT, say): the shard shrank under the read
    /// if the guard saw a fault or the file is now shorter than `end`.
    pub fn shrank_under(&self, tensor: &SourceTensor, end: u64) -> Option<Error> {
        if let Err(e) = self.check(Some(tensor)) {
            return Some(e);
        }
        let size = self.file.metadata().ok()?.len();
        (size < end).then(|| {
            Error::source_tensor(
                &self.path,
                &tensor.name,
                format!(
                    "the file shrank while being read (it is {size} bytes now, the tensor's bytes run to {}): \
                     was it still being written or replaced?",
                    tensor.file_offset + tensor.byte_len
                ),
            )
        })
    }

    fn tensor_at(&self, offset: u64) -> Option<&SourceTensor> {
        self.tensors
            .iter()
            .find(|t| offset >= t.file_offset && offset < t.file_offset + t.byte_len.max(1))
    }
}

/// A Burn pack as a source (for unpacking and verifying): its tensors under their pack names.
fn pack_tensors(path: &Path, bytes: &[u8]) -> Result<(Vec<SourceTensor>, ShardMetadata)> {
    let index = crate::burnpack::index_from_bytes(path, bytes)?; // already mapped: no second read
    let tensors = index
        .tensors
        .into_iter()
        .map(|t| SourceTensor {
            source_dtype: t.dtype.name(),
            dtype: Some(t.dtype),
            byte_len: t.end - t.start,
            file_offset: t.file_offset,
            shape: t.shape,
            name: t.name,
        })
        .collect();
    Ok((tensors, index.metadata.into_iter().collect()))
}

/// A `.npy` file: one tensor, named after the file's stem (bf16 arrives as U16, see `npy`).
fn npy_tensor(path: &Path, bytes: &[u8]) -> Result<(Vec<SourceTensor>, ShardMetadata)> {
    let bad = |message: String| Error::source(path, format!("not a valid .npy file: {message}"));
    let header = crate::npy::parse_header(bytes).map_err(bad)?;
    let byte_len = header.dtype.byte_len(&header.shape).map_err(bad)?;
    let available = bytes.len() as u64 - header.data_offset.min(bytes.len() as u64);
    if available != byte_len {
        return Err(bad(format!(
            "holds {available} data bytes but {} {:?} needs {byte_len} (truncated?)",
            header.dtype, header.shape
        )));
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tensor = SourceTensor {
        name,
        dtype: Some(header.dtype),
        source_dtype: header.dtype.name(),
        shape: header.shape,
        file_offset: header.data_offset,
        byte_len,
    };
    Ok((vec![tensor], Vec::new()))
}

/// A shard header's `__metadata__`: sorted (key, value) pairs.
pub type ShardMetadata = Vec<(String, String)>;

/// Parses and checks a safetensors file's header (the `safetensors` crate's own parser): tensors in
/// file order with absolute offsets, and the sorted `__metadata__`. `bytes` is the whole file.
pub fn parse_safetensors(path: &Path, bytes: &[u8]) -> Result<(Vec<SourceTensor>, ShardMetadata)> {
    parse_safetensors_head(path, bytes, bytes.len() as u64)
}

/// As `parse_safetensors`, from the start of a file of `file_size` bytes (`head`: at least the
/// 8-byte length and the header; the whole file when it is at hand). The header is checked against
/// the file size as for a whole file: every tensor in range, contiguous, shape x dtype bytes.
pub fn parse_safetensors_head(path: &Path, head: &[u8], file_size: u64) -> Result<(Vec<SourceTensor>, ShardMetadata)> {
    let bad = |message: String| Error::source(path, format!("not a valid safetensors file: {message}"));
    if head.len() < 8 || file_size < 8 {
        return Err(bad(format!(
            "only {} bytes, shorter than the 8-byte header length",
            file_size.min(head.len() as u64)
        )));
    }
    let (header_len, metadata) = if head.len() as u64 == file_size {
        SafeTensors::read_metadata(head).map_err(|e| bad(describe_safetensors_error(&e, head, file_size)))?
    } else {
        read_metadata_of_head(head, file_size).map_err(bad)?
    };
    let data_start = 8 + header_len as u64;
    let tensors = metadata
        .offset_keys()
        .into_iter()
        .map(|name| {
            let info = metadata.info(&name).expect("offset_keys lists known tensors");
            let (start, end) = info.data_offsets;
            SourceTensor {
                dtype: DType::from_safetensors(info.dtype),
                source_dtype: format!("{:?}", info.dtype),
                shape: info.shape.iter().map(|&d| d as u64).collect(),
                file_offset: data_start + start as u64,
                byte_len: (end - start) as u64,
                name,
            }
        })
        .collect();
    let mut extra: Vec<(String, String)> = metadata
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    extra.sort();
    Ok((tensors, extra))
}

/// `SafeTensors::read_metadata` for a file whose data is not at hand (a shard being streamed): the
/// same parse and checks (the crate's `Metadata` validates offsets and sizes as it deserializes),
/// with the data's length taken from `file_size`.
fn read_metadata_of_head(head: &[u8], file_size: u64) -> std::result::Result<(usize, Metadata), String> {
    let n = u64::from_le_bytes(head[..8].try_into().unwrap());
    if n > MAX_HEADER_LEN || n > file_size - 8 {
        return Err(format!(
            "header length {n} does not fit in the file of {file_size} bytes"
        ));
    }
    let json = head
        .get(8..8 + n as usize)
        .ok_or_else(|| format!("only {} of the header's {n} bytes are at hand", head.len() - 8))?;
    let layout_fault = || diagnose_layout(head, file_size);
    let metadata: Metadata =
        serde_json::from_slice(json).map_err(|e| layout_fault().unwrap_or_else(|| format!("invalid header: {e}")))?;
    if 8 + n + metadata.data_len() as u64 != file_size {
        return Err(layout_fault().unwrap_or_else(|| "file size does not match the end of the last tensor".into()));
    }
    Ok((n as usize, metadata))
}

fn describe_safetensors_error(e: &safetensors::SafeTensorError, bytes: &[u8], file_size: u64) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::InvalidHeaderLength | E::HeaderTooLarge => {
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            format!("header length {n} does not fit in the file of {file_size} bytes")
        }
        E::MetadataIncompleteBuffer | E::InvalidOffset(_) | E::TensorInvalidInfo | E::ValidationOverflow => {
            diagnose_layout(bytes, file_size).unwrap_or_else(|| e.to_string().replace('\n', " "))
        }
        other => other.to_string().replace('\n', " "),
    }
}

/// Names the first tensor whose byte range is wrong (the `safetensors` crate does not always say).
/// `bytes` starts the file of `file_size` bytes and holds at least its header.
fn diagnose_layout(bytes: &[u8], file_size: u64) -> Option<String> {
    let n = u64::from_le_bytes(bytes[..8].try_into().ok()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(bytes.get(8..8 + n)?).ok()?;
    let data_len = file_size.checked_sub(8 + n as u64)?;
    let mut tensors: Vec<(&String, u64, u64, Option<u64>)> = Vec::new();
    for (name, info) in header.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let offsets = info.get("data_offsets")?.as_array()?;
        let (start, end) = (offsets.first()?.as_u64()?, offsets.get(1)?.as_u64()?);
        let dtype: safetensors::Dtype = serde_json::from_value(info.get("dtype")?.clone()).ok()?;
        let numel = info
            .get("shape")?
            .as_array()?
            .iter()
            .try_fold(1u64, |acc, d| acc.checked_mul(d.as_u64()?));
        let size = numel
            .and_then(|n| n.checked_mul(dtype.bitsize() as u64))
            .map(|bits| bits / 8);
        tensors.push((name, start, end, size));
    }
    tensors.sort_by_key(|t| (t.1, t.2));
    let mut expected_start = 0;
    for (name, start, end, size) in &tensors {
        if end < start {
            return Some(format!(
                "tensor '{name}': offsets [{start}, {end}] end before they start"
            ));
        }
        if *start != expected_start {
            let what = if *start < expected_start {
                "overlaps the tensor before it"
            } else {
                "leaves a gap before it"
            };
            return Some(format!("tensor '{name}': offsets [{start}, {end}] {what}"));
        }
        if *end > data_len {
            return Some(format!(
                "tensor '{name}': offsets [{start}, {end}] run past the end of the data ({data_len} bytes; truncated?)"
            ));
        }
        if *size != Some(end - start) {
            return Some(format!(
                "tensor '{name}': {} bytes do not match its shape x dtype ({})",
                end - start,
                size.map_or("a size past 64 bits".into(), |n| format!("{n} bytes"))
            ));
        }
        expected_start = *end;
    }
    (expected_start != data_len).then(|| {
        format!("file size does not match the end of the last tensor: {data_len} data bytes, tensors end at {expected_start} (truncated or trailing bytes)")
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    fn find<'a>(shard: &'a Shard, name: &str) -> Option<&'a SourceTensor> {
        shard.tensors.iter().find(|t| t.name == name)
    }

    #[test]
    fn a_fifo_or_a_folder_is_refused_at_once_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("model.safetensors");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: plain syscall on a path this test owns.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // In a thread: were the open to wait for a writer, the test opens the writing end after
        // 10 s to free it and fails, rather than hanging until the harness gives up.
        let (sent, received) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || sent.send(Shard::open(&path).err().map(|e| e.to_string())));
        let err = match received.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(err) => err.expect("a FIFO shard is refused"),
            Err(_) => {
                let _writer = std::fs::OpenOptions::new().write(true).open(&fifo);
                panic!("opening a FIFO shard waited for a writer");
            }
        };
        assert!(err.contains("shard is a FIFO, not a regular file"), "{err}");
        assert!(err.contains("model.safetensors"), "{err}");
    }

    /// Writes a safetensors file by hand: (name, dtype name, shape, bytes) in order.
    pub fn write_shard(path: &Path, tensors: &[(&str, &str, Vec<u64>, Vec<u8>)]) {
        let mut header = String::from("{");
        let mut offset = 0usize;
        for (i, (name, dtype, shape, bytes)) in tensors.iter().enumerate() {
            if i > 0 {
                header.push(',');
            }
            let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            header.push_str(&format!(
                "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{offset},{}]}}",
                shape.join(","),
                offset + bytes.len()
            ));
            offset += bytes.len();
        }
        header.push('}');
        let mut f = File::create(path).unwrap();
        f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
        f.write_all(header.as_bytes()).unwrap();
        for (_, _, _, bytes) in tensors {
            f.write_all(bytes).unwrap();
        }
    }

    #[test]
    fn lists_tensors_in_file_order_with_absolute_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.safetensors");
        write_shard(
            &p,
            &[("z", "F32", vec![2], vec![1; 8]), ("a", "U8", vec![3], vec![2; 3])],
        );
        let shard = Shard::open(&p).unwrap();
        let names: Vec<_> = shard.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["z", "a"]);
        assert_eq!(shard.bytes(&shard.tensors[1]), &[2, 2, 2]);
        assert_eq!(shard.tensors[0].dtype, Some(DType::F32));
    }

    #[test]
    fn tensors_are_found_by_name_and_by_the_offset_of_any_of_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.safetensors");
        // "e" is empty: it starts where "b" starts, and owns that offset as the first found.
        write_shard(
            &p,
            &[
                ("a", "U8", vec![3], vec![1; 3]),
                ("e", "U8", vec![0], vec![]),
                ("b", "U8", vec![2], vec![2; 2]),
            ],
        );
        let shard = Shard::open(&p).unwrap();
        assert_eq!(find(&shard, "b").map(|t| t.byte_len), Some(2));
        assert_eq!(find(&shard, "a").map(|t| t.byte_len), Some(3));
        assert!(find(&shard, "c").is_none());
        let start = find(&shard, "a").unwrap().file_offset; // the first byte after the header
        let owner = |offset: u64| shard.tensor_at(offset).map(|t| t.name.clone());
        assert_eq!(owner(start - 1), None, "a header byte belongs to no tensor");
        assert_eq!(owner(start).as_deref(), Some("a"));
        assert_eq!(owner(start + 2).as_deref(), Some("a"));
        assert_eq!(owner(start + 3).as_deref(), Some("e"));
        assert_eq!(owner(start + 4).as_deref(), Some("b"));
        assert_eq!(owner(start + 5), None, "past the last byte");
    }

    #[test]
    fn a_read_past_the_files_end_is_a_shrink_and_one_up_to_it_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.safetensors");
        write_shard(&p, &[("w", "U8", vec![4], vec![7; 4])]);
        let shard = Shard::open(&p).unwrap();
        let size = std::fs::metadata(&p).unwrap().len();
        let w = find(&shard, "w").unwrap();
        assert!(shard.shrank_under(w, size).is_none());
        let err = shard
            .shrank_under(w, size + 1)
            .expect("a read past the end")
            .to_string();
        assert!(
            err.contains(&format!("it is {size} bytes now, the tensor's bytes run to {size}")),
            "{err}"
        );
        assert!(err.contains("a.safetensors") && err.contains("'w'"), "{err}");
    }

    #[test]
    fn eight_bytes_are_enough_for_the_length_and_seven_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("short.safetensors");
        for len in [0usize, 7] {
            std::fs::write(&p, vec![0u8; len]).unwrap();
            let err = Shard::open(&p).err().unwrap().to_string();
            assert!(
                err.contains(&format!("only {len} bytes, shorter than the 8-byte header length")),
                "{err}"
            );
        }
        std::fs::write(&p, [0u8; 8]).unwrap(); // a length of 0: past the length check, a bad header
        let err = Shard::open(&p).err().unwrap().to_string();
        assert!(
            err.contains("short.safetensors") && !err.contains("shorter than"),
            "{err}"
        );
    }

    /// A safetensors file by hand: its header text as given, then `data_len` zero bytes.
    fn raw_file(header: &str, data_len: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data_len, 0);
        bytes
    }

    #[test]
    fn a_bad_layout_is_named_by_its_first_wrong_tensor() {
        let t = |name: &str, dtype: &str, shape: &str, start: u64, end: u64| {
            format!("\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape},\"data_offsets\":[{start},{end}]}}")
        };
        let meta = "\"__metadata__\":{\"format\":\"pt\"}";
        let cases: [(String, usize, Option<&str>); 9] = [
            (format!("{{{meta},{}}}", t("w", "F32", "[1]", 0, 4)), 4, None),
            (format!("{{{},{meta}}}", t("w", "F32", "[1]", 4, 0)), 4, Some("tensor 'w': offsets [4, 0] end before they start")),
            (
                format!("{{{},{}}}", t("a", "U8", "[4]", 0, 4), t("b", "U8", "[4]", 2, 6)),
                6,
                Some("tensor 'b': offsets [2, 6] overlaps the tensor before it"),
            ),
            (
                format!("{{{},{}}}", t("a", "U8", "[4]", 0, 4), t("b", "U8", "[4]", 6, 10)),
                10,
                Some("tensor 'b': offsets [6, 10] leaves a gap before it"),
            ),
            (
                format!("{{{}}}", t("w", "U8", "[8]", 0, 8)),
                7,
                Some("tensor 'w': offsets [0, 8] run past the end of the data (7 bytes; truncated?)"),
            ),
            (
                format!("{{{},{}}}", t("a", "U8", "[2]", 0, 2), t("w", "BF16", "[3]", 2, 10)),
                10,
                Some("tensor 'w': 8 bytes do not match its shape x dtype (6 bytes)"),
            ),
            (
                format!("{{{}}}", t("w", "F32", "[4294967296,4294967296]", 0, 8)),
                8,
                Some("tensor 'w': 8 bytes do not match its shape x dtype (a size past 64 bits)"),
            ),
            (
                format!("{{{}}}", t("w", "U8", "[4]", 0, 4)),
                6,
                Some("file size does not match the end of the last tensor: 6 data bytes, tensors end at 4 (truncated or trailing bytes)"),
            ),
            (format!("{{{}}}", t("w", "U8", "[0]", 0, 0)), 0, None),
        ];
        for (header, data_len, expected) in cases {
            let file = raw_file(&header, data_len);
            assert_eq!(
                diagnose_layout(&file, file.len() as u64).as_deref(),
                expected,
                "{header}"
            );
        }
    }

    #[test]
    fn parsing_checks_the_length_field_fits_before_reading_it() {
        let p = Path::new("x.safetensors");
        let err = parse_safetensors(p, &[0u8; 7]).err().unwrap().to_string();
        assert!(
            err.contains("only 7 bytes, shorter than the 8-byte header length"),
            "{err}"
        );
        let err = parse_safetensors(p, &[0u8; 8]).err().unwrap().to_string();
        assert!(!err.contains("shorter than"), "{err}");
        let (tensors, metadata) = parse_safetensors(p, &raw_file("{}", 0)).unwrap();
        assert!(tensors.is_empty() && metadata.is_empty());
    }

    #[test]
    fn npy_files_are_one_tensor_named_after_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("layer.0.weight.npy");
        let mut bytes = crate::npy::header(DType::F32, &[2, 2]).unwrap();
        bytes.extend([1u8; 16]);
        std::fs::write(&p, &bytes).unwrap();
        let shard = Shard::open(&p).unwrap();
        assert!(shard.is_npy);
        assert_eq!(shard.tensors[0].name, "layer.0.weight");
        assert_eq!(shard.bytes(&shard.tensors[0]), &[1u8; 16]);
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        let err = Shard::open(&p).err().unwrap().to_string();
        assert!(err.contains("layer.0.weight.npy") && err.contains("truncated"), "{err}");
    }

    #[test]
    fn truncated_and_garbage_shards_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        write_shard(&p, &[("w", "F32", vec![4], vec![0; 16])]);
        let len = std::fs::metadata(&p).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        let err = Shard::open(&p).err().unwrap().to_string();
        assert!(err.contains("t.safetensors") && err.contains("truncated"), "{err}");

        let g = dir.path().join("g.safetensors");
        std::fs::write(&g, [255u8; 16]).unwrap();
        let err = Shard::open(&g).err().unwrap().to_string();
        assert!(err.contains("g.safetensors") && err.contains("header length"), "{err}");
    }
}
