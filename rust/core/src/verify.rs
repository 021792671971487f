//! Verifying a pack: the container against the format (what Burn's reader checks, plus alignment
//! and zero padding), and every tensor against its source, bit for bit or against the exact cast.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::burnpack::{read_index, Layout, PackIndex, HEADER_SIZE, TENSOR_ALIGNMENT};
use crate::engine::{resolve, Progress, TensorRequest};
use crate::error::{Error, Result};
use crate::runs::{Scratch, TensorRuns};
use crate::source::Shard;

/// One thing wrong with a pack, tied to a tensor where there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub tensor: Option<String>,
    pub message: String,
}

impl Problem {
    fn tensor(name: &str, message: impl Into<String>) -> Self {
        Problem {
            tensor: Some(name.to_string()),
            message: message.into(),
        }
    }
}

fn read_range(file: &mut File, path: &Path, start: u64, len: u64) -> Result<Vec<u8>> {
    let mut buffer = vec![0u8; len as usize];
    file.seek(SeekFrom::Start(start))
        .map_err(|e| Error::io(path, "cannot seek", e))?;
    file.read_exact(&mut buffer)
        .map_err(|e| Error::io(path, "cannot read", e))?;
    Ok(buffer)
}

/// The bytes of `bytes` in `range`.
fn part(bytes: &[u8], range: std::ops::Range<u64>) -> &[u8] {
    &bytes[range.start as usize..range.end as usize]
}

/// The index of the first of `count` equal-sized elements at which `got` and `want` differ.
fn first_difference(got: &[u8], want: &[u8], count: u64) -> Option<u64> {
    let at = got.iter().zip(want).position(|(a, b)| a != b)? as u64;
    Some(at / (got.len() as u64 / count.max(1)).max(1))
}

/// Checks the container. Anything Burn's reader would reject is an `Err` (the pack cannot be
/// read at all); alignment and padding problems, which Burn tolerates, are listed.
pub fn check_container(path: &Path) -> Result<(PackIndex, Vec<Problem>)> {
    let index = read_index(path)?;
    let mut problems = Vec::new();
    let mut file = crate::fs::open_regular(path, crate::fs::Input::Pack)?;
    let metadata_end = HEADER_SIZE + index.metadata_size;
    if read_range(&mut file, path, metadata_end, index.data_start - metadata_end)?
        .iter()
        .any(|&b| b != 0)
    {
        problems.push(Problem {
            tensor: None,
            message: "padding after the metadata is not zero".into(),
        });
    }
    let mut previous_end = index.data_start;
    for t in &index.tensors {
        if index.layout == Layout::Aligned && t.file_offset % TENSOR_ALIGNMENT != 0 {
            problems.push(Problem::tensor(
                &t.name,
                format!("starts at {}, not on a 256-byte boundary", t.file_offset),
            ));
        }
        if t.file_offset > previous_end
            && read_range(&mut file, path, previous_end, t.file_offset - previous_end)?
                .iter()
                .any(|&b| b != 0)
        {
            problems.push(Problem::tensor(&t.name, "padding before this tensor is not zero"));
        }
        previous_end = previous_end.max(t.file_offset + (t.end - t.start));
    }
    Ok((index, problems))
}

/// Compares every tensor of the pack with its source. `items` name the pack tensors (`name`),
/// their sources (`source`, `key`) and the dtype the pack must hold (`dtype`): bytes must equal
/// the source's, or the exact cast of them. Memory stays bounded: both sides are streamed.
pub fn verify_against(
    pack_path: &Path,
    items: &[TensorRequest],
    progress: &mut dyn FnMut(Progress) -> bool,
) -> Result<Vec<Problem>> {
    let pack = Shard::open(pack_path)?;
    let sources = resolve(items)?;
    let mut problems = Vec::new();
    let by_name: std::collections::HashMap<&str, usize> = pack
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let total: u64 = items
        .iter()
        .filter_map(|item| by_name.get(item.name.as_str()).map(|&i| pack.tensors[i].byte_len))
        .sum();
    let mut done = 0u64;
    let mut scratch = Scratch::default();
    for (item, &(s, t, source_dtype)) in items.iter().zip(&sources.locations) {
        let Some(&p) = by_name.get(item.name.as_str()) else {
            problems.push(Problem::tensor(&item.name, "missing from the pack"));
            continue;
        };
        let packed = &pack.tensors[p];
        let source = &sources.shards[s].tensors[t];
        let packed_dtype = packed.dtype.expect("pack dtypes are Burn dtypes");
        if packed_dtype != item.dtype {
            problems.push(Problem::tensor(
                &item.name,
                format!("dtype {packed_dtype}, expected {}", item.dtype),
            ));
            continue;
        }
        if packed.shape != source.shape {
            problems.push(Problem::tensor(
                &item.name,
                format!("shape {:?}, the source has {:?}", packed.shape, source.shape),
            ));
            continue;
        }
        crate::guard::protect(); // our SIGBUS handler, not one installed since, sees the reads
        let got = pack.bytes(packed);
        let src = sources.shards[s].bytes(source);
        let mut runs = TensorRuns::new(source_dtype, packed_dtype, source.shape.iter().product());
        while let Some(run) = runs.next(src, &mut scratch) {
            let got_values = part(got, run.target.clone());
            let got_scales = run.target_scales.clone().map_or(&[][..], |r| part(got, r));
            // Both maps were read: a fault in either means these bytes were zeros, not the file's.
            pack.check(Some(packed)).map_err(Error::of_pack)?;
            sources.shards[s].check(Some(source))?;
            if got_values != run.values || got_scales != run.scales {
                let how = if source_dtype.same_bytes(packed_dtype) {
                    "differs from"
                } else if packed_dtype.is_quantized() {
                    "is not the exact quantization of"
                } else {
                    "is not the exact cast of"
                };
                let what = match first_difference(got_values, run.values, run.count) {
                    Some(at) => format!("element {}", run.first + at),
                    None => {
                        let block = packed_dtype.block().unwrap_or(1) as u64;
                        let at = first_difference(got_scales, run.scales, run.count / block).unwrap_or(0);
                        format!(
                            "the scale of block {} (elements from {})",
                            run.first / block + at,
                            run.first + at * block
                        )
                    }
                };
                problems.push(Problem::tensor(
                    &item.name,
                    format!("{what} {how} {}:{}", sources.shards[s].path.display(), source.name),
                ));
                break;
            }
            done += (got_values.len() + got_scales.len()) as u64;
            if !progress(Progress { done, total }) {
                return Err(Error::Cancelled);
            }
        }
    }
    // Bytes compared from a file that changed meanwhile prove nothing either way.
    pack.check_unchanged().map_err(Error::of_pack)?;
    for shard in &sources.shards {
        shard.check_unchanged()?;
    }
    let wanted: std::collections::HashSet<&str> = items.iter().map(|i| i.name.as_str()).collect();
    for t in &pack.tensors {
        if !wanted.contains(t.name.as_str()) {
            problems.push(Problem::tensor(&t.name, "in the pack but not in the source"));
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::burnpack::BurnTarget;
    use crate::dtype::DType;
    use crate::pack::tests::pack;
    use crate::pack::PackRequest;
    use crate::source::tests::write_shard;
    use std::os::unix::fs::FileExt;

    fn setup(dir: &Path) -> (PackRequest, Vec<TensorRequest>) {
        let a = dir.join("a.safetensors");
        let w: Vec<u8> = (0..24u32).flat_map(|i| (i as f32 * 0.37).to_le_bytes()).collect();
        write_shard(&a, &[("w", "F32", vec![4, 6], w), ("b", "U8", vec![3], vec![1, 2, 3])]);
        let item = |name: &str, dtype| crate::pack::tests::item(name, &a, name, dtype);
        let items = vec![item("w", DType::BF16), item("b", DType::U8)];
        let request = crate::pack::tests::request(items.clone(), dir.join("p.bpk"));
        (request, items)
    }

    #[test]
    fn a_good_pack_verifies_and_a_flipped_bit_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let (request, items) = setup(dir.path());
        pack(&request, &mut |_| true).unwrap();
        assert_eq!(check_container(&request.output).unwrap().1, vec![]);
        assert_eq!(verify_against(&request.output, &items, &mut |_| true).unwrap(), vec![]);

        let index = read_index(&request.output).unwrap();
        let w = index.tensors.iter().find(|t| t.name == "w").unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .read(true)
            .open(&request.output)
            .unwrap();
        let mut byte = [0u8];
        f.read_exact_at(&mut byte, w.file_offset + 11).unwrap();
        f.write_all_at(&[byte[0] ^ 0x10], w.file_offset + 11).unwrap();
        let problems = verify_against(&request.output, &items, &mut |_| true).unwrap();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].tensor.as_deref(), Some("w"));
        assert!(
            problems[0].message.starts_with("element 5 is not the exact cast of"),
            "{:?}",
            problems[0]
        );
    }

    #[test]
    fn a_tensor_past_one_chunk_is_compared_chunk_by_chunk_to_its_last_element() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        let elements = (8u64 << 20) / 4 + 5; // F32: one 8 MiB chunk of source bytes and 5 elements more
        let w: Vec<u8> = (0..elements)
            .flat_map(|i| ((i % 1000) as f32 * 0.25).to_le_bytes())
            .collect();
        write_shard(&a, &[("w", "F32", vec![elements], w)]);
        let items = vec![crate::pack::tests::item("w", &a, "w", DType::BF16)];
        let request = crate::pack::tests::request(items.clone(), dir.path().join("p.bpk"));
        pack(&request, &mut |_| true).unwrap();
        let mut seen = Vec::new();
        let problems = verify_against(&request.output, &items, &mut |p| {
            seen.push((p.done, p.total));
            true
        })
        .unwrap();
        assert_eq!(problems, vec![]);
        let total = elements * 2;
        assert_eq!(seen, vec![((8 << 20) / 4 * 2, total), (total, total)]);

        let index = read_index(&request.output).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&request.output).unwrap();
        f.write_all_at(&[0x7f, 0x7f], index.tensors[0].file_offset + (elements - 1) * 2)
            .unwrap();
        let problems = verify_against(&request.output, &items, &mut |_| true).unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        let expected = format!("element {} is not the exact cast of {}:w", elements - 1, a.display());
        assert_eq!(problems[0].message, expected);
    }

    #[test]
    fn dirty_padding_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (request, _) = setup(dir.path());
        pack(&request, &mut |_| true).unwrap();
        let index = read_index(&request.output).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&request.output).unwrap();
        f.write_all_at(&[7], index.data_start - 1).unwrap();
        let second = &index.tensors[1];
        f.write_all_at(&[7], second.file_offset - 1).unwrap();
        let problems = check_container(&request.output).unwrap().1;
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[1].tensor.as_deref(), Some(second.name.as_str()));
    }

    #[test]
    fn padding_is_checked_after_each_tensor_and_alignment_only_where_the_layout_has_it() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        // Three tensors of 3 bytes: each later one starts past padding that follows the one before.
        write_shard(
            &a,
            &[
                ("x", "U8", vec![3], vec![1; 3]),
                ("y", "U8", vec![3], vec![2; 3]),
                ("z", "U8", vec![3], vec![3; 3]),
            ],
        );
        let items: Vec<TensorRequest> = ["x", "y", "z"]
            .iter()
            .map(|n| crate::pack::tests::item(n, &a, n, DType::U8))
            .collect();
        let request = |target, name: &str| PackRequest {
            target,
            ..crate::pack::tests::request(items.clone(), dir.path().join(name))
        };
        let aligned = request(BurnTarget::V0_21, "aligned.bpk");
        pack(&aligned, &mut |_| true).unwrap();
        let index = read_index(&aligned.output).unwrap();
        let z = &index.tensors[2];
        let f = std::fs::OpenOptions::new().write(true).open(&aligned.output).unwrap();
        f.write_all_at(&[7], z.file_offset - 1).unwrap(); // between y's last byte and z
        let problems = check_container(&aligned.output).unwrap().1;
        assert_eq!(
            problems,
            vec![Problem::tensor("z", "padding before this tensor is not zero")]
        );

        // Burn 0.19 packs tensors back to back: offsets off the 256-byte grid are no problem there.
        let packed = request(BurnTarget::V0_19, "packed.bpk");
        pack(&packed, &mut |_| true).unwrap();
        let (index, problems) = check_container(&packed.output).unwrap();
        assert_eq!(index.tensors[1].file_offset, index.tensors[0].file_offset + 3);
        assert_eq!(problems, vec![]);
    }

    /// A pack of the aligned layout's exact size whose second tensor starts off the 256-byte grid
    /// (Burn reads it; a 0.20+ writer never makes it): the container check names that tensor.
    #[test]
    fn a_tensor_off_the_grid_of_an_aligned_pack_is_reported() {
        use crate::burnpack::{align_up, encode_metadata, PackLayout};
        let dir = tempfile::tempdir().unwrap();
        let plan = || {
            let specs = vec![
                ("x".to_string(), DType::U8, vec![3], None),
                ("y".to_string(), DType::U8, vec![3], None),
            ];
            PackLayout::plan(specs, Default::default(), BurnTarget::V0_22, Path::new("p.bpk")).unwrap()
        };
        let mut layout = plan();
        assert_eq!((layout.tensors[1].start, layout.tensors[1].end), (256, 259));
        layout.tensors[1].start = 5;
        layout.tensors[1].end = 8;
        layout.cbor = encode_metadata(&layout.tensors, &layout.metadata, BurnTarget::V0_22).unwrap();
        layout.data_start = align_up(HEADER_SIZE + layout.cbor.len() as u64, TENSOR_ALIGNMENT);
        let mut bytes = layout.preamble();
        bytes.extend([1, 2, 3, 0, 0, 4, 5, 6]);
        let path = dir.path().join("p.bpk");
        std::fs::write(&path, &bytes).unwrap();

        let (index, problems) = check_container(&path).unwrap();
        assert_eq!(index.layout, Layout::Aligned);
        let message = format!("starts at {}, not on a 256-byte boundary", layout.data_start + 5);
        assert_eq!(problems, vec![Problem::tensor("y", message)]);

        // The same tensors on the grid: no problem.
        let good = plan();
        let mut bytes = good.preamble();
        bytes.resize(good.file_size as usize, 0);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(check_container(&path).unwrap().1, vec![]);
    }
}
