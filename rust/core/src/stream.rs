//! Packs written from shards that arrive as byte streams (ranged reads from the Hub) instead of
//! files. The packs are planned from the shards' headers alone, exactly as `pack` plans them
//! (same checks, same layout, so the same bytes); then each shard's data arrives in order, in
//! pieces of any size, and every piece goes straight to where it belongs in the packs: copied,
//! or converted in whole elements (whole blocks for a quantized dtype), the few bytes of an
//! element cut by a piece's end held back until the next piece completes it. Nothing of a shard
//! is stored; memory is the pieces in flight and one conversion chunk per shard.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use crate::burnpack::PackLayout;
use crate::cast::Converter;
use crate::dtype::DType;
use crate::engine::{locate, ShardView, WriteSummary, CONVERT_CHUNK};
use crate::error::{Error, Result};
use crate::output::AtomicFile;
use crate::pack::{layout, PackRequest};
use crate::quant;
use crate::source::{parse_safetensors_head, SourceTensor};

/// A safetensors file known by its header and size alone: its data is still to come.
#[derive(Debug, Clone)]
pub struct RemoteShard {
    /// Names the shard in errors and in the requests' `source`.
    pub path: PathBuf,
    pub size: u64,
    /// Where the tensor data begins (8 + the header's length).
    pub data_start: u64,
    pub tensors: Vec<SourceTensor>,
    pub metadata: Vec<(String, String)>,
}

impl RemoteShard {
    /// Parses and checks the header at the start of a file of `size` bytes (see
    /// `parse_safetensors_head`); `head` holds the 8-byte length and the header.
    pub fn parse(path: &Path, head: &[u8], size: u64) -> Result<RemoteShard> {
        let (tensors, metadata) = parse_safetensors_head(path, head, size)?;
        let header_len = u64::from_le_bytes(head[..8].try_into().expect("checked by the parse"));
        Ok(RemoteShard {
            path: path.to_path_buf(),
            size,
            data_start: 8 + header_len,
            tensors,
            metadata,
        })
    }
}

/// One source tensor's bytes and the place in a pack they go to.
struct Segment {
    /// The tensor's bytes in the shard file.
    start: u64,
    end: u64,
    output: usize,
    /// Absolute offset of the tensor in the output file.
    target: u64,
    from: DType,
    to: DType,
    elements: u64,
    /// Conversion only: elements written so far, and the bytes of the next whole unit (element
    /// or block) received so far.
    done: u64,
    carry: Vec<u8>,
    converter: Option<Converter>,
}

impl Segment {
    /// Source bytes of the smallest run that converts on its own: an element, or a block.
    fn unit_bytes(&self) -> u64 {
        quant::chunk_elements(self.from, self.to, 0) * self.from.size()
    }
}

/// A shard's progress: the next byte it expects and its segments, by start.
struct ShardState {
    path: PathBuf,
    next: u64,
    size: u64,
    segments: Vec<Segment>,
    values: Vec<u8>,
    scales: Vec<u8>,
}

/// Packs staged for streamed shards: fed each shard's bytes in order (`feed`, from several
/// threads at once, one per shard), then checked complete and flushed (`finish`).
pub struct StreamedPacks {
    outputs: Vec<AtomicFile>,
    layouts: Vec<PackLayout>,
    shards: Vec<Mutex<ShardState>>,
    index: HashMap<PathBuf, usize>,
    /// Per output: bytes copied unchanged, bytes produced by conversion (known from the plan).
    copied: Vec<u64>,
    converted: Vec<u64>,
    plan_seconds: f64,
    /// When staging ended and the data could begin to arrive.
    staged: Instant,
}

impl StreamedPacks {
    /// Plans every pack from the shards' headers (each request's `source` is one of `shards`'
    /// paths), creates and sizes every output file and writes its header. Nothing is in place
    /// until `finish` hands the files back to be committed.
    pub fn stage(requests: &[PackRequest], shards: Vec<RemoteShard>) -> Result<StreamedPacks> {
        let started = Instant::now();
        let index: HashMap<PathBuf, usize> = shards.iter().enumerate().map(|(i, s)| (s.path.clone(), i)).collect();
        let views: Vec<ShardView> = shards
            .iter()
            .map(|s| (s.path.as_path(), false, s.tensors.as_slice()))
            .collect();
        let mut segments: Vec<Vec<Segment>> = shards.iter().map(|_| Vec::new()).collect();
        let (mut outputs, mut layouts) = (Vec::new(), Vec::new());
        let (mut copied, mut converted) = (Vec::new(), Vec::new());
        for (output, request) in requests.iter().enumerate() {
            let located = locate(&request.items, &index, &views)?;
            let found: Vec<_> = located
                .iter()
                .map(|&(s, t, from)| (s, &shards[s].tensors[t], from))
                .collect();
            let layout = layout(request, found.iter().map(|(_, tensor, _)| &tensor.shape))?;
            let (mut copy_bytes, mut convert_bytes) = (0, 0);
            for ((item, &(s, tensor, from)), plan) in request.items.iter().zip(&found).zip(&layout.tensors) {
                if from == item.dtype {
                    copy_bytes += plan.byte_len();
                } else {
                    convert_bytes += plan.byte_len();
                }
                let segment = Segment {
                    start: tensor.file_offset,
                    end: tensor.file_offset + tensor.byte_len,
                    output,
                    target: layout.data_start + plan.start,
                    from,
                    to: item.dtype,
                    elements: tensor.shape.iter().product(),
                    done: 0,
                    carry: Vec::new(),
                    converter: (!from.same_bytes(item.dtype)).then(|| Converter::new(from, item.dtype)),
                };
                if segment.converter.is_some() && tensor.byte_len % segment.unit_bytes() != 0 {
                    return Err(Error::source_tensor(
                        &item.source,
                        &item.key,
                        format!("{} elements do not make whole {} blocks", segment.elements, item.dtype),
                    ));
                }
                segments[s].push(segment); // an empty tensor's segment takes an empty piece: nothing
            }
            let out = AtomicFile::create(&request.output, layout.file_size, request.overwrite)?;
            out.write_at(&layout.preamble(), 0)?;
            outputs.push(out);
            layouts.push(layout);
            copied.push(copy_bytes);
            converted.push(convert_bytes);
        }
        let shards = shards
            .into_iter()
            .zip(segments)
            .map(|(shard, mut segments)| {
                segments.sort_by_key(|s| s.start);
                Mutex::new(ShardState {
                    path: shard.path,
                    next: shard.data_start,
                    size: shard.size,
                    segments,
                    values: Vec::new(),
                    scales: Vec::new(),
                })
            })
            .collect();
        Ok(StreamedPacks {
            outputs,
            layouts,
            shards,
            index,
            copied,
            converted,
            plan_seconds: started.elapsed().as_secs_f64(),
            staged: Instant::now(),
        })
    }

    /// The shard's index for `feed`, by the path it was staged under.
    pub fn shard_index(&self, path: &Path) -> Result<usize> {
        self.index
            .get(path)
            .copied()
            .ok_or_else(|| Error::source(path, "not among the shards being streamed"))
    }

    /// Takes the shard's bytes at `offset`, which must be where the last piece ended (the data
    /// start for the first): writes every tensor byte in it to its packs.
    pub fn feed(&self, shard: usize, offset: u64, bytes: &[u8]) -> Result<()> {
        let mut state = self.shards[shard].lock().expect("a feed panicked");
        let state = &mut *state;
        if offset != state.next {
            return Err(Error::source(
                &state.path,
                format!(
                    "bytes at offset {offset} arrived while offset {} was expected",
                    state.next
                ),
            ));
        }
        let end = offset + bytes.len() as u64;
        if end > state.size {
            return Err(Error::source(
                &state.path,
                format!("bytes up to offset {end} arrived for a file of {} bytes", state.size),
            ));
        }
        // Every segment, in order: a few hundred per shard, against pieces of megabytes.
        for segment in &mut state.segments {
            if segment.end <= offset {
                continue; // complete before this piece
            }
            if segment.start >= end {
                break; // after it, as every later one
            }
            let (lo, hi) = (segment.start.max(offset), segment.end.min(end));
            let piece = &bytes[(lo - offset) as usize..(hi - offset) as usize];
            let out = &self.outputs[segment.output];
            if segment.converter.is_none() {
                out.write_at(piece, segment.target + (lo - segment.start))?;
            } else {
                take(segment, piece, out, &mut state.values, &mut state.scales)?;
            }
        }
        state.next = end;
        Ok(())
    }

    /// Checks that every shard arrived whole, flushes every pack to disk, and hands back each
    /// one's summary and staged file, in the order of the requests.
    pub fn finish(self) -> Result<Vec<(WriteSummary, AtomicFile)>> {
        for state in &self.shards {
            let state = state.lock().expect("a feed panicked");
            if state.next != state.size {
                return Err(Error::source(
                    &state.path,
                    format!("only {} of its {} bytes arrived", state.next, state.size),
                ));
            }
        }
        let data_seconds = self.staged.elapsed().as_secs_f64();
        let mut done = Vec::with_capacity(self.outputs.len());
        for (i, (out, layout)) in self.outputs.into_iter().zip(&self.layouts).enumerate() {
            let synced = Instant::now();
            out.sync()?;
            let summary = WriteSummary {
                file_size: layout.file_size,
                tensors: layout.tensors.len(),
                data_bytes: layout.tensors.iter().map(|t| t.byte_len()).sum(),
                kernel_copied: 0,
                buffer_copied: self.copied[i],
                converted: self.converted[i],
                plan_seconds: self.plan_seconds,
                data_seconds,
                sync_seconds: synced.elapsed().as_secs_f64(),
            };
            done.push((summary, out));
        }
        Ok(done)
    }
}

/// Converts what `piece` completes of a segment: the held-back unit first, then whole units in
/// chunks, holding back what is left of a unit for the next piece.
fn take(
    segment: &mut Segment,
    mut piece: &[u8],
    out: &AtomicFile,
    values: &mut Vec<u8>,
    scales: &mut Vec<u8>,
) -> Result<()> {
    let unit = segment.unit_bytes() as usize;
    if !segment.carry.is_empty() {
        let wanted = (unit - segment.carry.len()).min(piece.len());
        segment.carry.extend_from_slice(&piece[..wanted]);
        piece = &piece[wanted..];
        if segment.carry.len() < unit {
            return Ok(());
        }
        let carry = std::mem::take(&mut segment.carry);
        convert_run(segment, &carry, out, values, scales)?;
    }
    let chunk = (quant::chunk_elements(segment.from, segment.to, CONVERT_CHUNK) * segment.from.size()) as usize;
    let whole = piece.len() / unit * unit;
    for run in piece[..whole].chunks(chunk) {
        convert_run(segment, run, out, values, scales)?;
    }
    segment.carry.extend_from_slice(&piece[whole..]);
    Ok(())
}

/// Converts whole units of a segment's source bytes and writes them where they lie in the pack.
fn convert_run(
    segment: &mut Segment,
    src: &[u8],
    out: &AtomicFile,
    values: &mut Vec<u8>,
    scales: &mut Vec<u8>,
) -> Result<()> {
    let count = src.len() as u64 / segment.from.size();
    let (dst, dst_scales) = quant::element_ranges(segment.to, segment.elements, segment.done, count);
    values.clear();
    scales.clear();
    segment
        .converter
        .as_mut()
        .expect("only conversions carry")
        .run(src, &[], values, scales); // a safetensors source has no scales: never quantized
    out.write_at(values, segment.target + dst.start)?;
    if let Some(dst_scales) = dst_scales {
        out.write_at(scales, segment.target + dst_scales.start)?;
    }
    segment.done += count;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::burnpack::BurnTarget;
    use crate::dtype::QuantStore;
    use crate::pack::pack_staged;
    use crate::pack::tests::{f32_bytes, item, request};
    use crate::source::tests::write_shard;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        // Spread over magnitudes, signs and fractions so that casts and block scales differ.
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 20011) as f32 / 997.0 - 10.0)
            .collect()
    }

    /// The shard's file, then what `stage` needs: its header alone and its size.
    fn remote(path: &Path) -> (Vec<u8>, RemoteShard) {
        let bytes = std::fs::read(path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let shard = RemoteShard::parse(path, &bytes[..8 + n], bytes.len() as u64).unwrap();
        (bytes, shard)
    }

    #[test]
    fn streamed_packs_equal_packed_ones_whatever_the_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
        write_shard(
            &a,
            &[
                ("w", "F32", vec![3, 64], f32_bytes(&values(192, 1))),
                ("empty", "F32", vec![0, 4], vec![]),
                ("q", "F32", vec![2, 96], f32_bytes(&values(192, 2))),
            ],
        );
        write_shard(&b, &[("h", "F32", vec![5, 7], f32_bytes(&values(35, 3)))]);
        let items = |out: &str| {
            let mut r = request(
                vec![
                    item("w", &a, "w", DType::F32),
                    item("w.bf16", &a, "w", DType::BF16),
                    item("empty", &a, "empty", DType::F32),
                    item("q", &a, "q", DType::Q8S(32, QuantStore::PackedU32)),
                    item("h", &b, "h", DType::F16),
                ],
                dir.path().join(out),
            );
            r.target = BurnTarget::V0_22;
            r
        };
        let expected = {
            let (_, staged) = pack_staged(&items("packed.bpk"), &mut |_| true).unwrap();
            staged.commit().unwrap();
            std::fs::read(dir.path().join("packed.bpk")).unwrap()
        };
        for (round, pieces) in [vec![1usize], vec![3, 7, 1], vec![5000], vec![2, 13, 64, 4]]
            .iter()
            .enumerate()
        {
            let out = format!("streamed{round}.bpk");
            let (bytes_a, shard_a) = remote(&a);
            let (bytes_b, shard_b) = remote(&b);
            let starts = [shard_a.data_start, shard_b.data_start];
            let packs = StreamedPacks::stage(&[items(&out)], vec![shard_a, shard_b]).unwrap();
            for (s, bytes) in [&bytes_a, &bytes_b].into_iter().enumerate() {
                let mut offset = starts[s] as usize;
                for k in 0.. {
                    if offset == bytes.len() {
                        break;
                    }
                    let end = (offset + pieces[k % pieces.len()]).min(bytes.len());
                    packs.feed(s, offset as u64, &bytes[offset..end]).unwrap();
                    offset = end;
                }
            }
            let done = packs.finish().unwrap();
            assert_eq!(done.len(), 1);
            let summary = &done[0].0;
            // Copied: w (192 f32). Converted: w.bf16 (192 x 2), q (192 i8 + 6 f32 scales), h (35 x 2).
            assert_eq!((summary.tensors, summary.buffer_copied), (5, 192 * 4));
            assert_eq!(summary.converted, 192 * 2 + (192 + 6 * 4) + 35 * 2);
            for (_, staged) in done {
                staged.commit().unwrap();
            }
            assert!(
                std::fs::read(dir.path().join(&out)).unwrap() == expected,
                "pieces {pieces:?}"
            );
        }
    }

    /// A piece larger than a conversion chunk (8 MiB of f32) is converted in several runs, each
    /// of whole blocks, written where it lies.
    #[test]
    fn a_piece_longer_than_a_conversion_chunk_converts_in_whole_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        let n = (3 << 20) + 96; // 12 MiB of f32, in blocks of 32
        write_shard(&a, &[("big", "F32", vec![n as u64 / 32, 32], f32_bytes(&values(n, 7)))]);
        let items = |out: &str| {
            let mut r = request(
                vec![
                    item("q", &a, "big", DType::Q8S(32, QuantStore::PackedU32)),
                    item("h", &a, "big", DType::BF16),
                ],
                dir.path().join(out),
            );
            r.target = BurnTarget::V0_22;
            r
        };
        let (_, staged) = pack_staged(&items("packed.bpk"), &mut |_| true).unwrap();
        staged.commit().unwrap();
        let (bytes, shard) = remote(&a);
        let start = shard.data_start;
        let packs = StreamedPacks::stage(&[items("streamed.bpk")], vec![shard]).unwrap();
        packs.feed(0, start, &bytes[start as usize..]).unwrap();
        for (_, staged) in packs.finish().unwrap() {
            staged.commit().unwrap();
        }
        let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
        assert!(read("streamed.bpk") == read("packed.bpk"));
    }

    #[test]
    fn refuses_bytes_out_of_order_past_the_end_or_missing() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        write_shard(&a, &[("w", "F32", vec![4], f32_bytes(&[1.0, 2.0, 3.0, 4.0]))]);
        let (bytes, shard) = remote(&a);
        let start = shard.data_start as usize;
        let other = dir.path().join("b.safetensors");
        write_shard(&other, &[("v", "F32", vec![1], f32_bytes(&[5.0]))]);
        let (_, other_shard) = remote(&other);
        let packs = StreamedPacks::stage(
            &[request(vec![item("w", &a, "w", DType::F32)], dir.path().join("o.bpk"))],
            vec![other_shard, shard],
        )
        .unwrap();
        assert_eq!(
            (packs.shard_index(&other).unwrap(), packs.shard_index(&a).unwrap()),
            (0, 1)
        );
        let err = packs
            .shard_index(&dir.path().join("c.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not among the shards being streamed"), "{err}");
        let other_start = packs.shards[0].lock().unwrap().next;
        packs.feed(0, other_start, &5.0f32.to_le_bytes()).unwrap();
        let err = packs
            .feed(1, start as u64 + 4, &bytes[start + 4..])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "offset {} arrived while offset {start} was expected",
                start + 4
            )),
            "{err}"
        );
        let err = packs.feed(1, start as u64, &[0; 17]).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "up to offset {} arrived for a file of {}",
                start + 17,
                bytes.len()
            )),
            "{err}"
        );
        packs.feed(1, start as u64, &bytes[start..start + 8]).unwrap();
        let err = packs.finish().err().unwrap().to_string();
        assert!(
            err.contains(&format!("only {} of its {} bytes arrived", start + 8, bytes.len())),
            "{err}"
        );
        assert!(!dir.path().join("o.bpk").exists());
    }

    #[test]
    fn a_head_parses_as_its_whole_file_and_is_checked_against_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        write_shard(
            &a,
            &[
                ("x", "F32", vec![2], f32_bytes(&[1.0, 2.0])),
                ("y", "BF16", vec![3], vec![0; 6]),
            ],
        );
        let (bytes, shard) = remote(&a);
        let whole = crate::source::parse_safetensors(&a, &bytes).unwrap();
        assert_eq!((shard.tensors.clone(), shard.metadata.clone()), whole);
        assert_eq!(shard.data_start, bytes.len() as u64 - 14);
        let head = &bytes[..shard.data_start as usize];
        let err = RemoteShard::parse(&a, head, bytes.len() as u64 + 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("file size does not match the end of the last tensor"),
            "{err}"
        );
        let err = RemoteShard::parse(&a, head, bytes.len() as u64 - 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("run past the end of the data"), "{err}");
        let err = RemoteShard::parse(&a, &head[..head.len() - 1], bytes.len() as u64)
            .unwrap_err()
            .to_string();
        assert!(err.contains("of the header's"), "{err}");
        let err = RemoteShard::parse(&a, head, 20).unwrap_err().to_string();
        assert!(err.contains("does not fit in the file of 20 bytes"), "{err}");
        // A header one byte longer than the file can hold; the size or the head under 8 bytes.
        let too_long = shard.data_start - 1;
        let err = RemoteShard::parse(&a, head, too_long).unwrap_err().to_string();
        assert!(
            err.contains(&format!("does not fit in the file of {too_long} bytes")),
            "{err}"
        );
        for (head, size) in [(&head[..5], 1000), (head, 4)] {
            let err = RemoteShard::parse(&a, head, size).unwrap_err().to_string();
            assert!(err.contains("shorter than the 8-byte header length"), "{err}");
        }
    }

    #[test]
    fn a_head_may_run_past_its_header_and_the_length_is_bounded_as_safetensors_bounds_it() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        // No tensors: the file ends with its header, so its length is exactly the file's size - 8.
        write_shard(&a, &[]);
        let bytes = std::fs::read(&a).unwrap();
        let mut head = bytes.clone();
        head.extend_from_slice(b"what came after");
        let shard = RemoteShard::parse(&a, &head, bytes.len() as u64).unwrap();
        assert_eq!((shard.data_start, shard.tensors.len()), (bytes.len() as u64, 0));
        // The safetensors crate's bound: a length of 100,000,000 is read (here: not at hand), one
        // more is refused before anything is read.
        for (n, expected) in [
            (100_000_000u64, "of the header's 100000000 bytes are at hand"),
            (100_000_001, "does not fit"),
        ] {
            let err = RemoteShard::parse(&a, &n.to_le_bytes(), 1 << 40)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{n}: {err}");
        }
    }
}
