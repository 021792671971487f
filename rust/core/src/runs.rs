//! One tensor converted run by run: the single loop behind packing from mapped shards, packing
//! from streamed bytes, and verifying a pack against its sources. A run is whole elements (whole
//! blocks where either side is quantized) of about `CONVERT_CHUNK` bytes of f32, so memory is
//! one run whatever the tensor; each comes with the byte ranges it takes in the source and in
//! the target (see `quant::element_ranges`).

use std::ops::Range;

use crate::cast::Converter;
use crate::dtype::DType;
use crate::quant;

/// Bytes of f32 per run: small enough that progress and Ctrl-C are seen several times a second
/// and memory stays a few runs, large enough that per-run overhead does not show.
pub const CONVERT_CHUNK: u64 = 8 << 20;

/// The buffers runs reuse, run after run and tensor after tensor: one per thread converting.
#[derive(Default)]
pub struct Scratch {
    converter: Converter,
    values: Vec<u8>,
    scales: Vec<u8>,
}

/// One run: elements `first..first + count` of the tensor, as the target stores them.
#[derive(Debug)]
pub struct Run<'a> {
    pub first: u64,
    pub count: u64,
    /// Where the run's values lie in the source's bytes (a quantized source's scales are read
    /// too, from their own region).
    pub source: Range<u64>,
    /// The run in the target dtype: its values, and the scales of its blocks (empty unless the
    /// target is quantized), with where each lies in the target's bytes.
    pub values: &'a [u8],
    pub scales: &'a [u8],
    pub target: Range<u64>,
    pub target_scales: Option<Range<u64>>,
}

/// A tensor of `elements` values converted from `from` to `to`, run by run, in order. The same
/// bytes (identity, or either store of one quantized dtype) pass through unconverted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRuns {
    from: DType,
    to: DType,
    elements: u64,
    /// Elements already converted.
    done: u64,
}

impl TensorRuns {
    pub fn new(from: DType, to: DType, elements: u64) -> TensorRuns {
        TensorRuns {
            from,
            to,
            elements,
            done: 0,
        }
    }

    /// Whether the bytes change (else the tensor can be copied as it is).
    pub fn converts(&self) -> bool {
        !self.from.same_bytes(self.to)
    }

    /// Source bytes of the smallest run that converts on its own: an element, or a block.
    pub fn unit_bytes(&self) -> u64 {
        quant::chunk_elements(self.from, self.to, 0) * self.from.size()
    }

    /// Source bytes of a full run.
    pub fn run_bytes(&self) -> u64 {
        quant::chunk_elements(self.from, self.to, CONVERT_CHUNK) * self.from.size()
    }

    /// Takes up after the first `source_bytes` of the source's values, whole units, converted
    /// by an earlier run of the program.
    pub fn resume_after(&mut self, source_bytes: u64) {
        debug_assert!(source_bytes.is_multiple_of(self.unit_bytes()));
        self.done = source_bytes / self.from.size();
    }

    /// The next run of a tensor whose stored bytes (values, then a quantized dtype's scales) are
    /// all in `source`; None once every element has been converted.
    pub fn next<'a>(&mut self, source: &'a [u8], scratch: &'a mut Scratch) -> Option<Run<'a>> {
        if self.done >= self.elements {
            return None;
        }
        let count = (self.elements - self.done).min(quant::chunk_elements(self.from, self.to, CONVERT_CHUNK));
        let (values, scales) = quant::element_ranges(self.from, self.elements, self.done, count);
        let bytes = |r: &Range<u64>| &source[r.start as usize..r.end as usize];
        Some(self.convert(
            count,
            bytes(&values),
            scales.as_ref().map_or(&[][..], bytes),
            values,
            scratch,
        ))
    }

    /// The next run, given its values' bytes (whole units): the pieces of a streamed source,
    /// which is never quantized.
    pub fn next_of<'a>(&mut self, values: &'a [u8], scratch: &'a mut Scratch) -> Run<'a> {
        debug_assert!(!self.from.is_quantized() && (values.len() as u64).is_multiple_of(self.unit_bytes()));
        let (size, start) = (self.from.size(), self.done * self.from.size());
        self.convert(
            values.len() as u64 / size,
            values,
            &[],
            start..start + values.len() as u64,
            scratch,
        )
    }

    fn convert<'a>(
        &mut self,
        count: u64,
        values: &'a [u8],
        scales: &'a [u8],
        source: Range<u64>,
        scratch: &'a mut Scratch,
    ) -> Run<'a> {
        let first = self.done;
        let (target, target_scales) = quant::element_ranges(self.to, self.elements, first, count);
        self.done += count;
        debug_assert!(
            self.done > first || count == 0,
            "a run that does not advance would repeat forever"
        );
        let (values, scales) = if self.converts() {
            let Scratch {
                converter,
                values: out,
                scales: out_scales,
            } = scratch;
            out.clear();
            out_scales.clear();
            converter.run(self.from, self.to, values, scales, out, out_scales);
            (&out[..], &out_scales[..])
        } else {
            (values, scales)
        };
        Run {
            first,
            count,
            source,
            values,
            scales,
            target,
            target_scales,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cast::convert;
    use crate::dtype::QuantStore;

    fn bf16(values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect()
    }

    /// Three runs and a half of BF16 widened to F32: each run's ranges are hand-computed from
    /// the run length, and the runs joined are the whole tensor converted at once.
    #[test]
    fn runs_cover_the_tensor_in_order_and_join_to_the_whole_conversion() {
        let step = CONVERT_CHUNK / 4; // elements per run: 8 MiB of f32
        let elements = step * 3 + step / 2;
        let floats: Vec<f32> = (0..elements).map(|i| (i % 1000) as f32 - 500.0).collect();
        let source = bf16(&floats);
        let mut whole = Vec::new();
        convert(&source, DType::BF16, DType::F32, &mut whole);

        let mut runs = TensorRuns::new(DType::BF16, DType::F32, elements);
        assert!(runs.converts());
        assert_eq!((runs.unit_bytes(), runs.run_bytes()), (2, step * 2));
        let mut scratch = Scratch::default();
        let mut joined = Vec::new();
        let mut seen = Vec::new();
        while let Some(run) = runs.next(&source, &mut scratch) {
            seen.push((
                run.first,
                run.count,
                run.source.clone(),
                run.target.clone(),
                run.target_scales.clone(),
            ));
            joined.extend_from_slice(run.values);
            assert!(run.scales.is_empty());
        }
        let want = vec![
            (0, step, 0..2 * step, 0..4 * step, None),
            (step, step, 2 * step..4 * step, 4 * step..8 * step, None),
            (2 * step, step, 4 * step..6 * step, 8 * step..12 * step, None),
            (3 * step, step / 2, 6 * step..7 * step, 12 * step..14 * step, None),
        ];
        assert_eq!(seen, want);
        assert_eq!(joined, whole);
        assert!(runs.next(&source, &mut scratch).is_none());
    }

    /// Quantizing with blocks of 48 (runs of whole blocks, the last one short): each run's values
    /// and scales land at the ranges Burn's layout gives them, and joined they are the whole
    /// tensor quantized at once. Back from the pack, a quantized source's scales are read from
    /// their own region.
    #[test]
    fn quantized_runs_are_whole_blocks_with_their_scales_where_the_layout_puts_them() {
        let q = DType::Q8S(48, QuantStore::PackedU32);
        let step = quant::chunk_elements(DType::F32, q, CONVERT_CHUNK);
        assert_eq!(step % 48, 0);
        let elements = step * 2 + 96;
        let floats: Vec<f32> = (0..elements)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 7.0)
            .collect();
        let source: Vec<u8> = floats.iter().flat_map(|v| v.to_le_bytes()).collect();
        let (mut values, mut scales) = (Vec::new(), Vec::new());
        quant::quantize(&floats, 48, &mut values, &mut scales);
        let mut packed = vec![0u8; (elements + elements / 48 * 4) as usize];

        let mut runs = TensorRuns::new(DType::F32, q, elements);
        let mut scratch = Scratch::default();
        let mut count = 0;
        while let Some(run) = runs.next(&source, &mut scratch) {
            let scales_at = run.target_scales.clone().unwrap();
            assert_eq!(run.target, run.first..run.first + run.count);
            assert_eq!(
                scales_at,
                elements + run.first / 48 * 4..elements + (run.first + run.count) / 48 * 4
            );
            packed[run.target.start as usize..run.target.end as usize].copy_from_slice(run.values);
            packed[scales_at.start as usize..scales_at.end as usize].copy_from_slice(run.scales);
            count += 1;
        }
        assert_eq!(count, 3);
        assert_eq!(&packed[..elements as usize], &values[..]);
        assert_eq!(&packed[elements as usize..], &scales[..]);

        // And back: the packed tensor as a source, dequantized run by run to F32.
        let mut back = TensorRuns::new(q, DType::F32, elements);
        let mut dequantized = Vec::new();
        while let Some(run) = back.next(&packed, &mut scratch) {
            dequantized.extend_from_slice(run.values);
        }
        let mut want = Vec::new();
        quant::dequantize(&values, &scales, 48, &mut want);
        let want: Vec<u8> = want.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(dequantized, want);
    }

    /// The same bytes pass through as the source's own slices; pieces fed one unit-aligned slice
    /// at a time continue where the last ended, also after `resume_after`.
    #[test]
    fn identity_passes_through_and_pieces_continue_where_the_last_ended() {
        let source: Vec<u8> = (0..40u8).collect();
        let mut same = TensorRuns::new(DType::F32, DType::F32, 10);
        assert!(!same.converts());
        let mut scratch = Scratch::default();
        let run = same.next(&source, &mut scratch).unwrap();
        assert_eq!((run.values, run.target.clone()), (&source[..], 0..40));

        let floats = [1.0f32, -2.5, 3.25, 65504.0, -0.0, 7.0];
        let source = bf16(&floats);
        let mut whole = Vec::new();
        convert(&source, DType::BF16, DType::F32, &mut whole);
        let mut pieces = TensorRuns::new(DType::BF16, DType::F32, 6);
        let first = pieces.next_of(&source[..4], &mut scratch);
        assert_eq!((first.source.clone(), first.target.clone()), (0..4, 0..8));
        assert_eq!(first.values, &whole[..8]);
        let mut resumed = TensorRuns::new(DType::BF16, DType::F32, 6);
        resumed.resume_after(6);
        let rest = resumed.next_of(&source[6..], &mut scratch);
        assert_eq!(
            (rest.first, rest.count, rest.source.clone(), rest.target.clone()),
            (3, 3, 6..12, 12..24)
        );
        assert_eq!(rest.values, &whole[12..]);
    }
}
