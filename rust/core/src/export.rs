//! Raw export: each requested tensor as a `.npy` file of its own, streamed by the same engine as
//! `pack`.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::engine::{last_reads, resolve, Progress, Target, TensorRequest, TensorWriter, WriteSummary};
use crate::error::{Error, Result};
use crate::fs::{open_for_lock, try_lock};
use crate::npy;
use crate::output::ensure_free_space;

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
    let lock = open_for_lock(dir).map_err(|e| Error::io(dir, "cannot open", e))?;
    try_lock(&lock);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::pack::tests::{f32_bytes, item, pack, request};
    use crate::source::tests::write_shard;

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
}
