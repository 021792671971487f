//! `.npy` files (NumPy's format, versions 1-3): one little-endian C-order array after a text header.
//! Used for the two-step raw export: tensors are written as `.npy` and packed from them zero-copy.

use crate::dtype::DType;

const MAGIC: &[u8] = b"\x93NUMPY";
/// NumPy pads headers so the data starts on a 64-byte boundary.
const ALIGN: usize = 64;

/// NumPy's type string for a dtype. BF16 has none: it is stored as `<u2`, its dtype kept elsewhere.
/// Quantized dtypes have no NumPy form at all.
pub fn descr(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F64 => "<f8",
        DType::F32 => "<f4",
        DType::F16 => "<f2",
        DType::BF16 | DType::U16 => "<u2",
        DType::I64 => "<i8",
        DType::I32 => "<i4",
        DType::I16 => "<i2",
        DType::I8 => "|i1",
        DType::U64 => "<u8",
        DType::U32 => "<u4",
        DType::U8 => "|u1",
        DType::Bool => "|b1",
        DType::Q8S(..) => return None,
    })
}

fn dtype_of_descr(descr: &str) -> Option<DType> {
    // '=' and '<' are both little-endian on the platforms we build for; '|' means byte-sized.
    let normalized = descr.replacen('=', "<", 1);
    DType::PLAIN.into_iter().filter(|&d| d != DType::BF16).find(|&d| {
        let ours = self::descr(d).expect("plain dtypes have one");
        ours == normalized || ours.replacen('|', "<", 1) == normalized
    })
}

/// The header for an array of `dtype` and `shape`, padded so that data starts 64-byte aligned;
/// None for a dtype NumPy cannot hold.
pub fn header(dtype: DType, shape: &[u64]) -> Option<Vec<u8>> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut text = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape_text}, }}",
        descr(dtype)?
    );
    let (version, prefix) = if text.len() + 1 + 10 <= u16::MAX as usize {
        (1u8, 10)
    } else {
        (2u8, 12)
    };
    let padding = (ALIGN - (prefix + text.len() + 1) % ALIGN) % ALIGN;
    text.extend(std::iter::repeat_n(' ', padding));
    text.push('\n');
    let mut out = Vec::with_capacity(prefix + text.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(text.as_bytes());
    Some(out)
}

/// What a `.npy` header says: dtype, shape and where the data starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub data_offset: u64,
}

pub fn parse_header(bytes: &[u8]) -> Result<NpyHeader, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (bad magic)".into());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let text = bytes
        .get(start..start + len)
        .ok_or_else(|| format!("header of {len} bytes runs past the end of the file"))?;
    let text = std::str::from_utf8(text).map_err(|_| "header is not text".to_string())?;
    let field = |key: &str| -> Result<&str, String> {
        let at = text
            .find(&format!("'{key}':"))
            .ok_or_else(|| format!("header has no '{key}'"))?;
        Ok(text[at + key.len() + 3..].trim_start())
    };
    let descr_text = field("descr")?;
    let descr = descr_text
        .strip_prefix('\'')
        .and_then(|rest| rest.split('\'').next())
        .ok_or_else(|| "malformed 'descr'".to_string())?;
    let dtype = dtype_of_descr(descr).ok_or_else(|| format!("unsupported dtype '{descr}' (little-endian only)"))?;
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    let shape_text = field("shape")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|rest| rest.split(')').next())
        .ok_or_else(|| "malformed 'shape'".to_string())?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>().map_err(|_| format!("malformed 'shape' ({inner})")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NpyHeader {
        dtype,
        shape,
        data_offset: (start + len) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_matches_what_numpy_writes() {
        // numpy.save of np.zeros((3, 4), '<f4'): 128-byte preamble (v1.0, 118-byte header text).
        let h = header(DType::F32, &[3, 4]).unwrap();
        assert_eq!(h.len(), 128);
        let text = std::str::from_utf8(&h[10..]).unwrap();
        assert!(text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }"));
        assert!(text.ends_with(" \n"));
        assert_eq!(&h[..8], b"\x93NUMPY\x01\x00");
        assert_eq!(u16::from_le_bytes([h[8], h[9]]) as usize, h.len() - 10);
    }

    /// The version numpy's format picks: 1.0 while the header length fits its 16-bit field
    /// (magic 6 + version 2 + length 2 + text + newline <= 65535 before padding), else 2.0 with a
    /// 32-bit length; a one-element shape is spelt `(n,)`, as Python writes a 1-tuple.
    #[test]
    fn versions_and_shapes_are_spelt_as_numpy_spells_them() {
        let text = |dims: &[u64]| {
            let shape = dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
            format!("{{'descr': '|u1', 'fortran_order': False, 'shape': ({shape}), }}").len()
        };
        assert!(std::str::from_utf8(&header(DType::U8, &[5]).unwrap()[10..])
            .unwrap()
            .contains("'shape': (5,), }"));
        // Shapes of ones and tens whose text is 65524 bytes (the last of version 1) and 65525.
        let mut dims = vec![1u64; (65_524 - text(&[])) / 3 - 1];
        while text(&dims) < 65_524 {
            let one = dims.iter().position(|&d| d == 1).unwrap();
            dims[one] = 10;
        }
        assert_eq!(text(&dims), 65_524);
        let last_v1 = header(DType::U8, &dims).unwrap();
        assert_eq!(&last_v1[6..8], &[1, 0]);
        assert_eq!(
            u16::from_le_bytes([last_v1[8], last_v1[9]]) as usize,
            last_v1.len() - 10
        );
        let one = dims.iter().position(|&d| d == 1).unwrap();
        dims[one] = 10;
        let first_v2 = header(DType::U8, &dims).unwrap();
        assert_eq!(&first_v2[6..8], &[2, 0]);
        assert_eq!(
            u32::from_le_bytes(first_v2[8..12].try_into().unwrap()) as usize,
            first_v2.len() - 12
        );
        assert_eq!(first_v2.len() % 64, 0);
        assert_eq!(parse_header(&first_v2).unwrap().shape, dims);
        // Versions 2.0 and 3.0 written by hand are read; 4.0 is not.
        for version in [2u8, 3] {
            let text = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n";
            let mut bytes = b"\x93NUMPY".to_vec();
            bytes.extend([version, 0]);
            bytes.extend((text.len() as u32).to_le_bytes());
            bytes.extend(text);
            let parsed = parse_header(&bytes).unwrap();
            assert_eq!(
                (parsed.dtype, parsed.shape, parsed.data_offset),
                (DType::F32, vec![2], 12 + text.len() as u64)
            );
        }
        let mut v4 = header(DType::F32, &[2]).unwrap();
        v4[6] = 4;
        assert!(parse_header(&v4).unwrap_err().contains("unsupported .npy version 4"));
    }

    #[test]
    fn round_trips_every_dtype_and_shape() {
        for dtype in DType::PLAIN {
            for shape in [vec![], vec![5], vec![0, 3], vec![2, 3, 4]] {
                let parsed = parse_header(&header(dtype, &shape).unwrap()).unwrap();
                let want = if dtype == DType::BF16 { DType::U16 } else { dtype };
                assert_eq!((parsed.dtype, parsed.shape.clone()), (want, shape.clone()));
                assert_eq!(parsed.data_offset % 64, 0);
            }
        }
    }

    #[test]
    fn rejects_big_endian_and_fortran_order() {
        let mut h = header(DType::F32, &[2]).unwrap();
        let at = h.windows(3).position(|w| w == b"<f4").unwrap();
        h[at] = b'>';
        assert!(parse_header(&h).unwrap_err().contains("little-endian"));
        let mut f = header(DType::F32, &[2]).unwrap();
        let at = f.windows(5).position(|w| w == b"False").unwrap();
        f[at..at + 5].copy_from_slice(b"True ");
        assert!(parse_header(&f).unwrap_err().contains("Fortran"));
        assert!(parse_header(b"PK\x03\x04").unwrap_err().contains("magic"));
        // Version 2 keeps its length in 4 bytes: 11 bytes cannot hold it (an error, not a panic).
        let short = parse_header(b"\x93NUMPY\x02\x00\x00\x00\x00").unwrap_err();
        assert!(short.contains("version 2"), "{short}");
        // The 10-byte preamble alone is a .npy file whose header is empty, not a bad magic.
        let empty = parse_header(b"\x93NUMPY\x01\x00\x00\x00").unwrap_err();
        assert!(empty.contains("header has no 'descr'"), "{empty}");
    }
}
