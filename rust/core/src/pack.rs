//! Packing: resolve every requested tensor in its shard, plan the layout, then stream the bytes
//! into an atomic output file. Unchanged tensors are copied by the kernel (`copy_file_range`)
//! where it can; conversions run in bounded chunks. Memory does not grow with the model.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::burnpack::{BurnTarget, PackLayout};
use crate::cast::{self, Converter};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::npy;
use crate::output::{ensure_free_space, AtomicFile};
use crate::quant;
use crate::source::{Shard, SourceTensor};

/// Bytes per kernel copy call and per conversion chunk: small enough that progress and Ctrl-C
/// are seen several times a second, large enough that syscall overhead does not show.
const COPY_CHUNK: u64 = 64 << 20;
const CONVERT_CHUNK: u64 = 8 << 20;
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

#[derive(Debug, Clone)]
pub struct PackRequest {
    pub items: Vec<TensorRequest>,
    pub metadata: BTreeMap<String, String>,
    pub target: BurnTarget,
    pub output: PathBuf,
    pub overwrite: bool,
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
    let lookups: Vec<HashMap<&str, usize>> = shards
        .iter()
        .map(|s| {
            s.tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.as_str(), i))
                .collect()
        })
        .collect();
    let mut locations = Vec::with_capacity(items.len());
    for item in items {
        let s = shard_of[&item.source];
        let t = *lookups[s]
            .get(item.key.as_str())
            .ok_or_else(|| Error::source_tensor(&item.source, &item.key, "not found in this file"))?;
        let source_dtype = check_item(&shards[s], &shards[s].tensors[t], item)?;
        locations.push((s, t, source_dtype));
    }
    Ok(Resolved { shards, locations })
}

/// Plans the pack without writing anything: opens shards, checks every item, lays the file out.
fn plan(request: &PackRequest) -> Result<(PackLayout, Resolved)> {
    let resolved = resolve(&request.items)?;
    let specs = request
        .items
        .iter()
        .zip(&resolved.locations)
        .map(|(item, &(s, t, _))| {
            (
                item.name.clone(),
                item.dtype,
                resolved.shards[s].tensors[t].shape.clone(),
                item.param_id,
            )
        })
        .collect();
    let layout = PackLayout::plan(specs, request.metadata.clone(), request.target, &request.output)?;
    Ok((layout, resolved))
}

/// Checks an item against what its shard really holds; returns the source dtype.
fn check_item(shard: &Shard, tensor: &SourceTensor, item: &TensorRequest) -> Result<DType> {
    let err = |m: String| Error::source_tensor(&shard.path, &tensor.name, m);
    let mut source_dtype = tensor
        .dtype
        .ok_or_else(|| err(format!("dtype {} has no Burn equivalent", tensor.source_dtype)))?;
    // NumPy has no bfloat16: raw exports store it as `<u2` and the manifest says BF16.
    if shard.is_npy && source_dtype == DType::U16 && item.expect_source_dtype == Some(DType::BF16) {
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

/// Refuses an output that would overwrite one of the inputs.
fn check_output_is_not_an_input(output: &Path, shards: &[Shard]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(out) = std::fs::metadata(output) else {
        return Ok(());
    };
    for shard in shards {
        if let Ok(m) = shard.file.metadata() {
            if m.dev() == out.dev() && m.ino() == out.ino() {
                return Err(Error::output(output, "output is one of the input files"));
            }
        }
    }
    Ok(())
}

/// Writes the whole pack to its temporary file and flushes it to disk, but leaves the destination
/// as it is: the caller commits the returned file (renaming it into place) or drops it (deleting
/// it). Lets several outputs be written first and put in place together.
pub fn pack_staged(
    request: &PackRequest,
    progress: &mut dyn FnMut(Progress) -> bool,
) -> Result<(WriteSummary, AtomicFile)> {
    let started = std::time::Instant::now();
    let (layout, resolved) = plan(request)?;
    check_output_is_not_an_input(&request.output, &resolved.shards)?;
    let out = AtomicFile::create(&request.output, layout.file_size, request.overwrite)?;
    out.write_at(&layout.preamble(), 0)?;

    let total: u64 = layout.tensors.iter().map(|t| t.byte_len()).sum();
    let targets: Vec<u64> = layout.tensors.iter().map(|t| layout.data_start + t.start).collect();
    let planned = started.elapsed().as_secs_f64();
    let written = write_tensors(
        &request.items,
        &resolved,
        &out.file,
        &request.output,
        &targets,
        progress,
    )?;
    let wrote = started.elapsed().as_secs_f64();
    out.sync()?;
    // A last chance to stop after the (possibly long) flush, before anyone commits.
    if !progress(Progress { done: total, total }) {
        return Err(Error::Cancelled);
    }
    let summary = WriteSummary {
        file_size: layout.file_size,
        tensors: layout.tensors.len(),
        data_bytes: total,
        plan_seconds: planned,
        data_seconds: wrote - planned,
        sync_seconds: started.elapsed().as_secs_f64() - wrote,
        ..written
    };
    Ok((summary, out))
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
fn last_reads(resolved: &Resolved) -> Vec<usize> {
    let mut last = vec![usize::MAX; resolved.shards.len()];
    for (i, &(s, _, _)) in resolved.locations.iter().enumerate() {
        last[s] = i;
    }
    last
}

/// Writes each item as a `.npy` file in `dir` (named by `file_names`, which must not exist yet),
/// streaming exactly as `pack` does. BF16 is stored as `<u2`. Files are flushed to disk before
/// returning; on error, those written so far are left for the caller, who owns `dir`.
pub fn export_npy(
    items: &[TensorRequest],
    dir: &Path,
    file_names: &[String],
    progress: &mut dyn FnMut(Progress) -> bool,
) -> Result<WriteSummary> {
    assert_eq!(items.len(), file_names.len());
    let resolved = resolve(items)?;
    let mut summary = WriteSummary {
        tensors: items.len(),
        ..Default::default()
    };
    let mut plans = Vec::with_capacity(items.len());
    for (item, &(s, t, _)) in items.iter().zip(&resolved.locations) {
        let shape = &resolved.shards[s].tensors[t].shape;
        let refuse = |why: String| Error::source_tensor(&item.source, &item.key, why);
        let header = npy::header(item.dtype, shape).ok_or_else(|| {
            refuse(format!(
                "{} has no .npy form (NumPy has no quantized dtypes)",
                item.dtype
            ))
        })?;
        let len = item.dtype.byte_len(shape).map_err(refuse)?;
        summary.data_bytes += len;
        plans.push((header, len));
    }
    summary.file_size = plans.iter().map(|(h, len)| h.len() as u64 + len).sum();
    ensure_free_space(dir, dir, summary.file_size)?;
    // A partial folder: locked while it is filled, so that no other run's sweeper removes it.
    let lock = crate::output::open_for_lock(dir).map_err(|e| Error::io(dir, "cannot open", e))?;
    crate::output::try_lock(&lock);
    let total = summary.data_bytes;
    let last_reads = last_reads(&resolved);
    let mut writer = TensorWriter::new(total, progress, &mut summary);
    for (i, ((item, &(s, t, source_dtype)), ((header, len), name))) in items
        .iter()
        .zip(&resolved.locations)
        .zip(plans.iter().zip(file_names))
        .enumerate()
    {
        let path = dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(&path)
            .map_err(|e| Error::io(&path, "cannot create", e))?;
        file.set_len(header.len() as u64 + len)
            .map_err(|e| Error::io(&path, "cannot size", e))?;
        file.write_all_at(header, 0)
            .map_err(|e| Error::io(&path, "cannot write", e))?;
        let shard = &resolved.shards[s];
        let target = Target {
            file: &file,
            path: &path,
            offset: header.len() as u64,
        };
        writer.write_tensor(shard, &shard.tensors[t], source_dtype, item.dtype, target)?;
        if last_reads[s] == i {
            shard.check_unchanged()?;
        }
        file.sync_all()
            .map_err(|e| Error::io(&path, "cannot flush to disk", e))?;
    }
    writer.finish()?;
    Ok(summary)
}

/// Where a tensor's bytes go.
struct Target<'a> {
    file: &'a File,
    path: &'a Path,
    offset: u64,
}

impl Target<'_> {
    fn write_at(&self, bytes: &[u8], at: u64) -> Result<()> {
        self.file
            .write_all_at(bytes, self.offset + at)
            .map_err(|e| Error::io(self.path, "cannot write", e))
    }
}

struct TensorWriter<'a> {
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
    fn new(total: u64, progress: &'a mut dyn FnMut(Progress) -> bool, summary: &'a mut WriteSummary) -> Self {
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
    fn finish(&mut self) -> Result<()> {
        self.done = self.total;
        self.advance(0)
    }

    fn write_tensor(
        &mut self,
        shard: &Shard,
        tensor: &SourceTensor,
        from: DType,
        to: DType,
        target: Target,
    ) -> Result<()> {
        crate::guard::protect(); // our SIGBUS handler, not one installed since, sees the reads
        if from == to {
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
            if let Err(e) = target.write_at(&bytes[copied as usize..(copied + n) as usize], copied) {
                // The kernel reads the mapping for write(2): a page past the shard's new end gives
                // EFAULT there, not SIGBUS, and the error would blame the output.
                return Err(shard.shrank_under(tensor, tensor.file_offset + copied + n).unwrap_or(e));
            }
            shard.check(Some(tensor))?;
            release(shard, tensor.file_offset + copied, n);
            copied += n;
            self.wrote(target, copied);
            self.summary.buffer_copied += n;
            self.advance(n)?;
        }
        Ok(())
    }

    /// Converts a tensor in runs of whole elements (whole blocks of a quantized dtype), each run's
    /// values and scales written where they lie in the target (see `quant::element_ranges`).
    fn convert(&mut self, shard: &Shard, tensor: &SourceTensor, from: DType, to: DType, target: &Target) -> Result<()> {
        let bytes = shard.bytes(tensor);
        let elements: u64 = tensor.shape.iter().product();
        let step = quant::chunk_elements(from, to, CONVERT_CHUNK);
        let mut converter = Converter::new(from, to);
        let (mut values, mut scales) = (Vec::new(), Vec::new());
        let mut first = 0u64;
        while first < elements {
            let count = (elements - first).min(step);
            let (src, src_scales) = quant::element_ranges(from, elements, first, count);
            let (dst, dst_scales) = quant::element_ranges(to, elements, first, count);
            let slice = |r: std::ops::Range<u64>| &bytes[r.start as usize..r.end as usize];
            values.clear();
            scales.clear();
            converter.run(
                slice(src.clone()),
                src_scales.map_or(&[][..], slice),
                &mut values,
                &mut scales,
            );
            shard.check(Some(tensor))?;
            target.write_at(&values, dst.start)?;
            if let Some(dst_scales) = &dst_scales {
                target.write_at(&scales, dst_scales.start)?;
            }
            // A quantized source's scales are small and share pages between runs: kept mapped.
            release(shard, tensor.file_offset + src.start, src.end - src.start);
            first += count;
            let written = (values.len() + scales.len()) as u64;
            // The values are written in order; the scales trail them in their own region.
            self.wrote(target, dst.end);
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

/// `sync_file_range` over one window; best effort (errors are left for the final fsync).
fn sync_range(fd: std::os::fd::RawFd, offset: u64, len: u64, flags: libc::c_uint) {
    // SAFETY: a plain syscall on an open descriptor.
    unsafe {
        libc::sync_file_range(fd, offset as libc::off64_t, len as libc::off64_t, flags);
    }
}

/// Drops consumed pages of the mapping from our resident set (they stay in the page cache),
/// so RSS stays flat however large the model is.
fn release(shard: &Shard, offset: u64, len: u64) {
    // SAFETY: the range is inside the read-only mapping and is not read again through it.
    unsafe {
        let _ = shard
            .mmap
            .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset as usize, len as usize);
    }
}

fn kernel_copy_unavailable(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL | libc::EBADF | libc::EPERM)
    )
}

fn copy_file_range(src: &File, src_off: u64, dst: &File, dst_off: u64, len: u64) -> std::io::Result<u64> {
    let mut off_in = src_off as libc::loff_t;
    let mut off_out = dst_off as libc::loff_t;
    loop {
        // The raw syscall: glibc only wraps it from 2.27 on, and wheels target glibc 2.17.
        // SAFETY: valid descriptors and offset out-parameters; the kernel bounds-checks the rest.
        let n = unsafe {
            libc::syscall(
                libc::SYS_copy_file_range,
                src.as_raw_fd(),
                &mut off_in as *mut libc::loff_t,
                dst.as_raw_fd(),
                &mut off_out as *mut libc::loff_t,
                len as usize,
                0u32,
            )
        };
        if n >= 0 {
            return Ok(n as u64);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::burnpack::read_index;
    use crate::source::tests::write_shard;

    /// Writes the pack and puts it in place, as the binding does for a single pack.
    pub(crate) fn pack(request: &PackRequest, progress: &mut dyn FnMut(Progress) -> bool) -> Result<WriteSummary> {
        let (summary, staged) = pack_staged(request, progress)?;
        staged.commit()?;
        Ok(summary)
    }

    pub(crate) fn item(name: &str, source: &Path, key: &str, dtype: DType) -> TensorRequest {
        TensorRequest {
            name: name.into(),
            source: source.into(),
            key: key.into(),
            dtype,
            param_id: None,
            expect_source_dtype: None,
            expect_shape: None,
        }
    }

    /// A pack request with what most tests need: no metadata, Burn 0.21's layout, no overwrite.
    pub(crate) fn request(items: Vec<TensorRequest>, output: PathBuf) -> PackRequest {
        PackRequest {
            items,
            metadata: BTreeMap::new(),
            target: BurnTarget::V0_21,
            output,
            overwrite: false,
        }
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn packs_copies_and_casts_across_shards() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        let b = dir.path().join("b.safetensors");
        write_shard(&a, &[("w", "F32", vec![2, 2], f32_bytes(&[1.0, 2.0, 3.0, 4.0]))]);
        write_shard(
            &b,
            &[
                ("h", "F32", vec![3], f32_bytes(&[1.0, -2.0, 0.5])),
                ("i", "I64", vec![1], vec![7; 8]),
            ],
        );
        let out = dir.path().join("out.bpk");
        let request = PackRequest {
            items: vec![
                item("b.h", &b, "h", DType::BF16),
                item("a.w", &a, "w", DType::F32),
                item("ids", &b, "i", DType::I64),
            ],
            metadata: BTreeMap::from([("producer".to_string(), "test".to_string())]),
            target: BurnTarget::V0_21,
            output: out.clone(),
            overwrite: false,
        };
        let mut calls = 0;
        let wall = std::time::Instant::now();
        let summary = pack(&request, &mut |_| {
            calls += 1;
            true
        })
        .unwrap();
        let wall = wall.elapsed().as_secs_f64();
        assert!(calls >= 3);
        assert_eq!(summary.tensors, 3);
        // Output bytes: 6 converted (3 BF16), 16 + 8 unchanged (by the kernel or from the map).
        assert_eq!(summary.data_bytes, 6 + 16 + 8);
        assert_eq!(summary.converted, 6);
        assert_eq!(summary.kernel_copied + summary.buffer_copied, 16 + 8);
        // The phases follow one another within the call: each took some time, none more than all.
        let phases = [summary.plan_seconds, summary.data_seconds, summary.sync_seconds];
        assert!(phases.iter().all(|&s| s > 0.0), "{phases:?}");
        assert!(phases.iter().sum::<f64>() <= wall, "{phases:?} in {wall}");
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(bytes.len() as u64, summary.file_size);
        let index = read_index(&out).unwrap();
        let names: Vec<_> = index.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["b.h", "a.w", "ids"], "data order is request order");
        let range = |i: usize| {
            let t = &index.tensors[i];
            &bytes[t.file_offset as usize..(t.file_offset + t.end - t.start) as usize]
        };
        assert_eq!(range(0), [0x80, 0x3F, 0x00, 0xC0, 0x00, 0x3F]);
        assert_eq!(range(1), f32_bytes(&[1.0, 2.0, 3.0, 4.0]));
        assert_eq!(range(2), [7; 8]);
        assert!(index.tensors.iter().all(|t| t.file_offset % 256 == 0));
    }

    /// A BF16 tensor of three conversion runs and a half (block 48, so runs end inside no block)
    /// quantized into a pack: values and scales land where Burn's layout puts them, as the whole
    /// tensor quantized at once; unpacking dequantizes to F32; verify is exact and finds a changed
    /// scale; export to `.npy` is refused.
    #[test]
    fn quantizes_in_runs_to_the_whole_tensor_bytes_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        let step = quant::chunk_elements(DType::BF16, DType::Q8S(48), CONVERT_CHUNK);
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
        let mut request = request(vec![item("w", &a, "w", DType::Q8S(48))], out.clone());
        request.target = BurnTarget::V0_22;
        let summary = pack(&request, &mut |_| true).unwrap();
        let (mut values, mut scales) = (Vec::new(), Vec::new());
        quant::quantize(&floats, 48, &mut values, &mut scales);
        assert_eq!(summary.converted, (values.len() + scales.len()) as u64);
        let bytes = std::fs::read(&out).unwrap();
        let t = &read_index(&out).unwrap().tensors[0];
        assert_eq!(t.dtype, DType::Q8S(48));
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

        let items = vec![item("w", &a, "w", DType::Q8S(48))];
        assert_eq!(
            crate::verify::verify_against(&out, &items, &mut |_| true).unwrap(),
            vec![]
        );
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
    fn export_npy_then_pack_equals_direct_pack() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        write_shard(
            &a,
            &[
                ("w", "F32", vec![2, 3], f32_bytes(&[1.0, 2.5, -3.0, 4.0, 1e-3, 7.0])),
                ("n", "I32", vec![], vec![9, 0, 0, 0]),
            ],
        );
        let items = vec![item("w", &a, "w", DType::BF16), item("n", &a, "n", DType::I32)];
        let raw = dir.path().join("raw");
        std::fs::create_dir(&raw).unwrap();
        let names = vec!["w.npy".to_string(), "n.npy".to_string()];
        let summary = export_npy(&items, &raw, &names, &mut |_| true).unwrap();
        // 6 BF16 (12 bytes) and one I32 (4), each after a 128-byte header (numpy's, for these).
        assert_eq!((summary.tensors, summary.data_bytes, summary.converted), (2, 16, 12));
        let sizes: Vec<u64> = names.iter().map(|n| raw.join(n).metadata().unwrap().len()).collect();
        assert_eq!(sizes, [128 + 12, 128 + 4]);
        assert_eq!(summary.file_size, 128 + 12 + 128 + 4);
        let direct = request(items.clone(), dir.path().join("direct.bpk"));
        pack(&direct, &mut |_| true).unwrap();
        let mut from_npy = direct.clone();
        from_npy.output = dir.path().join("from_npy.bpk");
        from_npy.items = vec![
            item("w", &raw.join("w.npy"), "w", DType::BF16),
            item("n", &raw.join("n.npy"), "n", DType::I32),
        ];
        from_npy.items[0].expect_source_dtype = Some(DType::BF16);
        pack(&from_npy, &mut |_| true).unwrap();
        assert_eq!(
            std::fs::read(&direct.output).unwrap(),
            std::fs::read(&from_npy.output).unwrap()
        );
        // Without the manifest saying BF16, a `<u2` file is U16 and cannot become BF16.
        from_npy.items[0].expect_source_dtype = None;
        from_npy.output = dir.path().join("x.bpk");
        assert!(pack(&from_npy, &mut |_| true)
            .err()
            .unwrap()
            .to_string()
            .contains("cannot convert U16 to BF16"));
    }

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

    #[test]
    fn cancelling_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        write_shard(&a, &[("w", "F32", vec![4], vec![0; 16])]);
        let out = dir.path().join("out.bpk");
        std::fs::write(&out, b"previous").unwrap();
        let request = PackRequest {
            items: vec![item("w", &a, "w", DType::F32)],
            metadata: BTreeMap::new(),
            target: BurnTarget::V0_21,
            output: out.clone(),
            overwrite: true,
        };
        assert!(matches!(pack(&request, &mut |_| false), Err(Error::Cancelled)));
        assert_eq!(std::fs::read(&out).unwrap(), b"previous");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn the_final_progress_report_can_still_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        write_shard(&a, &[("w", "F32", vec![4], vec![0; 16])]);
        let out = dir.path().join("out.bpk");
        let request = request(vec![item("w", &a, "w", DType::F32)], out.clone());
        // The data's last chunk reports done == total once; the final report says it again.
        let mut reports = Vec::new();
        let result = pack(&request, &mut |p| {
            reports.push((p.done, p.total));
            reports.len() < 2
        });
        assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
        assert_eq!(reports, [(16, 16), (16, 16)]);
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no partial left");
    }

    #[test]
    fn exported_files_hold_a_header_and_data_longer_than_it_and_a_late_change_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        let data: Vec<u8> = (0..200u8).collect(); // more data than numpy's 128-byte header
        write_shard(
            &a,
            &[("s", "U8", vec![2], vec![5, 6]), ("big", "U8", vec![200], data.clone())],
        );
        let items = vec![item("s", &a, "s", DType::U8), item("big", &a, "big", DType::U8)];
        let names = vec!["s.npy".to_string(), "big.npy".to_string()];
        let raw = dir.path().join("raw");
        std::fs::create_dir(&raw).unwrap();
        export_npy(&items, &raw, &names, &mut |_| true).unwrap();
        let big = std::fs::read(raw.join("big.npy")).unwrap();
        assert_eq!(big.len(), 128 + 200);
        assert_eq!(&big[128..], &data[..]);

        // The shard is stamped again after its last tensor: a change made once every byte was
        // read (here: its modification time) still fails the export.
        let late = dir.path().join("late");
        std::fs::create_dir(&late).unwrap();
        let err = export_npy(&items, &late, &names, &mut |p| {
            if p.done == p.total {
                let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(86_400);
                OpenOptions::new()
                    .write(true)
                    .open(&a)
                    .unwrap()
                    .set_modified(when)
                    .unwrap();
            }
            true
        })
        .expect_err("a shard changed after its last read")
        .to_string();
        assert!(
            err.contains("a.safetensors") && err.contains("changed while being read"),
            "{err}"
        );
    }

    #[test]
    fn bad_requests_name_file_and_tensor_and_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        write_shard(
            &a,
            &[("w", "F32", vec![4], vec![0; 16]), ("i", "I32", vec![1], vec![0; 4])],
        );
        let out = dir.path().join("out.bpk");
        let run = |it: TensorRequest| {
            let request = request(vec![it], out.clone());
            pack(&request, &mut |_| true).err().unwrap().to_string()
        };
        let missing = run(item("x", &a, "nope", DType::F32));
        assert!(
            missing.contains("a.safetensors") && missing.contains("'nope'"),
            "{missing}"
        );
        let cast = run(item("i", &a, "i", DType::F32));
        assert!(cast.contains("cannot convert I32 to F32"), "{cast}");
        let mut wrong = item("w", &a, "w", DType::F32);
        wrong.expect_shape = Some(vec![2, 2]);
        assert!(run(wrong).contains("expected shape [2, 2]"));
        let self_overwrite = PackRequest {
            items: vec![item("w", &a, "w", DType::F32)],
            metadata: BTreeMap::new(),
            target: BurnTarget::V0_21,
            output: a.clone(),
            overwrite: true,
        };
        let e = pack(&self_overwrite, &mut |_| true).err().unwrap().to_string();
        assert!(e.contains("one of the input files"), "{e}");
        assert!(!out.exists());
    }

    #[test]
    fn a_source_that_shrinks_while_packing_fails_naming_it_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        let n = 24usize << 20; // 96 MiB of F32: more than one kernel copy, many conversion chunks
        write_shard(&a, &[("big", "F32", vec![n as u64], vec![0x3f; n * 4])]);
        let out = dir.path().join("out.bpk");
        for (dtype, what) in [(DType::BF16, "shrank while being read"), (DType::F32, "ended early")] {
            let request = request(vec![item("big", &a, "big", dtype)], out.clone());
            let mut shrunk = false;
            let err = pack(&request, &mut |_| {
                if !shrunk {
                    let f = OpenOptions::new().write(true).open(&a).unwrap();
                    f.set_len(4096).unwrap();
                    shrunk = true;
                }
                true
            })
            .err()
            .unwrap()
            .to_string();
            assert!(
                err.contains("a.safetensors") && err.contains("'big'") && err.contains(what),
                "{err}"
            );
            assert!(!out.exists());
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no partial left");
            write_shard(&a, &[("big", "F32", vec![n as u64], vec![0x3f; n * 4])]);
        }
    }

    /// A shard whose modification time is an hour old, so that any write now changes it.
    fn aged_shard(path: &Path, n: usize) {
        write_shard(path, &[("big", "F32", vec![n as u64], vec![0x3f; n * 4])]);
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
            .unwrap();
    }

    #[test]
    fn a_source_rewritten_or_replaced_while_packing_fails_naming_it_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        let n = 6usize << 20; // 24 MiB of F32: several conversion chunks
        let out = dir.path().join("out.bpk");
        type Change = fn(&Path);
        let rewrite: Change = |a| {
            // Same size, other bytes: only the modification time tells.
            let f = OpenOptions::new().write(true).open(a).unwrap();
            f.write_all_at(&[0x40; 4096], 1 << 20).unwrap();
        };
        let replace: Change = |a| {
            let other = a.with_extension("new");
            std::fs::copy(a, &other).unwrap();
            std::fs::rename(&other, a).unwrap();
        };
        for (dtype, change, what) in [
            (DType::BF16, rewrite, "mtime "),
            (DType::F32, rewrite, "mtime "),
            (DType::BF16, replace, "inode "),
        ] {
            aged_shard(&a, n);
            let request = request(vec![item("big", &a, "big", dtype)], out.clone());
            let mut changed = false;
            let err = pack(&request, &mut |_| {
                if !changed {
                    change(&a);
                    changed = true;
                }
                true
            })
            .err()
            .unwrap()
            .to_string();
            assert!(
                err.starts_with(&format!("{}: changed while being read (", a.display())) && err.contains(what),
                "{err}"
            );
            assert!(!out.exists());
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no partial left");
        }
        aged_shard(&a, 16);
        let request = request(vec![item("big", &a, "big", DType::BF16)], out.clone());
        pack(&request, &mut |_| true).expect("an unchanged shard packs");
    }

    #[test]
    fn a_source_that_shrinks_on_the_buffered_copy_path_is_named_not_the_output() {
        // tmpfs to another filesystem type: copy_file_range says EXDEV and the bytes are written
        // from the mapping, where the kernel answers a page past the end with EFAULT.
        let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let a = shm.path().join("a.safetensors");
        let n = 24usize << 20; // 96 MiB: more than one copy chunk
        write_shard(&a, &[("big", "F32", vec![n as u64], vec![0x3f; n * 4])]);
        let out = dir.path().join("out.bpk");
        let request = request(vec![item("big", &a, "big", DType::F32)], out.clone());
        let mut shrunk = false;
        let err = pack(&request, &mut |_| {
            if !shrunk {
                OpenOptions::new().write(true).open(&a).unwrap().set_len(4096).unwrap();
                shrunk = true;
            }
            true
        })
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.starts_with(&format!("{}: tensor 'big': ", a.display())) && err.contains("shrank"),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no partial left");
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

    #[test]
    fn a_staged_pack_waits_for_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        write_shard(&a, &[("w", "F32", vec![4], vec![1; 16])]);
        let request = request(vec![item("w", &a, "w", DType::F32)], dir.path().join("out.bpk"));
        let (summary, staged) = pack_staged(&request, &mut |_| true).unwrap();
        assert!(!request.output.exists());
        assert_eq!(std::fs::metadata(staged.temp_path()).unwrap().len(), summary.file_size);
        staged.commit().unwrap();
        assert_eq!(std::fs::metadata(&request.output).unwrap().len(), summary.file_size);
        let (_, dropped) = pack_staged(
            &PackRequest {
                overwrite: true,
                ..request.clone()
            },
            &mut |_| true,
        )
        .unwrap();
        drop(dropped);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
