//! Thin PyO3 binding over `heartmula_burn_core`: typed values across the boundary (frozen classes,
//! no positional tuples), core errors raised as the package's exception classes (I/O failures as
//! the builtin `OSError` subclasses), the GIL released while working, progress forwarded to a
//! Python callable, and Ctrl-C or a signal handler's exception turned into a clean stop.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use heartmula_burn_core as core;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

/// How often progress reaches Python (and Ctrl-C is noticed) at most.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// How long finishing or discarding streamed packs waits for a feed still in flight.
const FEED_WAIT: Duration = Duration::from_secs(10);
/// Where the exception classes live (Python code, so that they pickle like any other).
const ERRORS_MODULE: &str = "heartmula_burn._errors";

/// A core error as the matching Python exception: `SourceError`, `PackFileError`, `OutputError`
/// (each with `.path` and `.tensor`), the base `HeartmulaBurnError`, or for I/O failures the builtin
/// `OSError` subclass that Python picks for the errno (`FileNotFoundError`, `PermissionError`, ...).
fn to_py(py: Python<'_>, e: core::Error) -> PyErr {
    let message = e.to_string();
    let (class, path, tensor) = match e {
        core::Error::Io { path, what, source } => {
            let errno = source.raw_os_error().unwrap_or(libc::EIO);
            // "No such file or directory (os error 2)" -> "No such file or directory"
            let text = source.to_string();
            let reason = text.split(" (os error").next().unwrap_or(&text);
            return PyOSError::new_err((errno, format!("{what}: {reason}"), path.into_os_string()));
        }
        core::Error::Source { path, tensor, .. } => ("SourceError", Some(path), tensor),
        core::Error::PackFile { path, tensor, .. } => ("PackFileError", Some(path), tensor),
        core::Error::Output { path, .. } => ("OutputError", Some(path), None),
        core::Error::Cancelled => ("HeartmulaBurnError", None, None),
    };
    let raised = (|| -> PyResult<PyErr> {
        let class = py.import(ERRORS_MODULE)?.getattr(class)?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("path", path.map(|p| p.to_string_lossy().into_owned()))?;
        kwargs.set_item("tensor", tensor)?;
        Ok(PyErr::from_value(class.call((message,), Some(&kwargs))?))
    })();
    raised.unwrap_or_else(|import_failed| import_failed)
}

fn parse_dtype(name: &str) -> PyResult<core::DType> {
    core::DType::parse(name).ok_or_else(|| PyValueError::new_err(format!("unknown dtype '{name}'")))
}

fn tuple<'py>(py: Python<'py>, values: &[u64]) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(py, values)
}

/// One output tensor: its name in the pack, where its bytes come from (`source` file, `key` in it),
/// the dtype it gets in the pack, an optional Burn param_id, and what the caller expects the source
/// to hold (checked against the file before anything is written).
#[pyclass(frozen, eq, from_py_object, module = "heartmula_burn._core")]
#[derive(Clone, PartialEq)]
struct TensorRequest(core::TensorRequest);

#[pymethods]
impl TensorRequest {
    #[new]
    #[pyo3(signature = (name, source, key, dtype, *, param_id=None, source_dtype=None, shape=None))]
    fn new(
        name: String,
        source: PathBuf,
        key: String,
        dtype: &str,
        param_id: Option<u64>,
        source_dtype: Option<&str>,
        shape: Option<Vec<u64>>,
    ) -> PyResult<Self> {
        Ok(TensorRequest(core::TensorRequest {
            name,
            source,
            key,
            dtype: parse_dtype(dtype)?,
            param_id,
            expect_source_dtype: source_dtype.map(parse_dtype).transpose()?,
            expect_shape: shape,
        }))
    }

    #[getter]
    fn name(&self) -> &str {
        &self.0.name
    }
    #[getter]
    fn source(&self) -> PathBuf {
        self.0.source.clone()
    }
    #[getter]
    fn key(&self) -> &str {
        &self.0.key
    }
    #[getter]
    fn dtype(&self) -> String {
        self.0.dtype.name()
    }
    #[getter]
    fn param_id(&self) -> Option<u64> {
        self.0.param_id
    }
    #[getter]
    fn source_dtype(&self) -> Option<String> {
        self.0.expect_source_dtype.map(|d| d.name())
    }
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.0.expect_shape.as_deref().map(|s| tuple(py, s)).transpose()
    }

    fn __repr__(&self) -> String {
        format!(
            "TensorRequest(name={:?}, source={:?}, key={:?}, dtype={:?})",
            self.0.name,
            self.0.source.display().to_string(),
            self.0.key,
            self.0.dtype.name()
        )
    }
}

fn core_items(items: Vec<TensorRequest>) -> Vec<core::TensorRequest> {
    items.into_iter().map(|item| item.0).collect()
}

/// What a pack (or export) wrote, and how long each phase took.
#[pyclass(frozen, get_all, module = "heartmula_burn._core")]
#[derive(Clone)]
struct WriteSummary {
    /// Bytes of the whole output.
    file_size: u64,
    tensors: usize,
    /// Bytes of tensor data.
    data_bytes: u64,
    /// Bytes copied inside the kernel (`copy_file_range`), never through user memory.
    kernel_copied: u64,
    /// Unchanged bytes written from the mapping (where the kernel copy is not available).
    buffer_copied: u64,
    /// Output bytes produced by dtype conversion.
    converted: u64,
    plan_seconds: f64,
    data_seconds: f64,
    sync_seconds: f64,
}

impl From<core::WriteSummary> for WriteSummary {
    fn from(s: core::WriteSummary) -> Self {
        WriteSummary {
            file_size: s.file_size,
            tensors: s.tensors,
            data_bytes: s.data_bytes,
            kernel_copied: s.kernel_copied,
            buffer_copied: s.buffer_copied,
            converted: s.converted,
            plan_seconds: s.plan_seconds,
            data_seconds: s.data_seconds,
            sync_seconds: s.sync_seconds,
        }
    }
}

/// One tensor of a safetensors (or `.npy`) file's header.
#[pyclass(frozen, module = "heartmula_burn._core")]
struct SourceTensor {
    file: PathBuf,
    tensor: core::SourceTensor,
}

#[pymethods]
impl SourceTensor {
    #[getter]
    fn name(&self) -> &str {
        &self.tensor.name
    }
    /// The file holding it.
    #[getter]
    fn file(&self) -> PathBuf {
        self.file.clone()
    }
    /// Burn's name for its dtype, or None where Burn has none (fp8, fp4, complex).
    #[getter]
    fn dtype(&self) -> Option<String> {
        self.tensor.dtype.map(|d| d.name())
    }
    /// The dtype as the file's header spells it ("F32", "F8_E4M3", ...).
    #[getter]
    fn source_dtype(&self) -> &str {
        &self.tensor.source_dtype
    }
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        tuple(py, &self.tensor.shape)
    }
    /// Absolute offset of its first byte in the file.
    #[getter]
    fn file_offset(&self) -> u64 {
        self.tensor.file_offset
    }
    #[getter]
    fn byte_len(&self) -> u64 {
        self.tensor.byte_len
    }

    fn __repr__(&self) -> String {
        format!(
            "SourceTensor(name={:?}, dtype={:?}, shape={:?})",
            self.tensor.name, self.tensor.source_dtype, self.tensor.shape
        )
    }
}

/// One tensor of a Burn pack, as its metadata describes it.
#[pyclass(frozen, module = "heartmula_burn._core")]
struct PackTensor(core::burnpack::PackTensor);

#[pymethods]
impl PackTensor {
    #[getter]
    fn name(&self) -> &str {
        &self.0.name
    }
    #[getter]
    fn dtype(&self) -> String {
        self.0.dtype.name()
    }
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        tuple(py, &self.0.shape)
    }
    #[getter]
    fn param_id(&self) -> Option<u64> {
        self.0.param_id
    }
    /// (start, end) relative to the data section, as stored in the pack.
    #[getter]
    fn data_offsets(&self) -> (u64, u64) {
        (self.0.start, self.0.end)
    }
    /// Absolute offset of its first byte in the file.
    #[getter]
    fn file_offset(&self) -> u64 {
        self.0.file_offset
    }
    #[getter]
    fn nbytes(&self) -> u64 {
        self.0.end - self.0.start
    }

    fn __repr__(&self) -> String {
        format!(
            "PackTensor(name={:?}, dtype={:?}, shape={:?})",
            self.0.name,
            self.0.dtype.name(),
            self.0.shape
        )
    }
}

/// A Burn pack's header and metadata, checked against the file.
#[pyclass(frozen, module = "heartmula_burn._core")]
struct PackIndex {
    index: core::PackIndex,
    tensors: Vec<Py<PackTensor>>,
}

#[pymethods]
impl PackIndex {
    #[getter]
    fn file_size(&self) -> u64 {
        self.index.file_size
    }
    #[getter]
    fn metadata_size(&self) -> u64 {
        self.index.metadata_size
    }
    /// Absolute offset of the data section.
    #[getter]
    fn data_start(&self) -> u64 {
        self.index.data_start
    }
    /// "0.20+" (256-byte aligned, Burn 0.20 and later) or "0.19" (unaligned).
    #[getter]
    fn layout(&self) -> &'static str {
        match self.index.layout {
            core::burnpack::Layout::Aligned => "0.20+",
            core::burnpack::Layout::Unaligned019 => "0.19",
        }
    }
    #[getter]
    fn metadata(&self) -> BTreeMap<String, String> {
        self.index.metadata.clone()
    }
    /// In file order.
    #[getter]
    fn tensors(&self, py: Python<'_>) -> Vec<Py<PackTensor>> {
        self.tensors.iter().map(|t| t.clone_ref(py)).collect()
    }
}

/// One thing wrong with a pack, tied to a tensor where there is one.
#[pyclass(frozen, eq, get_all, module = "heartmula_burn._core")]
#[derive(Clone, PartialEq)]
struct Problem {
    tensor: Option<String>,
    message: String,
}

#[pymethods]
impl Problem {
    fn __repr__(&self) -> String {
        format!("Problem(tensor={:?}, message={:?})", self.tensor, self.message)
    }
}

fn problems(found: Vec<core::verify::Problem>) -> Vec<Problem> {
    found
        .into_iter()
        .map(|p| Problem {
            tensor: p.tensor,
            message: p.message,
        })
        .collect()
}

/// An output written in full to its temporary sibling (`.NAME.PID.heartmula-partial`) and not yet
/// in place: `commit()` renames it over the destination, `discard()` (or dropping it) deletes it.
/// Built directly, it is an empty temporary file for the caller to fill through `temp_path`.
#[pyclass(frozen, module = "heartmula_burn._core")]
struct StagedFile {
    file: Mutex<Option<core::AtomicFile>>,
    destination: PathBuf,
    temp_path: PathBuf,
}

impl StagedFile {
    fn wrap(file: core::AtomicFile) -> Self {
        StagedFile {
            destination: file.destination().to_path_buf(),
            temp_path: file.temp_path().to_path_buf(),
            file: Mutex::new(Some(file)),
        }
    }

    fn take(&self) -> PyResult<core::AtomicFile> {
        self.file
            .lock()
            .map_err(|_| PyValueError::new_err("staged file lock poisoned"))?
            .take()
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "{}: already committed or discarded",
                    self.destination.display()
                ))
            })
    }
}

#[pymethods]
impl StagedFile {
    #[new]
    #[pyo3(signature = (destination, *, overwrite=false))]
    fn new(py: Python<'_>, destination: PathBuf, overwrite: bool) -> PyResult<Self> {
        let file = core::AtomicFile::create(&destination, 0, overwrite).map_err(|e| to_py(py, e))?;
        Ok(StagedFile::wrap(file))
    }

    #[getter]
    fn destination(&self) -> PathBuf {
        self.destination.clone()
    }
    #[getter]
    fn temp_path(&self) -> PathBuf {
        self.temp_path.clone()
    }

    /// Flushes the file to disk and renames it over the destination.
    fn commit(&self, py: Python<'_>) -> PyResult<()> {
        let file = self.take()?;
        py.detach(|| file.commit()).map_err(|e| to_py(py, e))
    }

    /// Deletes the temporary file; the destination stays as it was. Does nothing when done already.
    fn discard(&self) -> PyResult<()> {
        if let Ok(mut slot) = self.file.lock() {
            slot.take();
        }
        Ok(())
    }
}

/// Runs `work` with the GIL released. Progress reaches `progress(done, total)` (GIL held) at most
/// every 100 ms; a signal handler's exception (KeyboardInterrupt on Ctrl-C) or an exception from
/// the callback cancels the work and is re-raised.
fn with_progress<T: Send>(
    py: Python<'_>,
    progress: Option<Py<PyAny>>,
    work: impl Send + FnOnce(&mut dyn FnMut(core::Progress) -> bool) -> core::Result<T>,
) -> PyResult<T> {
    let (result, interrupt) = py.detach(|| {
        let mut interrupt: Option<PyErr> = None;
        let mut last = Instant::now();
        let mut on_progress = |p: core::Progress| {
            if p.done < p.total && last.elapsed() < PROGRESS_INTERVAL {
                return true;
            }
            last = Instant::now();
            Python::attach(|py| {
                let outcome = py.check_signals().and_then(|()| match &progress {
                    Some(cb) => cb.call1(py, (p.done, p.total)).map(|_| ()),
                    None => Ok(()),
                });
                outcome.map_err(|e| interrupt = Some(e)).is_ok()
            })
        };
        let result = work(&mut on_progress);
        (result, interrupt)
    });
    match (result, interrupt) {
        (Ok(value), _) => Ok(value),
        (Err(core::Error::Cancelled), Some(e)) => Err(e),
        (Err(e), _) => Err(to_py(py, e)),
    }
}

fn target(burn_version: &str) -> PyResult<core::BurnTarget> {
    core::BurnTarget::parse(burn_version).ok_or_else(|| {
        PyValueError::new_err(format!(
            "unknown Burn version '{burn_version}' (0.19, 0.20, 0.21, 0.22)"
        ))
    })
}

/// Writes a Burn pack to a temporary file beside `output` and flushes it to disk; returns what was
/// written and the staged file, which the caller commits (or discards). See `with_progress`.
#[pyfunction]
#[pyo3(signature = (items, metadata, output, *, overwrite=false, burn_version="0.21", progress=None))]
fn pack(
    py: Python<'_>,
    items: Vec<TensorRequest>,
    metadata: BTreeMap<String, String>,
    output: PathBuf,
    overwrite: bool,
    burn_version: &str,
    progress: Option<Py<PyAny>>,
) -> PyResult<(WriteSummary, StagedFile)> {
    let request = core::PackRequest {
        items: core_items(items),
        metadata,
        target: target(burn_version)?,
        output,
        overwrite,
    };
    let (summary, staged) = with_progress(py, progress, |on_progress| core::pack_staged(&request, on_progress))?;
    Ok((summary.into(), StagedFile::wrap(staged)))
}

/// Writes each tensor as a `.npy` file in `directory` under the given file names (BF16 as `<u2`).
#[pyfunction]
#[pyo3(signature = (items, directory, file_names, *, progress=None))]
fn export_npy(
    py: Python<'_>,
    items: Vec<TensorRequest>,
    directory: PathBuf,
    file_names: Vec<String>,
    progress: Option<Py<PyAny>>,
) -> PyResult<WriteSummary> {
    if items.len() != file_names.len() {
        return Err(PyValueError::new_err("one file name per item is needed"));
    }
    let items = core_items(items);
    let summary = with_progress(py, progress, |on_progress| {
        core::export::export_npy(&items, &directory, &file_names, on_progress)
    })?;
    Ok(summary.into())
}

/// Writes the items (unchanged dtypes, in order) as one safetensors file, atomically.
#[pyfunction]
#[pyo3(signature = (items, output, metadata, *, overwrite=false, progress=None))]
fn write_safetensors(
    py: Python<'_>,
    items: Vec<TensorRequest>,
    output: PathBuf,
    metadata: BTreeMap<String, String>,
    overwrite: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<WriteSummary> {
    let items = core_items(items);
    let summary = with_progress(py, progress, |on_progress| {
        core::unpack::write_safetensors(&items, &output, &metadata, overwrite, on_progress)
    })?;
    Ok(summary.into())
}

/// Checks a pack's container: raises where Burn's reader would refuse it, else returns the
/// problems Burn tolerates (alignment, non-zero padding).
#[pyfunction]
fn check_container(py: Python<'_>, path: PathBuf) -> PyResult<Vec<Problem>> {
    let (_, found) = py
        .detach(|| core::verify::check_container(&path))
        .map_err(|e| to_py(py, e))?;
    Ok(problems(found))
}

/// Compares every tensor of a pack with its source (items name the pack tensors and the dtype
/// they must hold); returns the problems found.
#[pyfunction]
#[pyo3(signature = (path, items, *, progress=None))]
fn verify_against(
    py: Python<'_>,
    path: PathBuf,
    items: Vec<TensorRequest>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Vec<Problem>> {
    let items = core_items(items);
    let found = with_progress(py, progress, |on_progress| {
        core::verify::verify_against(&path, &items, on_progress)
    })?;
    Ok(problems(found))
}

/// Reads a safetensors (or `.npy`) header: its tensors in file order, and its `__metadata__`.
#[pyfunction]
fn read_safetensors_header(py: Python<'_>, path: PathBuf) -> PyResult<(Vec<SourceTensor>, BTreeMap<String, String>)> {
    let shard = py.detach(|| core::Shard::open(&path)).map_err(|e| to_py(py, e))?;
    Ok(header_of(&path, shard.tensors, shard.metadata))
}

/// A header as Python sees it: the tensors, each naming `path`, and the metadata as a dict.
fn header_of(
    path: &std::path::Path,
    tensors: Vec<core::SourceTensor>,
    metadata: Vec<(String, String)>,
) -> (Vec<SourceTensor>, BTreeMap<String, String>) {
    let tensors = tensors
        .into_iter()
        .map(|tensor| SourceTensor {
            file: path.to_path_buf(),
            tensor,
        })
        .collect();
    (tensors, metadata.into_iter().collect())
}

/// Parses the start of a safetensors file of `size` bytes whose data is elsewhere (a shard on the
/// Hub): `head` holds the 8-byte length and the header. Checked against `size` as
/// `read_safetensors_header` checks a whole file; the tensors name `path`.
#[pyfunction]
fn parse_safetensors_head(
    py: Python<'_>,
    path: PathBuf,
    head: &[u8],
    size: u64,
) -> PyResult<(Vec<SourceTensor>, BTreeMap<String, String>)> {
    let shard = core::RemoteShard::parse(&path, head, size).map_err(|e| to_py(py, e))?;
    Ok(header_of(&path, shard.tensors, shard.metadata))
}

/// Packs written from shards that arrive as byte streams: planned from the shards' headers as
/// `pack` plans them, staged (temporary files created, sized, headers written), then fed each
/// shard's bytes in order, from one thread per shard, and finished into staged files to commit.
#[pyclass(frozen, module = "heartmula_burn._core")]
struct StreamedPacks(Mutex<Option<std::sync::Arc<core::StreamedPacks>>>);

impl StreamedPacks {
    fn get(&self) -> PyResult<std::sync::Arc<core::StreamedPacks>> {
        self.0
            .lock()
            .map_err(|_| PyValueError::new_err("streamed packs lock poisoned"))?
            .clone()
            .ok_or_else(|| PyValueError::new_err("the streamed packs were finished or discarded"))
    }
}

#[pymethods]
impl StreamedPacks {
    /// `jobs`: (items, metadata, output) per pack; `shards`: (path, head, size, sha256) per shard,
    /// each item's `source` one of these paths. `resumable`: the packs are partials that outlive
    /// the run, with a journal beside the first, and continue an earlier run's when its journal
    /// fits this plan (`resume_offset`, `resumed`), unless `fresh`.
    #[new]
    #[pyo3(signature = (jobs, shards, *, overwrite=false, burn_version="0.21", resumable=false, fresh=false))]
    fn new(
        py: Python<'_>,
        jobs: Vec<(Vec<TensorRequest>, BTreeMap<String, String>, PathBuf)>,
        shards: Vec<(PathBuf, Vec<u8>, u64, String)>,
        overwrite: bool,
        burn_version: &str,
        resumable: bool,
        fresh: bool,
    ) -> PyResult<Self> {
        let target = target(burn_version)?;
        let requests: Vec<core::PackRequest> = jobs
            .into_iter()
            .map(|(items, metadata, output)| core::PackRequest {
                items: core_items(items),
                metadata,
                target,
                output,
                overwrite,
            })
            .collect();
        let resume = match requests.first() {
            Some(first) if resumable => Some(core::Resume {
                journal: core::output::resume_journal_path(&first.output).map_err(|e| to_py(py, e))?,
                fresh,
            }),
            _ => None,
        };
        let staged = py
            .detach(|| {
                let remote = shards
                    .iter()
                    .map(
                        |(path, head, size, sha256)| Ok(core::RemoteShard::parse(path, head, *size)?.expecting(sha256)),
                    )
                    .collect::<core::Result<Vec<_>>>()?;
                core::StreamedPacks::stage(&requests, remote, resume.as_ref())
            })
            .map_err(|e| to_py(py, e))?;
        Ok(StreamedPacks(Mutex::new(Some(std::sync::Arc::new(staged)))))
    }

    /// Writes `data`, the shard's bytes at `offset`, to the packs (the GIL released). `offset` is
    /// where the shard's previous piece ended, or `resume_offset` for its first piece.
    fn feed(&self, py: Python<'_>, shard: PathBuf, offset: u64, data: &[u8]) -> PyResult<()> {
        let packs = self.get()?;
        // The packs are let go inside, without the GIL: a discard waiting for this feed is not
        // kept waiting for a thread that cannot get the GIL back (as at interpreter exit).
        py.detach(move || {
            let index = packs.shard_index(&shard)?;
            packs.feed(index, offset, data)
        })
        .map_err(|e| to_py(py, e))
    }

    /// Where the shard's data is to be fetched from: its data start, or where an earlier run reached.
    fn resume_offset(&self, py: Python<'_>, shard: PathBuf) -> PyResult<u64> {
        let packs = self.get()?;
        let index = packs.shard_index(&shard).map_err(|e| to_py(py, e))?;
        Ok(packs.resume_offset(index))
    }

    /// What became of an earlier run's partial packs (continued, or discarded and why), if any.
    fn resumed(&self) -> PyResult<Option<String>> {
        Ok(self.get()?.resumed().map(str::to_string))
    }

    /// The SHA-256 (hex) of the shard's bytes received so far, its header included.
    fn sha256(&self, py: Python<'_>, shard: PathBuf) -> PyResult<String> {
        let packs = self.get()?;
        let index = packs.shard_index(&shard).map_err(|e| to_py(py, e))?;
        Ok(py.detach(|| packs.sha256(index)))
    }

    /// Puts the bytes fed so far on disk, then the journal that says so (the GIL released);
    /// feeding may go on. The shard bytes the journal covers.
    fn checkpoint(&self, py: Python<'_>) -> PyResult<u64> {
        let packs = self.get()?;
        py.detach(|| packs.checkpoint()).map_err(|e| to_py(py, e))
    }

    /// Checks every shard arrived whole and flushes the packs: (summary, staged file) per job.
    fn finish(&self, py: Python<'_>) -> PyResult<Vec<(WriteSummary, StagedFile)>> {
        let packs = self.take(py)?;
        let done = py.detach(|| packs.finish()).map_err(|e| to_py(py, e))?;
        Ok(done
            .into_iter()
            .map(|(summary, file)| (summary.into(), StagedFile::wrap(file)))
            .collect())
    }

    /// Deletes the temporary files and the journal; the destinations stay as they were. Does
    /// nothing when finished, suspended or discarded already.
    fn discard(&self, py: Python<'_>) -> PyResult<()> {
        match self.take(py) {
            Ok(packs) => py.detach(|| packs.discard()).map_err(|e| to_py(py, e)),
            Err(_) => Ok(()),
        }
    }

    /// Leaves the resumable partials and their journal for the next run (else as `discard`):
    /// the shard bytes kept. Nothing when finished, suspended or discarded already.
    fn suspend(&self, py: Python<'_>) -> PyResult<u64> {
        match self.take(py) {
            Ok(packs) => py.detach(|| packs.suspend()).map_err(|e| to_py(py, e)),
            Err(_) => Ok(0),
        }
    }
}

impl StreamedPacks {
    /// The packs, no longer shared: waits for a feed in flight (one piece, milliseconds).
    fn take(&self, py: Python<'_>) -> PyResult<core::StreamedPacks> {
        let mut packs = self
            .0
            .lock()
            .map_err(|_| PyValueError::new_err("streamed packs lock poisoned"))?
            .take()
            .ok_or_else(|| PyValueError::new_err("the streamed packs were finished or discarded"))?;
        py.detach(|| {
            let deadline = Instant::now() + FEED_WAIT;
            loop {
                match std::sync::Arc::try_unwrap(packs) {
                    Ok(alone) => return Ok(alone),
                    Err(_) if Instant::now() > deadline => {
                        return Err(PyValueError::new_err("the streamed packs are still being fed"))
                    }
                    Err(shared) => packs = shared,
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    }
}

/// Reads a Burn pack's header and metadata, checked against the file (0.19 and 0.20+ layouts).
#[pyfunction]
fn read_pack_index(py: Python<'_>, path: PathBuf) -> PyResult<PackIndex> {
    let mut index = py
        .detach(|| core::burnpack::read_index(&path))
        .map_err(|e| to_py(py, e))?;
    let tensors = std::mem::take(&mut index.tensors)
        .into_iter()
        .map(|t| Py::new(py, PackTensor(t)))
        .collect::<PyResult<_>>()?;
    Ok(PackIndex { index, tensors })
}

/// Converts raw little-endian elements between float dtypes, exactly as `pack` does. Nothing in the
/// package calls it: it is how the tests hold the core's cast kernel against numpy's casts on
/// hypothesis-generated values, without writing a pack per case.
#[pyfunction]
fn cast_bytes<'py>(py: Python<'py>, data: &[u8], from_dtype: &str, to_dtype: &str) -> PyResult<Bound<'py, PyBytes>> {
    let (from, to) = (parse_dtype(from_dtype)?, parse_dtype(to_dtype)?);
    if !core::cast::supported(from, to) {
        return Err(PyValueError::new_err(format!("cannot convert {from} to {to}")));
    }
    if from.is_quantized() || to.is_quantized() {
        return Err(PyValueError::new_err(format!(
            "cast_bytes converts plain dtypes; {from} to {to} needs a tensor's shape (pack it)"
        )));
    }
    if !(data.len() as u64).is_multiple_of(from.size()) {
        return Err(PyValueError::new_err(format!(
            "{} bytes is not a whole number of {from} elements",
            data.len()
        )));
    }
    let mut out = Vec::new();
    core::cast::convert(data, from, to, &mut out);
    Ok(PyBytes::new(py, &out))
}

/// One row of the core's dtype table: what Python knows of a dtype comes from here.
#[pyclass(frozen, eq, module = "heartmula_burn._core")]
#[derive(Clone, PartialEq)]
struct DTypeInfo(core::DType);

#[pymethods]
impl DTypeInfo {
    /// Our name: Burn's variant name ("F32", "Bool") or a quantized scheme and block ("Q8S_B32").
    #[getter]
    fn name(&self) -> String {
        self.0.name()
    }
    /// Burn's `DType` variant ("QFloat" for a quantized dtype).
    #[getter]
    fn burn_name(&self) -> &'static str {
        self.0.plain_name()
    }
    /// Bytes per element, or None for a quantized dtype (its scales belong to the whole tensor).
    #[getter]
    fn element_size(&self) -> Option<u64> {
        self.0.element_size()
    }
    #[getter]
    fn is_float(&self) -> bool {
        self.0.is_float()
    }
    #[getter]
    fn is_quantized(&self) -> bool {
        self.0.is_quantized()
    }
    /// Values per scale of a quantized dtype, along the last dimension.
    #[getter]
    fn block(&self) -> Option<u8> {
        self.0.block()
    }
    /// How a quantized dtype stores its values, as Burn spells it ("PackedU32(0)", "Native").
    #[getter]
    fn store(&self) -> Option<&'static str> {
        self.0.store().map(core::QuantStore::burn_name)
    }
    /// Whether converting to `target` (a name, any case) keeps every value exactly: the same
    /// bytes, or a float widened (F16/BF16 to F32 or F64, F32 to F64). ValueError for no dtype.
    fn casts_exactly_to(&self, target: &str) -> PyResult<bool> {
        Ok(core::cast::exact(self.0, parse_dtype(target)?))
    }
    /// Bytes a tensor of this dtype and `shape` takes in a pack; ValueError saying why it cannot.
    fn byte_len(&self, shape: Vec<u64>) -> PyResult<u64> {
        self.0.byte_len(&shape).map_err(PyValueError::new_err)
    }
    fn __repr__(&self) -> String {
        format!("DTypeInfo({:?})", self.0.name())
    }
}

/// The dtype a name spells (any case: "bf16", "F32", "q8s_b32"); ValueError if none.
#[pyfunction]
fn dtype_info(name: &str) -> PyResult<DTypeInfo> {
    parse_dtype(name).map(DTypeInfo)
}

/// Every plain dtype (fixed size per element), in the core's order.
#[pyfunction]
fn plain_dtypes() -> Vec<DTypeInfo> {
    core::DType::PLAIN.into_iter().map(DTypeInfo).collect()
}

/// This process's temporary sibling of `destination` (`.NAME.PID.heartmula-partial`), after
/// removing those that killed runs left for it.
#[pyfunction]
fn partial_path(py: Python<'_>, destination: PathBuf) -> PyResult<PathBuf> {
    core::output::remove_stale_partials(&destination);
    core::output::partial_path(&destination).map_err(|e| to_py(py, e))
}

/// Puts the finished folder `partial` in place of `destination` (atomically swapping out an
/// existing one, which `overwrite` must allow, and removing it).
#[pyfunction]
#[pyo3(signature = (partial, destination, *, overwrite=false))]
fn commit_dir(py: Python<'_>, partial: PathBuf, destination: PathBuf, overwrite: bool) -> PyResult<()> {
    py.detach(|| core::output::commit_dir(&partial, &destination, overwrite))
        .map_err(|e| to_py(py, e))
}

/// Protects a read-only file mapping made elsewhere (Python's `mmap`) against the file shrinking
/// under it: reads past the new end give zeros instead of killing the process with SIGBUS, and
/// `fault()` says where the first such read was. `close()` (before unmapping) unregisters it.
#[pyclass(frozen, module = "heartmula_burn._core")]
struct MapGuard(Mutex<Option<core::guard::MapGuard>>);

#[pymethods]
impl MapGuard {
    #[new]
    fn new(address: usize, length: usize) -> Self {
        MapGuard(Mutex::new(Some(core::guard::MapGuard::register(
            address as *const u8,
            length,
        ))))
    }

    /// Offset of the first byte whose read faulted, or None. Also installs the guard's SIGBUS
    /// handler again if another one (`faulthandler.enable()`) replaced it, for the reads to come.
    fn fault(&self) -> Option<u64> {
        core::guard::protect();
        self.0.lock().ok()?.as_ref()?.fault()
    }

    fn close(&self) {
        if let Ok(mut guard) = self.0.lock() {
            guard.take();
        }
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<TensorRequest>()?;
    m.add_class::<WriteSummary>()?;
    m.add_class::<SourceTensor>()?;
    m.add_class::<PackTensor>()?;
    m.add_class::<PackIndex>()?;
    m.add_class::<Problem>()?;
    m.add_class::<StagedFile>()?;
    m.add_class::<MapGuard>()?;
    m.add_class::<DTypeInfo>()?;
    // The largest quantization block: Burn stores a block length in one byte.
    m.add("MAX_Q_BLOCK", u8::MAX)?;
    m.add_class::<StreamedPacks>()?;
    m.add_function(wrap_pyfunction!(dtype_info, m)?)?;
    m.add_function(wrap_pyfunction!(plain_dtypes, m)?)?;
    m.add_function(wrap_pyfunction!(pack, m)?)?;
    m.add_function(wrap_pyfunction!(export_npy, m)?)?;
    m.add_function(wrap_pyfunction!(write_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(check_container, m)?)?;
    m.add_function(wrap_pyfunction!(verify_against, m)?)?;
    m.add_function(wrap_pyfunction!(read_safetensors_header, m)?)?;
    m.add_function(wrap_pyfunction!(parse_safetensors_head, m)?)?;
    m.add_function(wrap_pyfunction!(read_pack_index, m)?)?;
    m.add_function(wrap_pyfunction!(cast_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(partial_path, m)?)?;
    m.add_function(wrap_pyfunction!(commit_dir, m)?)?;
    Ok(())
}
