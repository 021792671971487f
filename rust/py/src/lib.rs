//! Thin PyO3 binding over `heartmula_burn_core`: converts arguments, releases the GIL while
//! packing, forwards progress to a Python callable and turns Ctrl-C into a clean stop.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use heartmula_burn_core as core;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

create_exception!(
    _core,
    PackError,
    PyException,
    "A pack could not be read or written; the message names the file and tensor."
);

/// How often progress reaches Python (and Ctrl-C is noticed) at most.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

fn to_py(e: core::Error) -> PyErr {
    PackError::new_err(e.to_string())
}

fn parse_dtype(name: &str) -> PyResult<core::DType> {
    core::DType::parse(name).ok_or_else(|| PackError::new_err(format!("unknown dtype '{name}'")))
}

/// One output tensor: (name, source file, key in that file, output dtype, param_id,
/// expected source dtype, expected shape).
type ItemTuple = (
    String,
    PathBuf,
    String,
    String,
    Option<u64>,
    Option<String>,
    Option<Vec<u64>>,
);

fn to_items(items: Vec<ItemTuple>) -> PyResult<Vec<core::PackItem>> {
    items
        .into_iter()
        .map(|(name, source, key, dtype, param_id, source_dtype, shape)| {
            Ok(core::PackItem {
                name,
                source,
                key,
                dtype: parse_dtype(&dtype)?,
                param_id,
                expect_source_dtype: source_dtype.as_deref().map(parse_dtype).transpose()?,
                expect_shape: shape,
            })
        })
        .collect()
}

/// Runs `work` with the GIL released. Progress reaches `progress(done, total)` (GIL held) at most
/// every 100 ms; Ctrl-C or an exception from the callback cancels the work and is re-raised.
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
        (Err(e), _) => Err(to_py(e)),
    }
}

fn summary_dict<'py>(py: Python<'py>, summary: core::PackSummary) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("file_size", summary.file_size)?;
    d.set_item("tensors", summary.tensors)?;
    d.set_item("data_bytes", summary.data_bytes)?;
    d.set_item("kernel_copied", summary.kernel_copied)?;
    d.set_item("buffer_copied", summary.buffer_copied)?;
    d.set_item("converted", summary.converted)?;
    d.set_item("plan_seconds", summary.plan_seconds)?;
    d.set_item("data_seconds", summary.data_seconds)?;
    d.set_item("sync_seconds", summary.sync_seconds)?;
    Ok(d)
}

fn problems_list(problems: Vec<core::verify::Problem>) -> Vec<(Option<String>, String)> {
    problems.into_iter().map(|p| (p.tensor, p.message)).collect()
}

/// Packs tensors into a Burn pack, atomically. See `with_progress` for progress and Ctrl-C.
#[pyfunction]
#[pyo3(signature = (items, metadata, output, *, overwrite=false, burn_version="0.21", progress=None))]
fn pack<'py>(
    py: Python<'py>,
    items: Vec<ItemTuple>,
    metadata: BTreeMap<String, String>,
    output: PathBuf,
    overwrite: bool,
    burn_version: &str,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let target = core::BurnTarget::parse(burn_version).ok_or_else(|| {
        PackError::new_err(format!(
            "unknown Burn version '{burn_version}' (0.19, 0.20, 0.21, 0.22)"
        ))
    })?;
    let request = core::PackRequest {
        items: to_items(items)?,
        metadata,
        target,
        output,
        overwrite,
    };
    let summary = with_progress(py, progress, |on_progress| core::pack(&request, on_progress))?;
    summary_dict(py, summary)
}

/// Writes each tensor as a `.npy` file in `directory` under the given file names (BF16 as `<u2`).
#[pyfunction]
#[pyo3(signature = (items, directory, file_names, *, progress=None))]
fn export_npy<'py>(
    py: Python<'py>,
    items: Vec<ItemTuple>,
    directory: PathBuf,
    file_names: Vec<String>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    if items.len() != file_names.len() {
        return Err(PackError::new_err("one file name per item is needed"));
    }
    let items = to_items(items)?;
    let summary = with_progress(py, progress, |on_progress| {
        core::pack::export_npy(&items, &directory, &file_names, on_progress)
    })?;
    summary_dict(py, summary)
}

/// Writes the items (unchanged dtypes, in order) as one safetensors file, atomically.
#[pyfunction]
#[pyo3(signature = (items, output, metadata, *, overwrite=false, progress=None))]
fn write_safetensors<'py>(
    py: Python<'py>,
    items: Vec<ItemTuple>,
    output: PathBuf,
    metadata: BTreeMap<String, String>,
    overwrite: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let items = to_items(items)?;
    let summary = with_progress(py, progress, |on_progress| {
        core::unpack::write_safetensors(&items, &output, &metadata, overwrite, on_progress)
    })?;
    summary_dict(py, summary)
}

/// Checks a pack's container: raises PackError where Burn's reader would refuse it, else returns
/// the (tensor or None, message) problems Burn tolerates (alignment, non-zero padding).
#[pyfunction]
fn check_container(py: Python<'_>, path: PathBuf) -> PyResult<Vec<(Option<String>, String)>> {
    let (_, problems) = py.detach(|| core::verify::check_container(&path)).map_err(to_py)?;
    Ok(problems_list(problems))
}

/// Compares every tensor of a pack with its source (items name the pack tensors and the dtype
/// they must hold); returns the (tensor, message) problems found.
#[pyfunction]
#[pyo3(signature = (path, items, *, progress=None))]
fn verify_against(
    py: Python<'_>,
    path: PathBuf,
    items: Vec<ItemTuple>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Vec<(Option<String>, String)>> {
    let items = to_items(items)?;
    let problems = with_progress(py, progress, |on_progress| {
        core::verify::verify_against(&path, &items, on_progress)
    })?;
    Ok(problems_list(problems))
}

/// Reads a safetensors header: (tensors in file order as dicts, the header's __metadata__ dict).
#[pyfunction]
fn read_safetensors_header<'py>(py: Python<'py>, path: PathBuf) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyDict>)> {
    let shard = py.detach(|| core::Shard::open(&path)).map_err(to_py)?;
    let tensors = PyList::empty(py);
    for t in &shard.tensors {
        let d = PyDict::new(py);
        d.set_item("name", &t.name)?;
        d.set_item("dtype", t.dtype.map(|d| d.name()))?;
        d.set_item("source_dtype", &t.source_dtype)?;
        d.set_item("shape", &t.shape)?;
        d.set_item("file_offset", t.file_offset)?;
        d.set_item("byte_len", t.byte_len)?;
        tensors.append(d)?;
    }
    let metadata = PyDict::new(py);
    for (k, v) in &shard.metadata {
        metadata.set_item(k, v)?;
    }
    Ok((tensors, metadata))
}

/// Reads a Burn pack's header and metadata, checked against the file (both 0.19 and 0.20+ layouts).
#[pyfunction]
fn read_pack_index<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let index = core::burnpack::read_index(&path).map_err(to_py)?;
    let d = PyDict::new(py);
    d.set_item("file_size", index.file_size)?;
    d.set_item("metadata_size", index.metadata_size)?;
    d.set_item("data_start", index.data_start)?;
    d.set_item(
        "layout",
        match index.layout {
            core::burnpack::Layout::Aligned => "0.20+",
            core::burnpack::Layout::Unaligned019 => "0.19",
        },
    )?;
    d.set_item("metadata", index.metadata)?;
    let tensors = PyList::empty(py);
    for t in &index.tensors {
        let td = PyDict::new(py);
        td.set_item("name", &t.name)?;
        td.set_item("dtype", t.dtype.name())?;
        td.set_item("shape", &t.shape)?;
        td.set_item("param_id", t.param_id)?;
        td.set_item("data_offsets", (t.start, t.end))?;
        td.set_item("file_offset", t.file_offset)?;
        tensors.append(td)?;
    }
    d.set_item("tensors", tensors)?;
    Ok(d)
}

/// Converts raw little-endian elements between float dtypes, exactly as `pack` does.
#[pyfunction]
fn cast_bytes(data: &[u8], from_dtype: &str, to_dtype: &str) -> PyResult<Vec<u8>> {
    let (from, to) = (parse_dtype(from_dtype)?, parse_dtype(to_dtype)?);
    if !core::cast::supported(from, to) {
        return Err(PackError::new_err(format!("cannot convert {from} to {to}")));
    }
    if data.len() as u64 % from.size() != 0 {
        return Err(PackError::new_err(format!(
            "{} bytes is not a whole number of {from} elements",
            data.len()
        )));
    }
    let mut out = Vec::new();
    core::cast::convert(data, from, to, &mut out);
    Ok(out)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("PackError", m.py().get_type::<PackError>())?;
    m.add_function(wrap_pyfunction!(pack, m)?)?;
    m.add_function(wrap_pyfunction!(export_npy, m)?)?;
    m.add_function(wrap_pyfunction!(write_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(check_container, m)?)?;
    m.add_function(wrap_pyfunction!(verify_against, m)?)?;
    m.add_function(wrap_pyfunction!(read_safetensors_header, m)?)?;
    m.add_function(wrap_pyfunction!(read_pack_index, m)?)?;
    m.add_function(wrap_pyfunction!(cast_bytes, m)?)?;
    Ok(())
}
