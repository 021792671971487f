//! Packing: every requested tensor resolved in its source and checked, the layout planned, then
//! the bytes streamed by the copy engine (`engine`) into an atomic output file that stays staged
//! until the caller commits it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::burnpack::{BurnTarget, PackLayout};
use crate::engine::{resolve, write_tensors, Progress, Resolved, TensorRequest, WriteSummary};
use crate::error::{Error, Result};
use crate::output::AtomicFile;
use crate::source::Shard;

#[derive(Debug, Clone)]
pub struct PackRequest {
    pub items: Vec<TensorRequest>,
    pub metadata: BTreeMap<String, String>,
    pub target: BurnTarget,
    pub output: PathBuf,
    pub overwrite: bool,
}

/// Plans the pack without writing anything: opens shards, checks every item, lays the file out.
fn plan(request: &PackRequest) -> Result<(PackLayout, Resolved)> {
    let resolved = resolve(&request.items)?;
    let shapes = resolved
        .locations
        .iter()
        .map(|&(s, t, _)| &resolved.shards[s].tensors[t].shape);
    let layout = layout(request, shapes)?;
    Ok((layout, resolved))
}

/// Lays the pack out: each item under its name, dtype and param_id, with its source's `shapes`.
pub(crate) fn layout<'a>(request: &PackRequest, shapes: impl Iterator<Item = &'a Vec<u64>>) -> Result<PackLayout> {
    let specs = request
        .items
        .iter()
        .zip(shapes)
        .map(|(item, shape)| (item.name.clone(), item.dtype, shape.clone(), item.param_id))
        .collect();
    PackLayout::plan(specs, request.metadata.clone(), request.target, &request.output)
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::burnpack::read_index;
    use crate::dtype::DType;
    use crate::source::tests::write_shard;
    use std::fs::OpenOptions;
    use std::os::unix::fs::FileExt;

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

    pub(crate) fn f32_bytes(values: &[f32]) -> Vec<u8> {
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
