//! Q8S block quantization exactly as Burn 0.22.1's `Tensor::quantize_dynamic` does it on its CPU
//! backend with `{Q8S, Native, Symmetric, block [n], F32 scales}`, and the dequantization Burn
//! applies when it reads such a tensor back.
//!
//! That call goes through burn-backend's default `quantize_dynamic` (burn-dispatch does not
//! forward it to burn-flex's own): per block of `n` values along the last dimension it takes the
//! block's min and max (burn-flex's scalar row scan: any NaN makes both NaN), `alpha = |min|` unless
//! `|min| < |max|`, `scale = alpha * 2 / 254`, replaced by `f32::MIN_POSITIVE` when it is zero, NaN
//! or infinite (burn-flex `quantize`), then `q = round(x * (1 / scale))` (ties away from zero)
//! clamped to -127..=127, NaN giving 0. So a block with a NaN or an infinity keeps 0 for zeros
//! and NaN and saturates everything else. The bytes are the i8 values of the whole tensor, then
//! its f32 scales, little-endian.

use std::ops::Range;

use crate::dtype::DType;

/// Q8S's symmetric range is -127..=127; Burn divides by its width.
const Q8S_MIN: f32 = -127.0;
const Q8S_MAX: f32 = 127.0;
const Q8S_RANGE: f32 = Q8S_MAX - Q8S_MIN;

/// The largest magnitude in a block, NaN if the block holds one (as Burn's min/max scan gives).
/// Written with a compare-and-select and a separate NaN flag, so that it vectorises.
fn block_peak(block: &[f32]) -> f32 {
    let mut peak = 0.0f32;
    let mut nan = false;
    for &x in block {
        let magnitude = x.abs();
        nan |= x.is_nan();
        peak = if magnitude > peak { magnitude } else { peak };
    }
    if nan {
        f32::NAN
    } else {
        peak
    }
}

/// `y.round().clamp(-127.0, 127.0) as i8` (ties away from zero, NaN to 0), without the call to
/// `roundf` and the saturating cast that keep the compiler from vectorising. Clamping first
/// changes nothing (rounding is monotonic and keeps ±127); within ±127 truncation is exact, and so
/// is the fraction left.
#[inline(always)]
fn round_clamp(y: f32) -> i8 {
    // Compare-and-select only (NaN first to 0, which rounds to 0 as Burn's cast of NaN does).
    let y = if y.is_nan() { 0.0 } else { y };
    let y = if y < Q8S_MIN { Q8S_MIN } else { y };
    let y = if y > Q8S_MAX { Q8S_MAX } else { y };
    // SAFETY: y is finite and within ±127 here, so it fits an i32.
    let whole: i32 = unsafe { y.to_int_unchecked() }; // toward zero
    let fraction = y - whole as f32;
    (whole + i32::from(fraction >= 0.5) - i32::from(fraction <= -0.5)) as i8
}

/// The scale Burn stores for a block whose largest magnitude is `alpha`.
fn block_scale(alpha: f32) -> f32 {
    let scale = alpha * 2.0 / Q8S_RANGE;
    // Burn's `validated_scale`: a zero or non-finite scale would make every value NaN or infinite.
    if scale > 0.0 && scale.is_finite() {
        scale
    } else {
        f32::MIN_POSITIVE
    }
}

/// Quantizes whole blocks of `block` values: appends one i8 per value to `values` and one f32
/// scale per block to `scales`. `src.len()` must be a multiple of `block`.
pub fn quantize(src: &[f32], block: usize, values: &mut Vec<u8>, scales: &mut Vec<u8>) {
    debug_assert_eq!(src.len() % block, 0);
    let (start, scales_start) = (values.len(), scales.len());
    values.resize(start + src.len(), 0);
    scales.resize(scales_start + src.len() / block * 4, 0);
    let out = values[start..].chunks_exact_mut(block);
    let out_scales = scales[scales_start..].chunks_exact_mut(4);
    for ((chunk, q), scale_bytes) in src.chunks_exact(block).zip(out).zip(out_scales) {
        let scale = block_scale(block_peak(chunk));
        let inv_scale = 1.0 / scale;
        for (q, &x) in q.iter_mut().zip(chunk) {
            *q = round_clamp(x * inv_scale) as u8;
        }
        scale_bytes.copy_from_slice(&scale.to_le_bytes());
    }
}

/// Dequantizes whole blocks as Burn does (`scale * q`): appends f32 values to `dst`.
/// `values.len()` must be `block` times the number of scales.
pub fn dequantize(values: &[u8], scales: &[u8], block: usize, dst: &mut Vec<f32>) {
    debug_assert_eq!(values.len(), scales.len() / 4 * block);
    dst.reserve(values.len());
    for (chunk, scale) in values.chunks_exact(block).zip(scales.chunks_exact(4)) {
        let scale = f32::from_le_bytes(scale.try_into().unwrap());
        dst.extend(chunk.iter().map(|&q| scale * (q as i8) as f32));
    }
}

/// Where elements `first..first + count` of a tensor of `elements` values lie in its bytes: the
/// values, and for a quantized dtype the scales of their blocks (`first` and `count` are whole
/// blocks there).
pub fn element_ranges(dtype: DType, elements: u64, first: u64, count: u64) -> (Range<u64>, Option<Range<u64>>) {
    match dtype {
        DType::Q8S(block, _) => {
            let block = block as u64;
            debug_assert!(first.is_multiple_of(block) && count.is_multiple_of(block));
            let scales = elements + first / block * 4..elements + (first + count) / block * 4;
            (first..first + count, Some(scales))
        }
        plain => (first * plain.size()..(first + count) * plain.size(), None),
    }
}

/// How many elements to convert at a time: about `bytes` of f32, whole blocks of both dtypes.
pub fn chunk_elements(from: DType, to: DType, bytes: u64) -> u64 {
    let block = from.block().unwrap_or(1).max(to.block().unwrap_or(1)) as u64;
    let wanted = (bytes / 4).max(1);
    (wanted / block).max(1) * block
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::QuantStore;

    fn run(src: &[f32], block: usize) -> (Vec<i8>, Vec<f32>) {
        let (mut values, mut scales) = (Vec::new(), Vec::new());
        quantize(src, block, &mut values, &mut scales);
        (
            values.iter().map(|&b| b as i8).collect(),
            scales
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )
    }

    #[test]
    fn burns_own_per_block_example() {
        // burn-flex 0.22.1 `test_per_block_quantize_dequantize`: blocks [0,1,2,3] and [4,5,6,7]
        // have scales 6/254 and 14/254; the largest value of each block maps to 127.
        let (q, s) = run(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], 4);
        assert_eq!(s, vec![2.0f32 * 3.0 / 254.0, 2.0f32 * 7.0 / 254.0]);
        assert_eq!(q, vec![0, 42, 85, 127, 73, 91, 109, 127]);
    }

    #[test]
    fn edge_values_follow_burns_rules() {
        // All zeros: the scale becomes f32::MIN_POSITIVE and every value 0.
        let (q, s) = run(&[0.0, -0.0, 0.0, 0.0], 4);
        assert_eq!((q, s), (vec![0; 4], vec![f32::MIN_POSITIVE]));
        // A NaN makes the block's scale NaN, replaced: it quantizes to 0, the rest saturates.
        let (q, s) = run(&[f32::NAN, 1.0, -0.5, 0.25, 0.0, 1e-45, 2.0, -1.0], 4);
        assert_eq!(s, vec![f32::MIN_POSITIVE, 2.0f32 * 2.0 / 254.0]);
        assert_eq!(q, vec![0, 127, -127, 127, 0, 0, 127, -64]);
        // An infinity makes the scale non-finite: MIN_POSITIVE, and every non-zero value saturates.
        let (q, s) = run(&[f32::INFINITY, 1e-30, -2.0, 0.0], 4);
        assert_eq!(s, vec![f32::MIN_POSITIVE]);
        assert_eq!(q, vec![127, 127, -127, 0]);
        // Subnormals: alpha * 2 / 254 rounds to a smaller subnormal, which is still a valid scale.
        let tiny = f32::from_bits(1000);
        let (q, s) = run(&[tiny, -tiny], 2);
        assert_eq!(s, vec![tiny * 2.0 / 254.0]);
        assert_eq!(q, vec![127, -127]);
        // Ties round away from zero: 0.5 / (2 / 254) = 63.5 -> 64.
        let (q, _) = run(&[1.0, 0.5, -0.5, 0.0], 4);
        assert_eq!(q, vec![127, 64, -64, 0]);
    }

    /// The branch-free rounding against Burn's own expression, on the values where rounding
    /// turns (ties, the float just below a tie, the clamp's edges) and on a sweep of every 331st
    /// bit pattern of f32 (NaNs, infinities and subnormals included).
    #[test]
    fn round_clamp_is_burns_round_then_clamp() {
        let burn = |y: f32| y.round().clamp(Q8S_MIN, Q8S_MAX) as i8;
        let below = |v: f32| f32::from_bits(v.to_bits() - 1);
        let mut cases = vec![
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN_POSITIVE,
        ];
        for k in -130..=130 {
            let tie = k as f32 + 0.5;
            cases.extend([tie, below(tie.abs()).copysign(tie), k as f32, -tie]);
        }
        for y in cases {
            assert_eq!(round_clamp(y), burn(y), "{y:?}");
        }
        for bits in (0..=u32::MAX).step_by(331) {
            let y = f32::from_bits(bits);
            assert_eq!(round_clamp(y), burn(y), "{bits:#x}");
        }
    }

    #[test]
    fn dequantize_is_scale_times_value() {
        let values: Vec<u8> = [127i8, -64, 0, 1].iter().map(|&v| v as u8).collect();
        let scales: Vec<u8> = [0.5f32, 2.0].iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut out = Vec::new();
        dequantize(&values, &scales, 2, &mut out);
        assert_eq!(out, vec![63.5, -32.0, 0.0, 2.0]);
    }

    #[test]
    fn ranges_and_chunks_by_hand() {
        // 128 values in blocks of 32: values at 0..128, scales at 128..144.
        assert_eq!(
            element_ranges(DType::Q8S(32, QuantStore::PackedU32), 128, 32, 64),
            (32..96, Some(132..140))
        );
        assert_eq!(element_ranges(DType::BF16, 10, 2, 3), (4..10, None));
        assert_eq!(
            chunk_elements(DType::F32, DType::Q8S(48, QuantStore::PackedU32), 1000),
            240
        );
        assert_eq!(chunk_elements(DType::Q8S(7, QuantStore::PackedU32), DType::F32, 1), 7);
        assert_eq!(chunk_elements(DType::F32, DType::BF16, 8), 2);
    }
}
