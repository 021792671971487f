//! The copy engine that every operation writing tensors shares (pack, `.npy` export, unpack):
//! requests are resolved in their sources, then each tensor's bytes are streamed to where they
//! belong. Unchanged tensors are copied by the kernel (`copy_file_range`) where it can;
//! conversions run in bounded chunks. Memory does not grow with the model.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::cast;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::fs::{copy_file_range, kernel_copy_unavailable, sync_range};
use crate::runs::{Scratch, TensorRuns};
use crate::source::{Shard, SourceTensor};

/// Bytes per kernel copy call: small enough that progress and Ctrl-C are seen several times a
/// second, large enough that syscall overhead does not show.
const COPY_CHUNK: u64 = 64 << 20;
/// Output is handed to the disk in windows of this size as it is written, with this many windows
/// (1 GiB) still in flight before the writer waits for the oldest (see `Writeback`). Measured on
/// cold caches: 16 beat 1 and 4, and all beat leaving it to the kernel and one final fsync.
const WRITEBACK_WINDOW: u64 = 64 << 20;
const WRITEBACK_INFLIGHT: u64 = 16;

/// One output tensor and where its bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRequest {
    /// Name in the pack.
    pub name: String,
    /// Safetensors file holding the source tensor.
    pub source: PathBuf,
    /// Key of the tensor in that file.
    pub key: String,
    /// Dtype in the pack.
    pub dtype: DType,
    pub param_id: Option<u64>,
    /// What the caller believes the source holds; checked against the shard when given.
    pub expect_source_dtype: Option<DType>,
    pub expect_shape: Option<Vec<u64>>,
}

/// How far a pack is: bytes of tensor data done out of the total.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Default)]
pub struct WriteSummary {
    pub file_size: u64,
    pub tensors: usize,
    pub data_bytes: u64,
    /// Bytes moved by `copy_file_range` (never through user memory).
    pub kernel_copied: u64,
    /// Unchanged bytes written from the mapping (when the kernel copy is not available).
    pub buffer_copied: u64,
    /// Output bytes produced by dtype conversion.
    pub converted: u64,
    /// Wall seconds of each phase: planning (shard headers, layout, creating and allocating the
    /// output), tensor data, and the final flush to disk (fsync, rename).
    pub plan_seconds: f64,
    pub data_seconds: f64,
    pub sync_seconds: f64,
}

/// Where each item's bytes are: its shard, the tensor's index there, and the source dtype.
pub(crate) struct Resolved {
    pub(crate) shards: Vec<Shard>,
    pub(crate) locations: Vec<(usize, usize, DType)>,
}

/// Opens every shard once and checks every item against what its shard really holds.
pub(crate) fn resolve(items: &[TensorRequest]) -> Result<Resolved> {
    let mut shards: Vec<Shard> = Vec::new();
    let mut shard_of: HashMap<PathBuf, usize> = HashMap::new();
    for item in items {
        if !shard_of.contains_key(&item.source) {
            shard_of.insert(item.source.clone(), shards.len());
            shards.push(Shard::open(&item.source)?);
        }
    }
    let locations = {
        let views: Vec<ShardView> = shards
            .iter()
            .map(|s| (s.path.as_path(), s.is_npy, s.tensors.as_slice()))
            .collect();
        locate(items, &shard_of, &views)?
    };
    Ok(Resolved { shards, locations })
}

/// What `locate` reads of a shard: its path (for errors), whether it is a `.npy` file, its tensors.
pub(crate) type ShardView<'a> = (&'a Path, bool, &'a [SourceTensor]);

/// Finds every item's tensor among `shards` (`shard_of`: a shard's index by path) and checks it
/// against what the shard really holds: (shard, tensor, source dtype) per item.
pub(crate) fn locate(
    items: &[TensorRequest],
    shard_of: &HashMap<PathBuf, usize>,
    shards: &[ShardView],
) -> Result<Vec<(usize, usize, DType)>> {
    let lookups: Vec<HashMap<&str, usize>> = shards
        .iter()
        .map(|(_, _, tensors)| tensors.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect())
        .collect();
    items
        .iter()
        .map(|item| {
            let s = *shard_of
                .get(&item.source)
                .ok_or_else(|| Error::source(&item.source, "not among the shards being read"))?;
            let t = *lookups[s]
                .get(item.key.as_str())
                .ok_or_else(|| Error::source_tensor(&item.source, &item.key, "not found in this file"))?;
            let (path, is_npy, tensors) = shards[s];
            Ok((s, t, check_item(path, is_npy, &tensors[t], item)?))
        })
        .collect()
}

/// Checks an item against what its shard (`path`) really holds; returns the source dtype.
pub(crate) fn check_item(path: &Path, is_npy: bool, tensor: &SourceTensor, item: &TensorRequest) -> Result<DType> {
    let err = |m: String| Error::source_tensor(path, &tensor.name, m);
    let mut source_dtype = tensor
        .dtype
        .ok_or_else(|| err(format!("dtype {} has no Burn equivalent", tensor.source_dtype)))?;
    // NumPy has no bfloat16: raw exports store it as `<u2` and the manifest says BF16.
    if is_npy && source_dtype == DType::U16 && item.expect_source_dtype == Some(DType::BF16) {
        source_dtype = DType::BF16;
    }
    if let Some(expected) = item.expect_source_dtype {
        if expected != source_dtype {
            return Err(err(format!("expected dtype {expected}, the file has {source_dtype}")));
        }
    }
    if let Some(shape) = &item.expect_shape {
        if *shape != tensor.shape {
            return Err(err(format!(
                "expected shape {shape:?}, the file has {:?}",
                tensor.shape
            )));
        }
    }
    if !cast::supported(source_dtype, item.dtype) {
        return Err(err(format!("cannot convert {source_dtype} to {}", item.dtype)));
    }
    Ok(source_dtype)
}

/// Streams every item's bytes (copied or converted) to `targets[i]` in `file`.
pub(crate) fn write_tensors(
    items: &[TensorRequest],
    resolved: &Resolved,
    file: &File,
    path: &Path,
    targets: &[u64],
    progress: &mut dyn FnMut(Progress) -> bool,
) -> Result<WriteSummary> {
    let mut summary = WriteSummary::default();
    let total = items
        .iter()
        .zip(&resolved.locations)
        .map(|(item, &(s, t, _))| item.dtype.byte_len(&resolved.shards[s].tensors[t].shape).unwrap_or(0))
        .sum();
    let last_reads = last_reads(resolved);
    let mut writer = TensorWriter::new(total, progress, &mut summary);
    writer.writeback = Some(Writeback::default());
    for (i, ((item, &(s, t, source_dtype)), &offset)) in items.iter().zip(&resolved.locations).zip(targets).enumerate()
    {
        let shard = &resolved.shards[s];
        writer.write_tensor(
            shard,
            &shard.tensors[t],
            source_dtype,
            item.dtype,
            Target { file, path, offset },
        )?;
        if last_reads[s] == i {
            shard.check_unchanged()?;
        }
    }
    writer.finish()?;
    Ok(summary)
}

/// For each shard, the index of the last item read from it (after which it is checked unchanged).
pub(crate) fn last_reads(resolved: &Resolved) -> Vec<usize> {
    let mut last = vec![usize::MAX; resolved.shards.len()];
    for (i, &(s, _, _)) in resolved.locations.iter().enumerate() {
        last[s] = i;
    }
    last
}

/// Where a tensor's bytes go.
pub(crate) struct Target<'a> {
    pub(crate) file: &'a File,
    pub(crate) path: &'a Path,
    pub(crate) offset: u64,
}

impl Target<'_> {
    fn write_at(&self, bytes: &[u8], at: u64) -> Result<()> {
        self.file
            .write_all_at(bytes, self.offset + at)
            .map_err(|e| Error::io(self.path, "cannot write", e))
    }
}

pub(crate) struct TensorWriter<'a> {
    done: u64,
    total: u64,
    progress: &'a mut dyn FnMut(Progress) -> bool,
    /// Cleared the first time the kernel says it cannot copy between these files.
    kernel_copy: bool,
    summary: &'a mut WriteSummary,
    /// Set when all tensors go to one file in increasing offset order.
    writeback: Option<Writeback>,
}

impl<'a> TensorWriter<'a> {
    pub(crate) fn new(
        total: u64,
        progress: &'a mut dyn FnMut(Progress) -> bool,
        summary: &'a mut WriteSummary,
    ) -> Self {
        TensorWriter {
            done: 0,
            total,
            progress,
            kernel_copy: true,
            summary,
            writeback: None,
        }
    }

    fn advance(&mut self, bytes: u64) -> Result<()> {
        self.done += bytes;
        if (self.progress)(Progress {
            done: self.done,
            total: self.total,
        }) {
            Ok(())
        } else {
            Err(Error::Cancelled)
        }
    }

    /// Notes that `target` now holds `len` bytes of the current tensor.
    fn wrote(&mut self, target: &Target, len: u64) {
        if let Some(wb) = &mut self.writeback {
            wb.advance(target.file, target.offset + len);
        }
    }

    /// The final progress report; the caller may still cancel here, before anything is committed.
    pub(crate) fn finish(&mut self) -> Result<()> {
        self.done = self.total;
        self.advance(0)
    }

    pub(crate) fn write_tensor(
        &mut self,
        shard: &Shard,
        tensor: &SourceTensor,
        from: DType,
        to: DType,
        target: Target,
    ) -> Result<()> {
        crate::guard::protect(); // our SIGBUS handler, not one installed since, sees the reads
        if from.same_bytes(to) {
            self.copy(shard, tensor, &target)
        } else {
            self.convert(shard, tensor, from, to, &target)
        }
    }

    /// Copies a tensor unchanged: in the kernel when possible, else from the mapping.
    fn copy(&mut self, shard: &Shard, tensor: &SourceTensor, target: &Target) -> Result<()> {
        let mut copied = 0u64;
        while self.kernel_copy && copied < tensor.byte_len {
            let want = (tensor.byte_len - copied).min(COPY_CHUNK);
            match copy_file_range(
                &shard.file,
                tensor.file_offset + copied,
                target.file,
                target.offset + copied,
                want,
            ) {
                Ok(0) => {
                    return Err(Error::source_tensor(
                        &shard.path,
                        &tensor.name,
                        "the file ended early: it shrank while being read (was it still being written or replaced?)",
                    ))
                }
                Ok(n) => {
                    copied += n;
                    self.summary.kernel_copied += n;
                    self.wrote(target, copied);
                    self.advance(n)?;
                }
                Err(e) if kernel_copy_unavailable(&e) => self.kernel_copy = false,
                Err(e) => return Err(Error::io(&shard.path, "cannot copy tensor data", e)),
            }
        }
        let bytes = shard.bytes(tensor);
        while copied < tensor.byte_len {
            let n = (tensor.byte_len - copied).min(COPY_CHUNK);
            let piece = copied..copied + n;
            if let Err(e) = target.write_at(&bytes[piece.start as usize..piece.end as usize], copied) {
                // The kernel reads the mapping for write(2): a page past the shard's new end gives
                // EFAULT there, not SIGBUS, and the error would blame the output.
                return Err(shard.shrank_under(tensor, tensor.file_offset + copied + n).unwrap_or(e));
            }
            shard.check(Some(tensor))?;
            release(shard, tensor, piece);
            copied += n;
            self.wrote(target, copied);
            self.summary.buffer_copied += n;
            self.advance(n)?;
        }
        Ok(())
    }

    /// Converts a tensor run by run (see `runs`), each run's values and scales written where
    /// they lie in the target.
    fn convert(&mut self, shard: &Shard, tensor: &SourceTensor, from: DType, to: DType, target: &Target) -> Result<()> {
        let bytes = shard.bytes(tensor);
        let mut runs = TensorRuns::new(from, to, tensor.shape.iter().product());
        let mut scratch = Scratch::default();
        while let Some(run) = runs.next(bytes, &mut scratch) {
            shard.check(Some(tensor))?;
            target.write_at(run.values, run.target.start)?;
            if let Some(scales) = &run.target_scales {
                target.write_at(run.scales, scales.start)?;
            }
            // A quantized source's scales are small and share pages between runs: kept mapped.
            release(shard, tensor, run.source);
            let written = (run.values.len() + run.scales.len()) as u64;
            // The values are written in order; the scales trail them in their own region.
            self.wrote(target, run.target.end);
            self.summary.converted += written;
            self.advance(written)?;
        }
        Ok(())
    }
}

/// Keeps the output flowing to disk while it is written, instead of letting dirty pages pile up
/// to the kernel's dirty limit and then stalling the writer (and leaving gigabytes for the final
/// fsync). Each full window is handed to the disk as soon as it is written
/// (`SYNC_FILE_RANGE_WRITE`); once `WRITEBACK_INFLIGHT` windows are in flight the oldest is
/// waited for and dropped from the page cache (`POSIX_FADV_DONTNEED`), so the pack does not
/// push other files out of the cache either. Best effort: errors are left for the final fsync.
struct Writeback {
    window: u64,
    inflight: u64,
    /// Writeback started for [0, started).
    started: u64,
    /// Written to disk and dropped from the cache for [0, settled).
    settled: u64,
}

impl Default for Writeback {
    fn default() -> Self {
        Writeback {
            window: WRITEBACK_WINDOW,
            inflight: WRITEBACK_INFLIGHT,
            started: 0,
            settled: 0,
        }
    }
}

impl Writeback {
    /// Bytes up to `end` are written (offsets only grow).
    fn advance(&mut self, file: &File, end: u64) {
        let fd = file.as_raw_fd();
        let window = self.window;
        while end >= self.started + window {
            sync_range(fd, self.started, window, libc::SYNC_FILE_RANGE_WRITE);
            self.started += window;
        }
        while self.started >= self.settled + (1 + self.inflight) * window {
            let wait =
                libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            sync_range(fd, self.settled, window, wait);
            // SAFETY: a plain syscall on an open descriptor.
            unsafe {
                libc::posix_fadvise(
                    fd,
                    self.settled as libc::off_t,
                    window as libc::off_t,
                    libc::POSIX_FADV_DONTNEED,
                );
            }
            self.settled += window;
        }
    }
}

/// Drops the consumed bytes `within` a tensor's data from our resident set (the pages stay in the
/// page cache), so RSS stays flat however large the model is. A hint: it changes no byte written.
fn release(shard: &Shard, tensor: &SourceTensor, within: std::ops::Range<u64>) {
    let (offset, len) = (tensor.file_offset + within.start, within.end - within.start);
    // SAFETY: the range is inside the read-only mapping and is not read again through it.
    unsafe {
        let _ = shard
            .mmap
            .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset as usize, len as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::burnpack::{read_index, BurnTarget};
    use crate::dtype::QuantStore;
    use crate::export::export_npy;
    use crate::pack::tests::{f32_bytes, item, pack, request};
    use crate::quant;
    use crate::runs::CONVERT_CHUNK;
    use crate::source::tests::write_shard;
    use std::collections::BTreeMap;
    use std::fs::OpenOptions;

    #[test]
    fn writeback_keeps_the_bytes_and_settles_all_but_the_windows_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let mut wb = Writeback {
            window: 4096,
            inflight: 2,
            ..Default::default()
        };
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(3000) {
            let at = piece.as_ptr() as u64 - data.as_ptr() as u64;
            file.write_all_at(piece, at).unwrap();
            wb.advance(&file, at + piece.len() as u64);
        }
        assert_eq!(wb.started, 100_000 / 4096 * 4096);
        assert_eq!(wb.settled, wb.started - 2 * 4096);
        file.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    /// A BF16 tensor of three conversion runs and a half (block 48, so runs end inside no block)
    /// quantized into a pack: values and scales land where Burn's layout puts them, as the whole
    /// tensor quantized at once; unpacking dequantizes to F32; verify is exact and finds a changed
    /// scale; export to `.npy` is refused.
    #[test]
    fn quantizes_in_runs_to_the_whole_tensor_bytes_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        let step = quant::chunk_elements(DType::BF16, DType::Q8S(48, QuantStore::PackedU32), CONVERT_CHUNK);
        let (rows, cols) = ((step * 7 / 2).div_ceil(96) as usize, 96usize);
        let floats: Vec<f32> = (0..rows * cols)
            .map(|i| half::bf16::from_f32(((i * 7919 % 1000) as f32 - 500.0) / (1.0 + (i % 13) as f32)).to_f32())
            .collect();
        let bf16: Vec<u8> = floats
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        write_shard(&a, &[("w", "BF16", vec![rows as u64, cols as u64], bf16)]);
        let out = dir.path().join("q.bpk");
        let mut request = request(
            vec![item("w", &a, "w", DType::Q8S(48, QuantStore::PackedU32))],
            out.clone(),
        );
        request.target = BurnTarget::V0_22;
        let summary = pack(&request, &mut |_| true).unwrap();
        let (mut values, mut scales) = (Vec::new(), Vec::new());
        quant::quantize(&floats, 48, &mut values, &mut scales);
        assert_eq!(summary.converted, (values.len() + scales.len()) as u64);
        let bytes = std::fs::read(&out).unwrap();
        let t = &read_index(&out).unwrap().tensors[0];
        assert_eq!(t.dtype, DType::Q8S(48, QuantStore::PackedU32));
        let data = &bytes[t.file_offset as usize..(t.file_offset + t.end - t.start) as usize];
        assert_eq!(&data[..values.len()], &values[..]);
        assert_eq!(&data[values.len()..], &scales[..]);

        let back = dir.path().join("back.safetensors");
        let unpack_item = item("w", &out, "w", DType::F32);
        crate::unpack::write_safetensors(&[unpack_item], &back, &BTreeMap::new(), false, &mut |_| true).unwrap();
        let shard = Shard::open(&back).unwrap();
        let mut dequantized = Vec::new();
        quant::dequantize(&values, &scales, 48, &mut dequantized);
        assert_eq!(shard.bytes(&shard.tensors[0]), f32_bytes(&dequantized));

        let items = vec![item("w", &a, "w", DType::Q8S(48, QuantStore::PackedU32))];
        // Verify reports progress in the pack's bytes, values and scales, to the whole tensor.
        let mut last = None;
        let report = &mut |p: Progress| {
            last = Some((p.done, p.total));
            true
        };
        assert_eq!(crate::verify::verify_against(&out, &items, report).unwrap(), vec![]);
        let packed = (values.len() + scales.len()) as u64;
        assert_eq!(last, Some((packed, packed)));
        let f = OpenOptions::new().write(true).open(&out).unwrap();
        let last_scale = t.file_offset + (t.end - t.start) - 1;
        f.write_all_at(&[bytes[last_scale as usize] ^ 0x01], last_scale)
            .unwrap();
        let problems = crate::verify::verify_against(&out, &items, &mut |_| true).unwrap();
        let blocks = rows * cols / 48;
        let want = format!(
            "the scale of block {} (elements from {}) is not the exact quantization of",
            blocks - 1,
            (blocks - 1) * 48
        );
        assert!(problems[0].message.starts_with(&want), "{problems:?}");

        let npy = export_npy(&items, dir.path(), &["w.npy".to_string()], &mut |_| true).unwrap_err();
        assert!(npy.to_string().contains("Q8S_B48 has no .npy form"), "{npy}");
    }

    #[test]
    fn a_shard_on_another_filesystem_type_is_copied_from_its_mapping_byte_for_byte() {
        // tmpfs to another filesystem type: copy_file_range says EXDEV, and the bytes go through
        // the buffered path, in chunks, the last one short.
        let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let fs_type = |p: &Path| {
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: statfs fills the zeroed struct this test owns.
            let mut st: libc::statfs = unsafe { std::mem::zeroed() };
            assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
            st.f_type
        };
        if fs_type(shm.path()) == fs_type(dir.path()) {
            return; // the kernel copies between two filesystems of one type: no buffered path here
        }
        let a = shm.path().join("a.safetensors");
        let len = (COPY_CHUNK + 3) as usize;
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        write_shard(&a, &[("big", "U8", vec![len as u64], data.clone())]);
        let out = dir.path().join("out.bpk");
        let request = request(vec![item("big", &a, "big", DType::U8)], out.clone());
        let mut steps = Vec::new();
        let summary = pack(&request, &mut |p| {
            steps.push(p.done);
            true
        })
        .unwrap();
        assert_eq!((summary.kernel_copied, summary.buffer_copied), (0, len as u64));
        assert_eq!(steps.last(), Some(&(len as u64)));
        assert!(steps.contains(&COPY_CHUNK), "{steps:?}");
        let index = crate::burnpack::read_index(&out).unwrap();
        let written = std::fs::read(&out).unwrap();
        let start = index.tensors[0].file_offset as usize;
        assert!(
            written[start..start + len] == data[..],
            "the copy differs from the shard"
        );
    }
}
