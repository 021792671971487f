//! Element types as Burn names them, and how they map to safetensors dtypes.

use std::fmt;

/// The element types a Burn pack can hold that a safetensors checkpoint can supply.
/// Names are Burn's `DType` variant names, which is also how they appear in the CBOR metadata.
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
}

impl DType {
    pub const ALL: [DType; 13] = [
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

    /// Bytes per element, as Burn's `DType::size` (Bool is stored one byte per element).
    pub fn size(self) -> u64 {
        match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// Burn's variant name, e.g. "F32", "BF16", "Bool".
    pub fn name(self) -> &'static str {
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
        }
    }

    /// Parses a Burn or safetensors name, case-insensitively ("bf16", "F32", "BOOL", "bool").
    pub fn parse(name: &str) -> Option<DType> {
        let upper = name.to_ascii_uppercase();
        DType::ALL.into_iter().find(|d| d.name().to_ascii_uppercase() == upper)
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
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
        f.write_str(self.name())
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
        for d in DType::ALL {
            assert_eq!(DType::parse(d.name()), Some(d));
        }
    }

    #[test]
    fn fp8_has_no_burn_equivalent() {
        assert_eq!(DType::from_safetensors(safetensors::Dtype::F8_E4M3), None);
        assert_eq!(DType::from_safetensors(safetensors::Dtype::BOOL), Some(DType::Bool));
    }
}
