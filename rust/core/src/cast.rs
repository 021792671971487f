//! Element conversions between float dtypes, on little-endian byte slices, and into and out of
//! quantized dtypes (see `quant`).
//!
//! Narrowing rounds to nearest, ties to even (as `torch.Tensor.to` does); NaN stays NaN and
//! values past the target's range become infinities (IEEE overflow). Widening is exact.
//! Quantizing goes through f32 (as Burn quantizes an f32 tensor); dequantizing gives f32 first.

use half::{bf16, f16};

use crate::dtype::DType;
use crate::quant;

/// Whether `from` can be converted to `to` (identity included): between floats, from a float to
/// a quantized dtype and back, between the two stores of one quantized dtype (the same bytes),
/// never between other quantized dtypes or to or from integers.
pub fn supported(from: DType, to: DType) -> bool {
    let floating = |d: DType| d.is_float() || d.is_quantized();
    from.same_bytes(to) || (floating(from) && floating(to) && !(from.is_quantized() && to.is_quantized()))
}

/// Whether converting `from` to `to` keeps every value exactly: the same bytes (identity, or one
/// quantized dtype under either store), or a float widened to a float that holds all of its
/// values (F16 and BF16 into F32 or F64, F32 into F64). F16 and BF16 each hold values the other
/// does not, and quantizing rounds.
pub fn exact(from: DType, to: DType) -> bool {
    use DType::{BF16, F16, F32, F64};
    from.same_bytes(to) || matches!((from, to), (F16 | BF16, F32 | F64) | (F32, F64))
}

/// Converts runs of whole elements (whole blocks, where either side is quantized), keeping its
/// scratch buffers between calls, so that tensor after tensor converts in bounded, reused memory.
#[derive(Default)]
pub struct Converter {
    floats: Vec<f32>,
    bytes: Vec<u8>,
}

impl Converter {
    /// Converts one run from `from` to `to`: `src` holds its values and, for a quantized source,
    /// `src_scales` the scales of their blocks (else empty). Appends the values to `dst` and, for
    /// a quantized target, the scales to `dst_scales`.
    pub fn run(
        &mut self,
        from: DType,
        to: DType,
        src: &[u8],
        src_scales: &[u8],
        dst: &mut Vec<u8>,
        dst_scales: &mut Vec<u8>,
    ) {
        debug_assert!(supported(from, to) && !from.same_bytes(to));
        match (from, to) {
            (DType::Q8S(block, _), to) => {
                self.floats.clear();
                quant::dequantize(src, src_scales, block as usize, &mut self.floats);
                if to == DType::F32 {
                    dst.extend(self.floats.iter().flat_map(|v| v.to_le_bytes()));
                } else {
                    self.bytes.clear();
                    self.bytes.extend(self.floats.iter().flat_map(|v| v.to_le_bytes()));
                    convert(&self.bytes, DType::F32, to, dst);
                }
            }
            (from, DType::Q8S(block, _)) => {
                let f32_bytes = if from == DType::F32 {
                    src
                } else {
                    self.bytes.clear();
                    convert(src, from, DType::F32, &mut self.bytes);
                    &self.bytes
                };
                self.floats.clear();
                self.floats.resize(f32_bytes.len() / 4, 0.0);
                for (value, bytes) in self.floats.iter_mut().zip(f32_bytes.chunks_exact(4)) {
                    *value = f32::from_le_bytes(bytes.try_into().unwrap());
                }
                quant::quantize(&self.floats, block as usize, dst, dst_scales);
            }
            (from, to) => convert(src, from, to, dst),
        }
    }
}

/// Converts whole elements of `src` (dtype `from`) and appends them to `dst` (dtype `to`).
/// `src.len()` must be a multiple of `from.size()`.
pub fn convert(src: &[u8], from: DType, to: DType, dst: &mut Vec<u8>) {
    debug_assert!(supported(from, to));
    debug_assert_eq!(src.len() as u64 % from.size(), 0);
    if from == to {
        dst.extend_from_slice(src);
        return;
    }
    dst.reserve(src.len() / from.size() as usize * to.size() as usize);
    // The common narrowing (F32 checkpoints packed as BF16 or F16): straight into the output,
    // one pass, in a loop the compiler vectorises.
    if from == DType::F32 && matches!(to, DType::BF16 | DType::F16) {
        let start = dst.len();
        dst.resize(start + src.len() / 2, 0);
        let out = dst[start..].chunks_exact_mut(2);
        let values = src.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap()));
        if to == DType::BF16 {
            out.zip(values)
                .for_each(|(o, v)| o.copy_from_slice(&f32_bits_to_bf16(v).to_le_bytes()));
        } else {
            out.zip(values)
                .for_each(|(o, v)| o.copy_from_slice(&f16::from_f32(f32::from_bits(v)).to_le_bytes()));
        }
        return;
    }
    // f64 sources round once: `half`'s own f64 conversions drop the low 32 mantissa bits before
    // rounding, so go through f32 with round-to-odd, which keeps the final rounding exact.
    if from == DType::F64 {
        let values = src.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()));
        match to {
            DType::F32 => values.for_each(|v| dst.extend_from_slice(&(v as f32).to_le_bytes())),
            DType::F16 => {
                values.for_each(|v| dst.extend_from_slice(&f16::from_f32(f64_to_f32_round_odd(v)).to_le_bytes()))
            }
            DType::BF16 => {
                values.for_each(|v| dst.extend_from_slice(&bf16::from_f32(f64_to_f32_round_odd(v)).to_le_bytes()))
            }
            _ => unreachable!("checked by supported()"),
        }
        return;
    }
    // Every other float source widens to f32 exactly, then rounds once to the target.
    let mut widened = Vec::with_capacity(src.len() / from.size() as usize);
    match from {
        DType::F32 => widened.extend(src.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()))),
        DType::F16 => widened.extend(src.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        DType::BF16 => widened.extend(src.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        _ => unreachable!("checked by supported()"),
    }
    match to {
        DType::F64 => widened
            .iter()
            .for_each(|&v| dst.extend_from_slice(&(v as f64).to_le_bytes())),
        DType::F32 => widened.iter().for_each(|&v| dst.extend_from_slice(&v.to_le_bytes())),
        DType::F16 => widened
            .iter()
            .for_each(|&v| dst.extend_from_slice(&f16::from_f32(v).to_le_bytes())),
        DType::BF16 => widened
            .iter()
            .for_each(|&v| dst.extend_from_slice(&bf16::from_f32(v).to_le_bytes())),
        _ => unreachable!("checked by supported()"),
    }
}

/// `bf16::from_f32` without branches on the value (so it vectorises): round to nearest, ties to
/// even, by adding 0x7FFF plus the lowest kept bit; NaN keeps its top payload bits and is quieted.
#[inline(always)]
fn f32_bits_to_bf16(x: u32) -> u16 {
    let rounded = (x.wrapping_add(0x7FFF + ((x >> 16) & 1)) >> 16) as u16;
    let nan = ((x >> 16) | 0x0040) as u16;
    if x & 0x7FFF_FFFF > 0x7F80_0000 {
        nan
    } else {
        rounded
    }
}

/// Rounds toward zero and sets the last bit when inexact ("round to odd"). A later round-to-nearest-even
/// to a format at least two bits narrower then equals a single direct rounding.
fn f64_to_f32_round_odd(v: f64) -> f32 {
    let nearest = v as f32;
    if !nearest.is_finite() || nearest as f64 == v {
        return nearest;
    }
    let mut bits = nearest.to_bits();
    if (nearest as f64).abs() > v.abs() {
        bits -= 1; // nearest rounded away from zero: step back to the truncated value
    }
    f32::from_bits(bits | 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::QuantStore;

    fn f32_to(to: DType, values: &[f32]) -> Vec<u8> {
        let src: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = Vec::new();
        convert(&src, DType::F32, to, &mut out);
        out
    }

    fn u16s(bytes: &[u8]) -> Vec<u16> {
        bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    }

    /// Every pair of float dtypes, on values every one of them holds exactly (1, -2.5, 0), against
    /// their IEEE bit patterns written by hand.
    #[test]
    fn every_float_pair_converts() {
        let bits: [(DType, Vec<u8>); 4] = [
            (
                DType::F64,
                [0x3FF0_0000_0000_0000u64, 0xC004_0000_0000_0000, 0]
                    .iter()
                    .flat_map(|b| b.to_le_bytes())
                    .collect(),
            ),
            (
                DType::F32,
                [0x3F80_0000u32, 0xC020_0000, 0]
                    .iter()
                    .flat_map(|b| b.to_le_bytes())
                    .collect(),
            ),
            (
                DType::F16,
                [0x3C00u16, 0xC100, 0].iter().flat_map(|b| b.to_le_bytes()).collect(),
            ),
            (
                DType::BF16,
                [0x3F80u16, 0xC020, 0].iter().flat_map(|b| b.to_le_bytes()).collect(),
            ),
        ];
        for (from, src) in &bits {
            for (to, expected) in &bits {
                let mut out = vec![0xAA]; // converted elements are appended after what is there
                convert(src, *from, *to, &mut out);
                assert_eq!(out[0], 0xAA);
                assert_eq!(&out[1..], &expected[..], "{from} to {to}");
            }
        }
    }

    #[test]
    fn f32_to_bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 is exactly half way between bf16 1.0 (0x3F80) and 1.0078125 (0x3F81): ties to even -> 0x3F80.
        // 1 + 3*2^-8 is half way between 0x3F81 and 0x3F82: ties to even -> 0x3F82.
        // 1 + 2^-8 + 2^-20 is above half way -> 0x3F81 (truncation would give 0x3F80).
        let v = [
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            1.0 + 2f32.powi(-8) + 2f32.powi(-20),
        ];
        assert_eq!(u16s(&f32_to(DType::BF16, &v)), [0x3F80, 0x3F82, 0x3F81]);
    }

    #[test]
    fn bf16_keeps_nan_and_overflows_to_infinity() {
        let out = u16s(&f32_to(DType::BF16, &[f32::NAN, f32::MAX, -f32::MAX, f32::INFINITY]));
        assert_eq!(out[0] & 0x7F80, 0x7F80);
        assert_ne!(out[0] & 0x007F, 0, "NaN payload must stay non-zero");
        assert_eq!(&out[1..], [0x7F80, 0xFF80, 0x7F80]);
    }

    #[test]
    fn f32_to_f16_rounds_and_overflows() {
        // 65520 is the half-way point above f16's max (65504) and rounds to infinity; 65519 rounds down.
        let out = u16s(&f32_to(DType::F16, &[65519.0, 65520.0, 1.0 + 2f32.powi(-11), f32::NAN]));
        assert_eq!(&out[..3], [0x7BFF, 0x7C00, 0x3C00]);
        assert!(out[3] & 0x7C00 == 0x7C00 && out[3] & 0x03FF != 0);
    }

    #[test]
    fn widening_is_exact() {
        let bf: Vec<u8> = [0x3F81u16, 0xC2F7, 0x0001]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut out = Vec::new();
        convert(&bf, DType::BF16, DType::F32, &mut out);
        let back: Vec<u32> = out
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(back, [0x3F81_0000, 0xC2F7_0000, 0x0001_0000]);
    }

    #[test]
    fn f64_rounds_once() {
        // 1 + 2^-8 + 2^-40: rounding via f32 first gives 1 + 2^-8 (a tie, -> 0x3F80);
        // rounding once sees it is above the tie -> 0x3F81.
        let v = 1.0f64 + 2f64.powi(-8) + 2f64.powi(-40);
        let mut out = Vec::new();
        convert(&v.to_le_bytes(), DType::F64, DType::BF16, &mut out);
        assert_eq!(u16s(&out), [0x3F81]);
        let mut out = Vec::new();
        let exact_tie = 1.0f64 + 2f64.powi(-8);
        convert(&exact_tie.to_le_bytes(), DType::F64, DType::BF16, &mut out);
        assert_eq!(u16s(&out), [0x3F80]);
        let mut out = Vec::new();
        let above_f16_tie = 1.0f64 + 2f64.powi(-11) + 2f64.powi(-45);
        convert(&above_f16_tie.to_le_bytes(), DType::F64, DType::F16, &mut out);
        assert_eq!(u16s(&out), [0x3C01]);
    }

    /// Round to odd on both sides of an f32 value, for both signs: the truncation toward zero,
    /// with its last bit set when anything was cut off.
    #[test]
    fn round_to_odd_truncates_and_marks_inexact() {
        let ulp = 2f64.powi(-23);
        let tiny = 2f64.powi(-30);
        let cases = [
            (1.0 + ulp + tiny, 0x3F80_0001u32),    // nearest rounds down to an odd value: kept
            (1.0 + 2.0 * ulp - tiny, 0x3F80_0001), // nearest rounds up to 1 + 2 ulp: back to 1 + ulp
            (1.0 + 2.0 * ulp + tiny, 0x3F80_0003), // nearest rounds down to an even value: made odd
            (1.0 + 2.0 * ulp, 0x3F80_0002),        // exact: unchanged
        ];
        for (v, bits) in cases {
            assert_eq!(f64_to_f32_round_odd(v).to_bits(), bits, "{v}");
            assert_eq!(f64_to_f32_round_odd(-v).to_bits(), bits | 0x8000_0000, "-{v}");
        }
    }

    #[test]
    fn fast_bf16_matches_half_bit_for_bit() {
        // Every exponent and sign with mantissas around each rounding boundary, plus a spread.
        let mut bits: Vec<u32> = Vec::new();
        for high in 0..=0xFFFFu32 {
            for low in [0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF] {
                bits.push(high << 16 | low);
            }
        }
        let mut x = 0x9E37_79B9u32;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            bits.push(x);
        }
        for &b in &bits {
            assert_eq!(
                f32_bits_to_bf16(b),
                bf16::from_f32(f32::from_bits(b)).to_bits(),
                "{b:#010x}"
            );
        }
        // And through `convert`, which must equal the element-wise reference.
        let src: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let mut out = vec![0xAA]; // appends after what is there
        convert(&src, DType::F32, DType::BF16, &mut out);
        let want: Vec<u8> = std::iter::once(0xAA)
            .chain(
                bits.iter()
                    .flat_map(|&b| bf16::from_f32(f32::from_bits(b)).to_le_bytes()),
            )
            .collect();
        assert_eq!(out, want);
        let mut out = Vec::new();
        convert(&src, DType::F32, DType::F16, &mut out);
        let want: Vec<u8> = bits
            .iter()
            .flat_map(|&b| f16::from_f32(f32::from_bits(b)).to_le_bytes())
            .collect();
        assert_eq!(out, want);
    }

    #[test]
    fn exact_casts_by_hand() {
        use DType::{BF16, F16, F32, F64};
        // Every pair of floats, written out: only widening keeps every value.
        let exact = [
            (F64, F64),
            (F32, F32),
            (F32, F64),
            (F16, F16),
            (F16, F32),
            (F16, F64),
            (BF16, BF16),
            (BF16, F32),
            (BF16, F64),
        ];
        for from in [F64, F32, F16, BF16] {
            for to in [F64, F32, F16, BF16] {
                assert_eq!(super::exact(from, to), exact.contains(&(from, to)), "{from} -> {to}");
            }
        }
        let q = |block, store| DType::Q8S(block, store);
        assert!(super::exact(q(32, QuantStore::Native), q(32, QuantStore::PackedU32)));
        assert!(!super::exact(q(32, QuantStore::Native), q(16, QuantStore::Native)));
        assert!(!super::exact(F32, q(32, QuantStore::PackedU32)));
        assert!(!super::exact(q(32, QuantStore::PackedU32), F32));
        assert!(super::exact(DType::I64, DType::I64));
        assert!(!super::exact(DType::I32, DType::I64));
        assert!(!super::exact(DType::I8, F32));
    }

    #[test]
    fn integers_only_pass_through() {
        assert!(supported(DType::I64, DType::I64));
        assert!(!supported(DType::I64, DType::F32));
        assert!(!supported(DType::F32, DType::Bool));
    }

    #[test]
    fn quantized_dtypes_convert_to_and_from_floats_only() {
        assert!(supported(DType::BF16, DType::Q8S(32, QuantStore::PackedU32)));
        assert!(supported(DType::Q8S(32, QuantStore::PackedU32), DType::F16));
        assert!(supported(
            DType::Q8S(32, QuantStore::PackedU32),
            DType::Q8S(32, QuantStore::PackedU32)
        ));
        assert!(!supported(
            DType::Q8S(32, QuantStore::PackedU32),
            DType::Q8S(16, QuantStore::PackedU32)
        ));
        assert!(supported(
            DType::Q8S(32, QuantStore::Native),
            DType::Q8S(32, QuantStore::PackedU32)
        ));
        assert!(!supported(
            DType::Q8S(32, QuantStore::Native),
            DType::Q8S(16, QuantStore::PackedU32)
        ));
        assert!(!supported(DType::I8, DType::Q8S(32, QuantStore::PackedU32)));
        assert!(!supported(DType::Q8S(32, QuantStore::PackedU32), DType::U8));
    }

    /// A BF16 source quantizes as its exact f32 widening does; dequantizing to BF16 rounds the
    /// f32 products once. Values chosen by hand: block [1, -0.5] has scale 2/254.
    #[test]
    fn the_converter_quantizes_through_f32_and_dequantizes_to_any_float() {
        let bf16_src: Vec<u8> = [0x3F80u16, 0xBF00].iter().flat_map(|b| b.to_le_bytes()).collect();
        let (mut values, mut scales) = (Vec::new(), Vec::new());
        Converter::default().run(
            DType::BF16,
            DType::Q8S(2, QuantStore::PackedU32),
            &bf16_src,
            &[],
            &mut values,
            &mut scales,
        );
        assert_eq!(values, vec![127u8, (-64i8) as u8]);
        assert_eq!(scales, (2.0f32 / 254.0).to_le_bytes().to_vec());

        let (mut back, mut none) = (Vec::new(), Vec::new());
        Converter::default().run(
            DType::Q8S(2, QuantStore::PackedU32),
            DType::F32,
            &values,
            &scales,
            &mut back,
            &mut none,
        );
        let want: Vec<u8> = [127.0f32 * (2.0 / 254.0), -64.0 * (2.0 / 254.0)]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!((back, none.len()), (want.clone(), 0));

        let mut narrow = Vec::new();
        Converter::default().run(
            DType::Q8S(2, QuantStore::PackedU32),
            DType::BF16,
            &values,
            &scales,
            &mut narrow,
            &mut none,
        );
        let mut expected = Vec::new();
        convert(&want, DType::F32, DType::BF16, &mut expected);
        assert_eq!(narrow, expected);
    }
}
