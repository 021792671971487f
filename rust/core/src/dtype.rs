//! The one dtype table: every element type a pack can hold, its name, its size, how many bytes a
//! tensor of it takes, and how it maps to safetensors dtypes. The binding hands this table to
//! Python, so a dtype is added here and nowhere else.

use std::fmt;

/// Prefix of a quantized dtype's name: `Q8S_B32` is Q8S in blocks of 32.
const Q8S_PREFIX: &str = "Q8S_B";
/// Suffix of a quantized dtype's name stored `Native`: `Q8S_B32_NATIVE`.
const NATIVE_SUFFIX: &str = "_NATIVE";

/// How Burn stores a quantized tensor's values (cubecl-common's `QuantStore`). For Q8S both stores
/// hold the same bytes (the i8 values in row-major order, then the scales); only the descriptor
/// differs, and with it the backends that run the tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuantStore {
    /// `PackedU32(0)`: four values to a little-endian u32 along the last dimension, which must
    /// then be a multiple of 4 (Burn pads each row otherwise; we refuse). What Burn 0.22.1's
    /// quantizer writes on its GPU backends, and the one store every backend runs: WGSL (wgpu)
    /// has no 8-bit integer type, and Flex reads both.
    PackedU32,
    /// `Native`: one i8 per value, what Burn's quantizer writes on Flex (its CPU backend). Its
    /// kernels do not compile on wgpu.
    Native,
}

impl QuantStore {
    /// Bytes of the last dimension that must be whole storage words.
    fn word(self) -> u64 {
        match self {
            QuantStore::PackedU32 => 4,
            QuantStore::Native => 1,
        }
    }

    /// Burn's spelling of the store: `PackedU32(0)` or `Native`.
    pub fn burn_name(self) -> &'static str {
        match self {
            QuantStore::PackedU32 => "PackedU32(0)",
            QuantStore::Native => "Native",
        }
    }
}

/// The element types a Burn pack can hold. Plain names are Burn's `DType` variant names, which is
/// also how they appear in the CBOR metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U64,
    U32,
    U16,
    U8,
    Bool,
    /// Burn's `QFloat` with the scheme `{Q8S, store, Symmetric, tensor: None, block: [n] F32}`:
    /// one i8 per value (symmetric, -127..=127) in row-major order, then one little-endian f32
    /// scale per block of `n` values along the last dimension, in block order. `n` is 1..=255
    /// (Burn stores a block size in a byte).
    Q8S(u8, QuantStore),
}

impl DType {
    /// Every dtype with a fixed size per element (all but the quantized ones).
    pub const PLAIN: [DType; 13] = [
        DType::F64,
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I64,
        DType::I32,
        DType::I16,
        DType::I8,
        DType::U64,
        DType::U32,
        DType::U16,
        DType::U8,
        DType::Bool,
    ];

    /// Bytes per element, as Burn's `DType::size` (Bool is stored one byte per element); None
    /// for a quantized dtype, whose scales make the size a property of the whole tensor.
    pub fn element_size(self) -> Option<u64> {
        Some(match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::Q8S(..) => return None,
        })
    }

    /// Bytes per element of a plain dtype; callers have ruled out quantized dtypes.
    pub fn size(self) -> u64 {
        self.element_size().expect("a plain dtype")
    }

    /// Bytes a tensor of this dtype and shape occupies, or why it cannot be stored.
    pub fn byte_len(self, shape: &[u64]) -> Result<u64, String> {
        let overflow = || format!("shape {shape:?} overflows 64 bits");
        let elements = shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .ok_or_else(overflow)?;
        match self {
            DType::Q8S(block, store) => {
                let last = *shape.last().ok_or("a quantized tensor needs at least one dimension")?;
                if last % block as u64 != 0 {
                    return Err(format!(
                        "its last dimension ({last}) is not a whole number of blocks of {block}"
                    ));
                }
                if last % store.word() != 0 {
                    return Err(format!(
                        "its last dimension ({last}) is not a multiple of {}, as {} needs",
                        store.word(),
                        store.burn_name()
                    ));
                }
                // The values, one byte each, then one f32 scale per block.
                (elements / block as u64)
                    .checked_mul(4)
                    .and_then(|scales| elements.checked_add(scales))
                    .ok_or_else(overflow)
            }
            plain => elements.checked_mul(plain.size()).ok_or_else(overflow),
        }
    }

    /// The block length of a quantized dtype.
    pub fn block(self) -> Option<u8> {
        match self {
            DType::Q8S(block, _) => Some(block),
            _ => None,
        }
    }

    /// How a quantized dtype stores its values.
    pub fn store(self) -> Option<QuantStore> {
        match self {
            DType::Q8S(_, store) => Some(store),
            _ => None,
        }
    }

    /// Whether a tensor of `self` holds the same bytes as one of `other` for the same values:
    /// the same dtype, or Q8S in the same block under either store (a copy turns one into the
    /// other).
    pub fn same_bytes(self, other: DType) -> bool {
        match (self, other) {
            (DType::Q8S(a, _), DType::Q8S(b, _)) => a == b,
            _ => self == other,
        }
    }

    /// Our name for the dtype: Burn's variant name ("F32", "BF16", "Bool"), or for a quantized
    /// dtype its scheme and block ("Q8S_B32"), with "_NATIVE" when stored `Native`.
    pub fn name(self) -> String {
        match self {
            DType::Q8S(block, QuantStore::PackedU32) => format!("{Q8S_PREFIX}{block}"),
            DType::Q8S(block, QuantStore::Native) => format!("{Q8S_PREFIX}{block}{NATIVE_SUFFIX}"),
            plain => plain.plain_name().to_string(),
        }
    }

    /// Burn's variant name of a plain dtype (a quantized one is Burn's `QFloat`).
    pub fn plain_name(self) -> &'static str {
        match self {
            DType::F64 => "F64",
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
            DType::I32 => "I32",
            DType::I16 => "I16",
            DType::I8 => "I8",
            DType::U64 => "U64",
            DType::U32 => "U32",
            DType::U16 => "U16",
            DType::U8 => "U8",
            DType::Bool => "Bool",
            DType::Q8S(..) => "QFloat",
        }
    }

    /// Parses a Burn or safetensors name, or a quantized name, case-insensitively ("bf16", "F32",
    /// "BOOL", "bool", "q8s_b32", "Q8S_B32_NATIVE").
    pub fn parse(name: &str) -> Option<DType> {
        let upper = name.to_ascii_uppercase();
        if let Some(rest) = upper.strip_prefix(Q8S_PREFIX) {
            let (block, store) = match rest.strip_suffix(NATIVE_SUFFIX) {
                Some(block) => (block, QuantStore::Native),
                None => (rest, QuantStore::PackedU32),
            };
            // Digits only, no sign or leading zero: one spelling per dtype.
            if block.starts_with('0') || !block.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            return block.parse::<u8>().ok().map(|block| DType::Q8S(block, store));
        }
        DType::PLAIN
            .into_iter()
            .find(|d| d.plain_name().to_ascii_uppercase() == upper)
    }

    /// A plain float dtype (what a float checkpoint tensor can be cast to exactly or by rounding).
    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }

    /// A dtype whose values are stored quantized and read back as floats (Burn's `QFloat`).
    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Q8S(..))
    }

    /// The Burn dtype for a safetensors dtype, or None where Burn has no equivalent (fp8, fp4, complex).
    pub fn from_safetensors(dtype: safetensors::Dtype) -> Option<DType> {
        use safetensors::Dtype as S;
        Some(match dtype {
            S::F64 => DType::F64,
            S::F32 => DType::F32,
            S::F16 => DType::F16,
            S::BF16 => DType::BF16,
            S::I64 => DType::I64,
            S::I32 => DType::I32,
            S::I16 => DType::I16,
            S::I8 => DType::I8,
            S::U64 => DType::U64,
            S::U32 => DType::U32,
            S::U16 => DType::U16,
            S::U8 => DType::U8,
            S::BOOL => DType::Bool,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_dtypes_map_by_hand() {
        use safetensors::Dtype as S;
        let table = [
            (S::F64, Some(DType::F64)),
            (S::F32, Some(DType::F32)),
            (S::F16, Some(DType::F16)),
            (S::BF16, Some(DType::BF16)),
            (S::I64, Some(DType::I64)),
            (S::I32, Some(DType::I32)),
            (S::I16, Some(DType::I16)),
            (S::I8, Some(DType::I8)),
            (S::U64, Some(DType::U64)),
            (S::U32, Some(DType::U32)),
            (S::U16, Some(DType::U16)),
            (S::U8, Some(DType::U8)),
            (S::BOOL, Some(DType::Bool)),
            (S::F8_E4M3, None),
            (S::F8_E5M2, None),
        ];
        for (st, ours) in table {
            assert_eq!(DType::from_safetensors(st), ours, "{st:?}");
        }
    }

    #[test]
    fn parse_accepts_both_spellings_and_rejects_unknown() {
        assert_eq!(DType::parse("bf16"), Some(DType::BF16));
        assert_eq!(DType::parse("BOOL"), Some(DType::Bool));
        assert_eq!(DType::parse("f32"), Some(DType::F32));
        assert_eq!(DType::parse("F8_E4M3"), None);
        for d in DType::PLAIN {
            assert_eq!(DType::parse(&d.name()), Some(d));
        }
    }

    const PACKED: QuantStore = QuantStore::PackedU32;
    const NATIVE: QuantStore = QuantStore::Native;

    #[test]
    fn quantized_names_parse_one_spelling_per_block_and_store() {
        assert_eq!(DType::parse("Q8S_B32"), Some(DType::Q8S(32, PACKED)));
        assert_eq!(DType::parse("q8s_b1"), Some(DType::Q8S(1, PACKED)));
        assert_eq!(DType::parse("Q8S_B255"), Some(DType::Q8S(255, PACKED)));
        assert_eq!(DType::parse("Q8S_B32_NATIVE"), Some(DType::Q8S(32, NATIVE)));
        assert_eq!(DType::parse("q8s_b7_native"), Some(DType::Q8S(7, NATIVE)));
        assert_eq!(DType::Q8S(16, PACKED).name(), "Q8S_B16");
        assert_eq!(DType::Q8S(16, NATIVE).name(), "Q8S_B16_NATIVE");
        for bad in [
            "Q8S_B0",
            "Q8S_B256",
            "Q8S_B032",
            "Q8S_B+32",
            "Q8S_B",
            "Q8S_B3x",
            "Q8S",
            "QFloat",
            "Q8S_B_NATIVE",
            "Q8S_B32_NATIVE_NATIVE",
            "Q8S_B32_PACKED",
            "Q8S_B0_NATIVE",
        ] {
            assert_eq!(DType::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn byte_lengths_by_hand() {
        assert_eq!(DType::F32.byte_len(&[3, 5]), Ok(60));
        assert_eq!(DType::Bool.byte_len(&[7]), Ok(7));
        assert_eq!(DType::BF16.byte_len(&[]), Ok(2));
        assert_eq!(DType::F64.byte_len(&[0, 9]), Ok(0));
        for store in [PACKED, NATIVE] {
            // Burn's own pack of a [16, 48] Q8S block-16 tensor holds 768 values and 48 scales: 960 bytes.
            assert_eq!(DType::Q8S(16, store).byte_len(&[16, 48]), Ok(960));
            assert_eq!(DType::Q8S(32, store).byte_len(&[2, 64]), Ok(128 + 4 * 4));
            assert_eq!(DType::Q8S(32, store).byte_len(&[0, 64]), Ok(0));
            assert!(DType::Q8S(32, store)
                .byte_len(&[16, 48])
                .unwrap_err()
                .contains("not a whole number of blocks of 32"));
            assert!(DType::Q8S(32, store).byte_len(&[]).is_err());
            assert_eq!(DType::Q8S(32, store).element_size(), None);
        }
        // Native takes any last dimension the block divides; PackedU32 only multiples of 4.
        assert_eq!(DType::Q8S(3, NATIVE).byte_len(&[3]), Ok(3 + 4));
        assert_eq!(DType::Q8S(3, PACKED).byte_len(&[12]), Ok(12 + 4 * 4));
        for shape in [vec![3u64], vec![2, 6], vec![4, 3]] {
            let why = DType::Q8S(3, PACKED).byte_len(&shape).unwrap_err();
            assert!(
                why.contains("not a multiple of 4, as PackedU32(0) needs"),
                "{shape:?}: {why}"
            );
        }
        assert_eq!(DType::Q8S(1, PACKED).byte_len(&[5, 4]), Ok(20 + 20 * 4));
        assert!(DType::F32
            .byte_len(&[1 << 40, 1 << 30])
            .unwrap_err()
            .contains("overflows"));
        assert!(DType::Q8S(1, NATIVE)
            .byte_len(&[u64::MAX])
            .unwrap_err()
            .contains("overflows"));
        assert!(DType::Q8S(1, PACKED)
            .byte_len(&[u64::MAX - 3])
            .unwrap_err()
            .contains("overflows"));
        assert_eq!(DType::U16.element_size(), Some(2));
    }

    #[test]
    fn the_two_stores_share_bytes_and_nothing_else_does() {
        assert!(DType::Q8S(32, PACKED).same_bytes(DType::Q8S(32, NATIVE)));
        assert!(DType::Q8S(32, NATIVE).same_bytes(DType::Q8S(32, NATIVE)));
        assert!(!DType::Q8S(32, PACKED).same_bytes(DType::Q8S(16, PACKED)));
        assert!(!DType::Q8S(8, PACKED).same_bytes(DType::I8));
        assert!(DType::F32.same_bytes(DType::F32));
        assert!(!DType::F32.same_bytes(DType::U32));
        assert_eq!(DType::Q8S(8, NATIVE).store(), Some(NATIVE));
        assert_eq!(DType::F16.store(), None);
        assert_eq!(DType::Q8S(8, NATIVE).block(), Some(8));
    }

    #[test]
    fn fp8_has_no_burn_equivalent() {
        assert_eq!(DType::from_safetensors(safetensors::Dtype::F8_E4M3), None);
        assert_eq!(DType::from_safetensors(safetensors::Dtype::BOOL), Some(DType::Bool));
    }
}
