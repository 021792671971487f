//! Writing tensors back out as a safetensors file (for `unpack`), streamed like a pack and atomic.

use std::collections::BTreeMap;
use std::path::Path;

use crate::dtype::DType;
use crate::engine::{resolve, write_tensors, Progress, TensorRequest, WriteSummary};
use crate::error::{Error, Result};
use crate::output::AtomicFile;

/// The safetensors header's name for a plain dtype.
pub fn safetensors_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::Bool => "BOOL",
        other => other.plain_name(),
    }
}

/// Writes `items` (in order) as one safetensors file with `metadata` as its `__metadata__`.
/// Dtypes stay as they are, except that quantized tensors are dequantized to F32 (safetensors
/// has no quantized dtypes; the values are the ones Burn reads back).
pub fn write_safetensors(
    items: &[TensorRequest],
    output: &Path,
    metadata: &BTreeMap<String, String>,
    overwrite: bool,
    progress: &mut dyn FnMut(Progress) -> bool,
) -> Result<WriteSummary> {
    let resolved = resolve(items)?;
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).expect("strings serialize"),
        );
    }
    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(items.len());
    for (item, &(s, t, source_dtype)) in items.iter().zip(&resolved.locations) {
        let dequantized = source_dtype.is_quantized() && item.dtype == DType::F32;
        if item.dtype != source_dtype && !dequantized || item.dtype.is_quantized() {
            return Err(Error::output(
                output,
                format!(
                    "tensor '{}': unpacking keeps dtypes and turns quantized ones into F32, not {source_dtype} into {}",
                    item.name, item.dtype
                ),
            ));
        }
        let tensor = &resolved.shards[s].tensors[t];
        let len = item
            .dtype
            .byte_len(&tensor.shape)
            .map_err(|why| Error::output(output, why))?;
        let entry = serde_json::json!({
            "dtype": safetensors_dtype(item.dtype),
            "shape": tensor.shape,
            "data_offsets": [offset, offset + len],
        });
        if header.insert(item.name.clone(), entry).is_some() || item.name == "__metadata__" {
            return Err(Error::output(
                output,
                format!("tensor '{}' cannot be written twice or under that name", item.name),
            ));
        }
        offsets.push(offset);
        offset += len;
    }
    let mut text = serde_json::to_vec(&header).expect("JSON serializes");
    text.resize(text.len().div_ceil(8) * 8, b' '); // as the safetensors library pads its header
    let data_start = 8 + text.len() as u64;
    let out = AtomicFile::create(output, data_start + offset, overwrite)?;
    let mut preamble = (text.len() as u64).to_le_bytes().to_vec();
    preamble.extend_from_slice(&text);
    out.write_at(&preamble, 0)?;
    let targets: Vec<u64> = offsets.iter().map(|o| data_start + o).collect();
    let summary = write_tensors(items, &resolved, &out.file, output, &targets, progress)?;
    out.commit()?;
    Ok(WriteSummary {
        file_size: data_start + offset,
        ..summary
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{tests::write_shard, Shard};

    #[test]
    fn written_files_parse_with_the_safetensors_crate() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        write_shard(
            &a,
            &[
                ("x", "BOOL", vec![3], vec![1, 0, 1]),
                ("y", "BF16", vec![2], vec![1, 2, 3, 4]),
            ],
        );
        let item = |name: &str, dtype| TensorRequest {
            name: format!("out.{name}"),
            ..crate::pack::tests::item(name, &a, name, dtype)
        };
        let out = dir.path().join("b.safetensors");
        let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        write_safetensors(
            &[item("y", DType::BF16), item("x", DType::Bool)],
            &out,
            &metadata,
            false,
            &mut |_| true,
        )
        .unwrap();
        let shard = Shard::open(&out).unwrap();
        let names: Vec<_> = shard.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["out.y", "out.x"]);
        assert_eq!(shard.bytes(&shard.tensors[1]), &[1, 0, 1]);
        assert_eq!(shard.metadata, vec![("format".to_string(), "pt".to_string())]);
    }

    #[test]
    fn the_file_is_as_long_as_its_header_and_data_and_names_are_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        // More data than header: a size computed as header minus data would not fit in a u64.
        write_shard(
            &a,
            &[
                ("big", "U8", vec![1000], vec![9; 1000]),
                ("t", "U8", vec![2], vec![1, 2]),
            ],
        );
        let out = dir.path().join("b.safetensors");
        let items = [
            crate::pack::tests::item("big", &a, "big", DType::U8),
            crate::pack::tests::item("t", &a, "t", DType::U8),
        ];
        let summary = write_safetensors(&items, &out, &BTreeMap::new(), false, &mut |_| true).unwrap();
        let written = std::fs::read(&out).unwrap();
        let header_len = u64::from_le_bytes(written[..8].try_into().unwrap());
        assert_eq!(header_len % 8, 0, "padded as the safetensors library pads it");
        assert_eq!(written.len() as u64, 8 + header_len + 1002);
        assert_eq!(summary.file_size, written.len() as u64);
        assert_eq!(&written[written.len() - 2..], &[1, 2]);

        for (names, what) in [(["t", "t"], "'t'"), (["__metadata__", "t"], "'__metadata__'")] {
            let items = names.map(|name| TensorRequest {
                name: name.into(),
                ..crate::pack::tests::item("t", &a, "t", DType::U8)
            });
            let out = dir.path().join("c.safetensors");
            let err = write_safetensors(&items, &out, &BTreeMap::new(), false, &mut |_| true)
                .expect_err("refused")
                .to_string();
            assert!(
                err.contains(&format!("tensor {what} cannot be written twice or under that name")),
                "{err}"
            );
            assert!(!out.exists());
        }
    }
}
