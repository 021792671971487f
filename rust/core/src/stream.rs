//! Packs written from shards that arrive as byte streams (ranged reads from the Hub) instead of
//! files. The packs are planned from the shards' headers alone, exactly as `pack` plans them
//! (same checks, same layout, so the same bytes); then each shard's data arrives in order, in
//! pieces of any size, and every piece goes straight to where it belongs in the packs: copied,
//! or converted in whole elements (whole blocks for a quantized dtype), the few bytes of an
//! element cut by a piece's end held back until the next piece completes it. Nothing of a shard
//! is stored; memory is the pieces in flight and one conversion chunk per shard. Every byte of a
//! shard, its header included, is hashed (SHA-256) in order, to be checked against the Hub's.
//!
//! Staged with a journal (`Resume`), the packs are resumable partials that outlive the run:
//! `checkpoint` records how far each shard reached once the bytes are on disk, `suspend` keeps
//! everything for the next run, and the next run with the same plan continues each shard from
//! where its journal says, its hash from the state saved there (see `journal`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::burnpack::PackLayout;
use crate::engine::{locate, ShardView, WriteSummary};
use crate::error::{Error, Result};
use crate::journal::{self, ShardProgress};
use crate::output::{resume_path, AtomicFile};
use crate::pack::{layout, PackRequest};
use crate::runs::{Scratch, TensorRuns};
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
    /// The file's first `data_start` bytes: the 8-byte length and the header.
    pub head: Vec<u8>,
    /// The SHA-256 (lowercase hex) the whole file must have, when known (`expecting`).
    pub sha256: Option<String>,
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
            head: head[..(8 + header_len) as usize].to_vec(),
            sha256: None,
        })
    }

    /// The shard, whose bytes `finish` checks against `sha256` (hex, any case).
    pub fn expecting(mut self, sha256: &str) -> RemoteShard {
        self.sha256 = Some(sha256.to_ascii_lowercase());
        self
    }
}

/// Where a resumable stream keeps its journal (its packs' partials lie beside their outputs).
#[derive(Debug, Clone)]
pub struct Resume {
    pub journal: PathBuf,
    /// Start over: whatever an earlier run left is discarded unread.
    pub fresh: bool,
}

/// One source tensor's bytes and the place in a pack they go to.
struct Segment {
    /// The tensor's bytes in the shard file.
    start: u64,
    end: u64,
    output: usize,
    /// Absolute offset of the tensor in the output file.
    target: u64,
    /// The conversion, run by run (a copy when it `converts` nothing), and the bytes of the next
    /// whole unit (element or block) received so far.
    runs: TensorRuns,
    carry: Vec<u8>,
}

impl Segment {
    /// The bytes before `next` that a conversion holds back, a unit not yet whole (a copy holds none).
    fn held(&self, next: u64) -> u64 {
        let written = next.clamp(self.start, self.end) - self.start;
        if self.runs.converts() {
            written % self.runs.unit_bytes()
        } else {
            0
        }
    }
}

/// A shard's progress: the next byte it expects, the hash of every byte before it, and its
/// segments, by start.
struct ShardState {
    path: PathBuf,
    next: u64,
    size: u64,
    data_start: u64,
    hasher: Sha256,
    expected: Option<String>,
    segments: Vec<Segment>,
    /// One set of conversion buffers for the shard: its segments convert one after another.
    scratch: Scratch,
}

impl ShardState {
    /// Whether `progress` fits this shard: `next` within its data, and the bytes held back
    /// exactly as many as the unit `next` cuts holds (none when it cuts none).
    fn fits(&self, progress: &ShardProgress) -> bool {
        let held: u64 = self.segments.iter().map(|s| s.held(progress.next)).sum();
        (self.data_start..=self.size).contains(&progress.next) && held == progress.carry.len() as u64
    }

    /// Takes up from `progress`, which `fits`: every segment before `next` complete, the one it
    /// cuts holding back the journaled bytes.
    fn restore(&mut self, progress: ShardProgress) {
        let next = progress.next;
        let mut carry = Some(progress.carry);
        for segment in &mut self.segments {
            let held = segment.held(next);
            if segment.runs.converts() {
                let whole_units = next.clamp(segment.start, segment.end) - segment.start - held;
                segment.runs.resume_after(whole_units);
            }
            segment.carry = if held > 0 {
                carry.take().unwrap_or_default()
            } else {
                Vec::new()
            };
        }
        self.next = next;
        self.hasher = progress.hasher;
    }

    fn progress(&self) -> ShardProgress {
        let held = self.segments.iter().find(|s| !s.carry.is_empty());
        ShardProgress {
            next: self.next,
            hasher: self.hasher.clone(),
            carry: held.map(|s| s.carry.clone()).unwrap_or_default(),
        }
    }
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
    /// Resumable: the journal and the fingerprint of this plan.
    journal: Option<(PathBuf, String)>,
    /// What became of an earlier run's partial, for the user (None: there was none to speak of).
    resumed: Option<String>,
}

impl StreamedPacks {
    /// Plans every pack from the shards' headers (each request's `source` is one of `shards`'
    /// paths), creates and sizes every output file and writes its header. Nothing is in place
    /// until `finish` hands the files back to be committed. With `resume`, the files are the
    /// resumable partials, and an earlier run's are continued when its journal fits this plan
    /// (`resume_offset`, `resumed`); otherwise they start over.
    pub fn stage(requests: &[PackRequest], shards: Vec<RemoteShard>, resume: Option<&Resume>) -> Result<StreamedPacks> {
        let started = Instant::now();
        let index: HashMap<PathBuf, usize> = shards.iter().enumerate().map(|(i, s)| (s.path.clone(), i)).collect();
        let views: Vec<ShardView> = shards
            .iter()
            .map(|s| (s.path.as_path(), false, s.tensors.as_slice()))
            .collect();
        let mut segments: Vec<Vec<Segment>> = shards.iter().map(|_| Vec::new()).collect();
        let mut layouts = Vec::new();
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
                let elements = tensor.shape.iter().product();
                let segment = Segment {
                    start: tensor.file_offset,
                    end: tensor.file_offset + tensor.byte_len,
                    output,
                    target: layout.data_start + plan.start,
                    runs: TensorRuns::new(from, item.dtype, elements),
                    carry: Vec::new(),
                };
                if segment.runs.converts() && tensor.byte_len % segment.runs.unit_bytes() != 0 {
                    return Err(Error::source_tensor(
                        &item.source,
                        &item.key,
                        format!("{elements} elements do not make whole {} blocks", item.dtype),
                    ));
                }
                segments[s].push(segment); // an empty tensor's segment takes an empty piece: nothing
            }
            layouts.push(layout);
            copied.push(copy_bytes);
            converted.push(convert_bytes);
        }
        let fingerprint = fingerprint(requests, &layouts, &shards);
        let mut states: Vec<ShardState> = shards
            .into_iter()
            .zip(segments)
            .map(|(shard, mut segments)| {
                segments.sort_by_key(|s| s.start);
                ShardState {
                    path: shard.path,
                    next: shard.data_start,
                    size: shard.size,
                    data_start: shard.data_start,
                    hasher: Sha256::new_with_prefix(&shard.head),
                    expected: shard.sha256,
                    segments,
                    scratch: Scratch::default(),
                }
            })
            .collect();
        let (outputs, resumed) = match resume {
            None => (create_outputs(requests, &layouts)?, None),
            Some(resume) => open_resumable(requests, &layouts, &mut states, resume, &fingerprint)?,
        };
        Ok(StreamedPacks {
            outputs,
            layouts,
            shards: states.into_iter().map(Mutex::new).collect(),
            index,
            copied,
            converted,
            plan_seconds: started.elapsed().as_secs_f64(),
            staged: Instant::now(),
            journal: resume.map(|r| (r.journal.clone(), fingerprint)),
            resumed,
        })
    }

    /// Where the shard's data is to be fetched from: its data start, or where an earlier run's
    /// journal says it reached.
    pub fn resume_offset(&self, shard: usize) -> u64 {
        self.shards[shard].lock().expect("a feed panicked").next
    }

    /// What became of an earlier run's partial (continued, or discarded and why), if there was one.
    pub fn resumed(&self) -> Option<&str> {
        self.resumed.as_deref()
    }

    /// The SHA-256 (lowercase hex) of the shard's bytes received so far, its header included.
    pub fn sha256(&self, shard: usize) -> String {
        let state = self.shards[shard].lock().expect("a feed panicked");
        journal::to_hex(&state.hasher.clone().finalize())
    }

    /// Resumable packs: puts on disk every byte fed so far, then the journal that says so.
    /// Feeding may go on meanwhile. Returns the bytes of the shards the journal covers.
    pub fn checkpoint(&self) -> Result<u64> {
        let Some((path, fingerprint)) = &self.journal else {
            return Ok(0);
        };
        let progress: Vec<ShardProgress> = self
            .shards
            .iter()
            .map(|s| s.lock().expect("a feed panicked").progress())
            .collect();
        for out in &self.outputs {
            out.sync()?; // the bytes the journal is about to cover, before it says so
        }
        journal::write(path, fingerprint, &progress)?;
        Ok(progress.iter().map(|p| p.next).sum())
    }

    /// Ends a resumable run before its end: the journal written (`checkpoint`), the partials left
    /// for the next run. Without a journal, the same as `discard`.
    pub fn suspend(self) -> Result<u64> {
        if self.journal.is_none() {
            self.discard()?;
            return Ok(0);
        }
        let kept = self.checkpoint()?;
        for out in self.outputs {
            out.keep();
        }
        Ok(kept)
    }

    /// Deletes the partials and the journal: the destinations stay as they were.
    pub fn discard(self) -> Result<()> {
        if let Some((path, _)) = &self.journal {
            journal::remove(path)?;
        }
        Ok(()) // the outputs delete themselves as they drop
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
        state.hasher.update(bytes);
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
            if segment.runs.converts() {
                take(segment, piece, out, &mut state.scratch)?;
            } else {
                out.write_at(piece, segment.target + (lo - segment.start))?;
            }
        }
        state.next = end;
        Ok(())
    }

    /// Checks that every shard arrived whole, with the SHA-256 it should have, flushes every pack
    /// to disk, and hands back each one's summary and staged file, in the order of the requests.
    /// The journal goes: the files are complete.
    pub fn finish(self) -> Result<Vec<(WriteSummary, AtomicFile)>> {
        for state in &self.shards {
            let state = state.lock().expect("a feed panicked");
            if state.next != state.size {
                return Err(Error::source(
                    &state.path,
                    format!("only {} of its {} bytes arrived", state.next, state.size),
                ));
            }
            let got = journal::to_hex(&state.hasher.clone().finalize());
            if let Some(expected) = state.expected.as_ref().filter(|e| **e != got) {
                return Err(Error::source(
                    &state.path,
                    format!("the bytes received have sha256 {got}, not {expected}"),
                ));
            }
        }
        if let Some((path, _)) = &self.journal {
            journal::remove(path)?;
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

/// Creates every output's temp file, sized, with its header written.
fn create_outputs(requests: &[PackRequest], layouts: &[PackLayout]) -> Result<Vec<AtomicFile>> {
    let mut outputs = Vec::with_capacity(requests.len());
    for (request, layout) in requests.iter().zip(layouts) {
        let out = AtomicFile::create(&request.output, layout.file_size, request.overwrite)?;
        out.write_at(&layout.preamble(), 0)?;
        outputs.push(out);
    }
    Ok(outputs)
}

/// Opens every output's resumable partial and takes up where the journal says when it fits this
/// plan; otherwise every partial starts over and the journal goes before a byte is written.
/// Returns the files and, when an earlier run left something, what became of it.
fn open_resumable(
    requests: &[PackRequest],
    layouts: &[PackLayout],
    states: &mut [ShardState],
    resume: &Resume,
    fingerprint: &str,
) -> Result<(Vec<AtomicFile>, Option<String>)> {
    let left_before = resume.journal.exists()
        || requests
            .iter()
            .any(|r| resume_path(&r.output).is_ok_and(|p| p.symlink_metadata().is_ok()));
    let mut outputs = Vec::with_capacity(requests.len());
    let mut reused = true;
    for (request, layout) in requests.iter().zip(layouts) {
        let (out, kept) = AtomicFile::resumable(&request.output, layout.file_size, request.overwrite, !resume.fresh)?;
        reused &= kept;
        outputs.push(out);
    }
    let journaled = if resume.fresh {
        Err("--fresh".to_string())
    } else {
        journal::read(&resume.journal, fingerprint, states.len())
    };
    let outcome = match journaled {
        Ok(_) if !reused => Err("its partial packs are missing or of another size".to_string()),
        Ok(progress) if states.iter().zip(&progress).all(|(s, p)| s.fits(p)) => {
            for (state, p) in states.iter_mut().zip(progress) {
                state.restore(p);
            }
            Ok(())
        }
        Ok(_) => Err("its journal does not fit its shards".to_string()),
        Err(reason) => Err(reason),
    };
    let note = match &outcome {
        Ok(()) => {
            let (kept, total): (u64, u64) = states.iter().fold((0, 0), |(k, t), s| (k + s.next, t + s.size));
            Some(format!(
                "continuing an interrupted run: {kept} of {total} shard bytes are already in its partial packs"
            ))
        }
        Err(_) if !left_before => None,
        Err(reason) if resume.fresh => Some(format!("{reason}: an earlier run's partial packs are discarded")),
        Err(reason) => Some(format!(
            "an earlier run's partial packs are discarded, starting over: {reason}"
        )),
    };
    if outcome.is_err() {
        journal::remove(&resume.journal)?; // never again paired with the bytes about to change
        if reused {
            for (out, layout) in outputs.iter().zip(layouts) {
                out.empty(layout.file_size)?; // no byte of the earlier run may stay (padding included)
            }
        }
    }
    for (out, layout) in outputs.iter().zip(layouts) {
        out.write_at(&layout.preamble(), 0)?;
    }
    Ok((outputs, note))
}

/// What a journal must match to be continued: every pack's layout and output, every item's
/// source, and every shard's path (its commit), size, header and digest.
fn fingerprint(requests: &[PackRequest], layouts: &[PackLayout], shards: &[RemoteShard]) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    for (request, layout) in requests.iter().zip(layouts) {
        field(request.output.as_os_str().as_encoded_bytes());
        field(&layout.preamble());
        for item in &request.items {
            field(item.source.as_os_str().as_encoded_bytes());
            field(item.key.as_bytes());
            field(item.dtype.to_string().as_bytes());
        }
    }
    for shard in shards {
        field(shard.path.as_os_str().as_encoded_bytes());
        field(&shard.size.to_le_bytes());
        field(&shard.head);
        field(shard.sha256.as_deref().unwrap_or("").as_bytes());
    }
    journal::to_hex(&hasher.finalize())
}

/// Converts what `piece` completes of a segment: the held-back unit first, then whole units in
/// runs, holding back what is left of a unit for the next piece.
fn take(segment: &mut Segment, mut piece: &[u8], out: &AtomicFile, scratch: &mut Scratch) -> Result<()> {
    let unit = segment.runs.unit_bytes() as usize;
    if !segment.carry.is_empty() {
        let wanted = (unit - segment.carry.len()).min(piece.len());
        segment.carry.extend_from_slice(&piece[..wanted]);
        piece = &piece[wanted..];
        if segment.carry.len() < unit {
            return Ok(());
        }
        let carry = std::mem::take(&mut segment.carry);
        write_run(segment, &carry, out, scratch)?;
    }
    let whole = piece.len() / unit * unit;
    for run in piece[..whole].chunks(segment.runs.run_bytes() as usize) {
        write_run(segment, run, out, scratch)?;
    }
    segment.carry.extend_from_slice(&piece[whole..]);
    Ok(())
}

/// Converts whole units of a segment's source bytes and writes them where they lie in the pack.
fn write_run(segment: &mut Segment, values: &[u8], out: &AtomicFile, scratch: &mut Scratch) -> Result<()> {
    let run = segment.runs.next_of(values, scratch);
    out.write_at(run.values, segment.target + run.target.start)?;
    if let Some(scales) = run.target_scales {
        out.write_at(run.scales, segment.target + scales.start)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::burnpack::BurnTarget;
    use crate::dtype::{DType, QuantStore};
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
            let packs = StreamedPacks::stage(&[items(&out)], vec![shard_a, shard_b], None).unwrap();
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
        let packs = StreamedPacks::stage(&[items("streamed.bpk")], vec![shard], None).unwrap();
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
            None,
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

    /// Two shards whose tensors go to one pack copied, cast and quantized (units of 2, 4 and 128
    /// bytes that pieces cut), the pack `pack` writes from them, and the request for `out`.
    struct ResumeCase {
        dir: tempfile::TempDir,
        shards: Vec<(PathBuf, Vec<u8>)>,
        expected: Vec<u8>,
    }

    impl ResumeCase {
        fn new() -> ResumeCase {
            let dir = tempfile::tempdir().unwrap();
            let (a, b) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
            write_shard(
                &a,
                &[
                    ("w", "F32", vec![3, 64], f32_bytes(&values(192, 1))),
                    ("q", "F32", vec![40, 96], f32_bytes(&values(3840, 2))),
                ],
            );
            write_shard(&b, &[("h", "F32", vec![50, 7], f32_bytes(&values(350, 3)))]);
            let mut case = ResumeCase {
                dir,
                shards: vec![],
                expected: vec![],
            };
            let (_, staged) = pack_staged(&case.request("packed.bpk"), &mut |_| true).unwrap();
            staged.commit().unwrap();
            case.expected = std::fs::read(case.dir.path().join("packed.bpk")).unwrap();
            case.shards = [a, b]
                .into_iter()
                .map(|p| (p.clone(), std::fs::read(p).unwrap()))
                .collect();
            case
        }

        fn request(&self, out: &str) -> PackRequest {
            let (a, b) = (
                self.dir.path().join("a.safetensors"),
                self.dir.path().join("b.safetensors"),
            );
            let mut r = request(
                vec![
                    item("w", &a, "w", DType::F32),
                    item("w.bf16", &a, "w", DType::BF16),
                    item("q", &a, "q", DType::Q8S(32, QuantStore::PackedU32)),
                    item("h", &b, "h", DType::F16),
                ],
                self.dir.path().join(out),
            );
            r.target = BurnTarget::V0_22;
            r
        }

        fn resume(&self, fresh: bool) -> Resume {
            Resume {
                journal: self.dir.path().join(".out.bpk.journal"),
                fresh,
            }
        }

        /// The packs staged for `out`, each shard expecting its real digest.
        fn stage(&self, request: PackRequest, resume: Option<&Resume>) -> Result<StreamedPacks> {
            let shards = self
                .shards
                .iter()
                .map(|(path, bytes)| {
                    let (_, shard) = remote(path);
                    shard.expecting(&journal::to_hex(&Sha256::digest(bytes)))
                })
                .collect();
            StreamedPacks::stage(&[request], shards, resume)
        }

        /// Feeds each shard from where the packs expect it up to `fraction` of its bytes (all
        /// of them for 1.0), in pieces of 1, 13 and 77 bytes: units cut everywhere.
        fn feed(&self, packs: &StreamedPacks, fraction: f64) {
            for (s, (_, bytes)) in self.shards.iter().enumerate() {
                let mut offset = packs.resume_offset(s) as usize;
                let stop = ((bytes.len() as f64 * fraction) as usize).max(offset);
                for k in 0.. {
                    if offset >= stop {
                        break;
                    }
                    let end = (offset + [1, 13, 77][k % 3]).min(stop);
                    packs.feed(s, offset as u64, &bytes[offset..end]).unwrap();
                    offset = end;
                }
            }
        }

        fn finish(&self, packs: StreamedPacks) -> Vec<u8> {
            for (_, staged) in packs.finish().unwrap() {
                staged.commit().unwrap();
            }
            std::fs::read(self.dir.path().join("out.bpk")).unwrap()
        }

        /// What a SIGKILL leaves: the partials as they are, no last journal.
        fn kill(packs: StreamedPacks) {
            packs.outputs.into_iter().for_each(AtomicFile::keep);
        }

        fn hidden(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect();
            names.sort();
            names
        }
    }

    #[test]
    fn a_suspended_stream_resumes_where_its_journal_says_to_the_same_bytes() {
        let case = ResumeCase::new();
        let resume = case.resume(false);
        let packs = case.stage(case.request("out.bpk"), Some(&resume)).unwrap();
        assert_eq!(packs.resumed(), None);
        case.feed(&packs, 0.4);
        packs.checkpoint().unwrap();
        let journaled: Vec<u64> = (0..2).map(|s| packs.resume_offset(s)).collect();
        case.feed(&packs, 0.6); // past the journal: fed again by the next run
        ResumeCase::kill(packs);
        assert_eq!(case.hidden(), [".out.bpk.journal", ".out.bpk.resume.heartmula-partial"]);
        let text = std::fs::read_to_string(&resume.journal).unwrap();
        let journal: serde_json::Value = serde_json::from_str(&text).unwrap();
        let held = journal["shards"][0]["carry"].as_str().unwrap().len() / 2;
        assert!(
            held > 0 && held < 128,
            "the journal holds back part of a q8 block: {held} bytes"
        );

        let packs = case.stage(case.request("out.bpk"), Some(&resume)).unwrap();
        let offsets: Vec<u64> = (0..2).map(|s| packs.resume_offset(s)).collect();
        assert_eq!(offsets, journaled);
        let sizes: Vec<usize> = case.shards.iter().map(|(_, b)| b.len()).collect();
        assert!(offsets[0] > sizes[0] as u64 / 3 && offsets[1] > sizes[1] as u64 / 3);
        assert_eq!(
            packs.resumed().unwrap(),
            format!(
                "continuing an interrupted run: {} of {} shard bytes are already in its partial packs",
                offsets[0] + offsets[1],
                sizes[0] + sizes[1]
            )
        );
        case.feed(&packs, 0.7);
        let fed: Vec<u64> = (0..2).map(|s| packs.resume_offset(s)).collect();
        assert_eq!(
            packs.suspend().unwrap(),
            fed.iter().sum::<u64>(),
            "suspended: all that was fed is kept"
        );
        let packs = case.stage(case.request("out.bpk"), Some(&resume)).unwrap();
        assert_eq!((0..2).map(|s| packs.resume_offset(s)).collect::<Vec<_>>(), fed);
        case.feed(&packs, 1.0);
        assert!(case.finish(packs) == case.expected);
        assert!(case.hidden().is_empty(), "{:?}", case.hidden());
    }

    #[test]
    fn a_journal_of_another_plan_or_none_or_fresh_starts_over() {
        let case = ResumeCase::new();
        let resume = case.resume(false);
        let start: Vec<u64> = case.shards.iter().map(|(p, _)| remote(p).1.data_start).collect();
        let suspended = |request: PackRequest| {
            let packs = case.stage(request, Some(&resume)).unwrap();
            case.feed(&packs, 0.5);
            packs.suspend().unwrap();
        };
        let mut other = case.request("out.bpk");
        other.items[3].dtype = DType::BF16;
        let starts = |packs: &StreamedPacks| (0..2).map(|s| packs.resume_offset(s)).collect::<Vec<_>>();
        let over = "an earlier run's partial packs are discarded, starting over: ";
        let partial = case.dir.path().join(".out.bpk.resume.heartmula-partial");
        for (before, fresh, note) in [
            (
                Some(other),
                false,
                format!("{over}it was made for other packs, options or shards"),
            ),
            (
                Some(case.request("out.bpk")),
                true,
                "--fresh: an earlier run's partial packs are discarded".into(),
            ),
            (None, false, format!("{over}it left no journal")),
            (
                Some(case.request("out.bpk")),
                false,
                format!("{over}its partial packs are missing or of another size"),
            ),
        ] {
            match before {
                Some(request) => suspended(request),
                None => {
                    let packs = case.stage(case.request("out.bpk"), Some(&resume)).unwrap();
                    case.feed(&packs, 0.5);
                    ResumeCase::kill(packs); // before any checkpoint
                }
            }
            if note.ends_with("of another size") {
                let len = std::fs::metadata(&partial).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&partial)
                    .unwrap()
                    .set_len(len - 1)
                    .unwrap();
            }
            let packs = case.stage(case.request("out.bpk"), Some(&case.resume(fresh))).unwrap();
            assert!(packs.resumed().unwrap().starts_with(&note), "{:?}", packs.resumed());
            assert_eq!(starts(&packs), start);
            case.feed(&packs, 1.0);
            assert!(case.finish(packs) == case.expected);
            std::fs::remove_file(case.dir.path().join("out.bpk")).unwrap();
        }
    }

    #[test]
    fn a_journal_where_no_unit_is_cut_is_continued() {
        let case = ResumeCase::new();
        let resume = case.resume(false);
        let packs = case.stage(case.request("out.bpk"), Some(&resume)).unwrap();
        let (_, bytes) = &case.shards[0];
        let start = packs.resume_offset(0) as usize;
        packs.feed(0, start as u64, &bytes[start..]).unwrap(); // one shard whole, the other not begun
        packs.checkpoint().unwrap();
        let offsets: Vec<u64> = (0..2).map(|s| packs.resume_offset(s)).collect();
        ResumeCase::kill(packs);
        let packs = case.stage(case.request("out.bpk"), Some(&resume)).unwrap();
        assert_eq!((0..2).map(|s| packs.resume_offset(s)).collect::<Vec<_>>(), offsets);
        assert!(
            packs.resumed().unwrap().starts_with("continuing"),
            "{:?}",
            packs.resumed()
        );
        case.feed(&packs, 1.0);
        assert!(case.finish(packs) == case.expected);
    }

    #[test]
    fn a_discarded_stream_leaves_neither_partial_nor_journal() {
        let case = ResumeCase::new();
        let resume = case.resume(false);
        let packs = case.stage(case.request("out.bpk"), Some(&resume)).unwrap();
        case.feed(&packs, 0.5);
        packs.checkpoint().unwrap();
        assert_eq!(case.hidden().len(), 2);
        packs.discard().unwrap();
        assert!(case.hidden().is_empty(), "{:?}", case.hidden());
    }

    #[test]
    fn a_journal_that_does_not_fit_its_shards_is_not_trusted() {
        let case = ResumeCase::new();
        let resume = case.resume(false);
        let packs = case.stage(case.request("out.bpk"), Some(&resume)).unwrap();
        case.feed(&packs, 0.5);
        packs.suspend().unwrap();
        let text = std::fs::read_to_string(&resume.journal).unwrap();
        let mut journal: serde_json::Value = serde_json::from_str(&text).unwrap();
        // The second shard one byte further on: the bytes held back no longer make the unit it
        // cuts. The first shard fits, and starts over all the same.
        let next = journal["shards"][1]["next"].as_u64().unwrap();
        journal["shards"][1]["next"] = (next + 1).into();
        std::fs::write(&resume.journal, journal.to_string()).unwrap();
        let packs = case.stage(case.request("out.bpk"), Some(&resume)).unwrap();
        assert!(
            packs.resumed().unwrap().contains("does not fit its shards"),
            "{:?}",
            packs.resumed()
        );
        for s in 0..2 {
            assert_eq!(packs.resume_offset(s), remote(&case.shards[s].0).1.data_start);
        }
        case.feed(&packs, 1.0);
        assert!(case.finish(packs) == case.expected);
    }

    #[test]
    fn bytes_that_do_not_hash_to_the_digest_are_refused_and_a_partial_is_locked() {
        let case = ResumeCase::new();
        let resume = case.resume(false);
        let packs = case.stage(case.request("out.bpk"), Some(&resume)).unwrap();
        let err = case
            .stage(case.request("out.bpk"), Some(&resume))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("another run is writing this output"), "{err}");
        let (path, bytes) = &case.shards[1];
        let mut altered = bytes.clone();
        *altered.last_mut().unwrap() ^= 1;
        case.feed(&packs, 1.0);
        assert_eq!(packs.sha256(1), journal::to_hex(&Sha256::digest(bytes)));
        drop(packs);
        let packs = case.stage(case.request("out.bpk"), None).unwrap();
        for (s, bytes) in [&case.shards[0].1, &altered].into_iter().enumerate() {
            let start = packs.resume_offset(s) as usize;
            packs.feed(s, start as u64, &bytes[start..]).unwrap();
        }
        let err = packs.finish().err().unwrap().to_string();
        assert!(
            err.starts_with(&format!("{}: the bytes received have sha256 ", path.display())),
            "{err}"
        );
        assert!(!case.dir.path().join("out.bpk").exists());
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
