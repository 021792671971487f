//! The Burn pack container: planning the layout, encoding the CBOR metadata exactly as Burn's
//! writer (serde + ciborium) does, and reading a pack's index back with Burn's reader limits.
//!
//! Layout (Burn 0.20 and later): `"NRUB" | u16 version=1 | u32 metadata_len | CBOR | zero pad to 256 |
//! tensors, each at a 256-aligned offset relative to the data start | EOF after the last tensor`.
//! Burn 0.19 wrote the same version number with no padding at all.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, Serializer};

use crate::dtype::{DType, QuantStore};
use crate::error::{Error, Result};

pub const MAGIC: u32 = 0x4255_524E; // "NRUB" on disk
pub const FORMAT_VERSION: u16 = 1;
pub const HEADER_SIZE: u64 = 10;
pub const TENSOR_ALIGNMENT: u64 = 256;

// The limits Burn's reader enforces; a pack over any of them would not load, so we refuse to write it.
pub const MAX_METADATA_SIZE: u64 = 100 * 1024 * 1024;
pub const MAX_TENSOR_SIZE: u64 = 10 * 1024 * 1024 * 1024;
pub const MAX_TENSOR_COUNT: usize = 100_000;
pub const MAX_FILE_SIZE: u64 = 100 * 1024 * 1024 * 1024;
pub const MAX_CBOR_DEPTH: usize = 128;

/// Which Burn release's reader the pack is written for. The bytes differ in two places only:
/// 0.19 has no alignment padding, and 0.21 encodes Bool as `{"Bool": "Native"}` instead of `"Bool"`.
/// 0.22 writes plain dtypes as 0.21 does; only it reads our quantized descriptors (0.21's
/// `QuantScheme` has other fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BurnTarget {
    V0_19,
    V0_20,
    V0_21,
    V0_22,
}

impl BurnTarget {
    pub fn parse(s: &str) -> Option<BurnTarget> {
        match s {
            "0.19" => Some(BurnTarget::V0_19),
            "0.20" => Some(BurnTarget::V0_20),
            "0.21" => Some(BurnTarget::V0_21),
            "0.22" => Some(BurnTarget::V0_22),
            _ => None,
        }
    }

    pub fn aligned(self) -> bool {
        self != BurnTarget::V0_19
    }

    fn bool_has_store(self) -> bool {
        matches!(self, BurnTarget::V0_21 | BurnTarget::V0_22)
    }

    fn reads_quantized(self) -> bool {
        self == BurnTarget::V0_22
    }
}

pub fn align_up(offset: u64, alignment: u64) -> u64 {
    offset.div_ceil(alignment) * alignment
}

/// One tensor as it will sit in the pack. `start`/`end` are relative to the data section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorPlan {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub param_id: Option<u64>,
    pub start: u64,
    pub end: u64,
}

impl TensorPlan {
    pub fn byte_len(&self) -> u64 {
        self.end - self.start
    }
}

/// The whole layout of a pack, computed before a byte of data is written.
#[derive(Debug, Clone)]
pub struct PackLayout {
    pub target: BurnTarget,
    /// Tensors in data order (the order their bytes follow each other in the file).
    pub tensors: Vec<TensorPlan>,
    pub metadata: BTreeMap<String, String>,
    pub cbor: Vec<u8>,
    /// Absolute offset of the data section.
    pub data_start: u64,
    pub file_size: u64,
}

impl PackLayout {
    /// Assigns offsets in the given order and encodes the metadata.
    /// `tensors` holds (name, dtype, shape, param_id); offsets in it are ignored and recomputed.
    /// `output` (the pack to be written) only names the file in errors.
    pub fn plan(
        specs: Vec<(String, DType, Vec<u64>, Option<u64>)>,
        metadata: BTreeMap<String, String>,
        target: BurnTarget,
        output: &Path,
    ) -> Result<PackLayout> {
        let refuse = |message: String| Error::output(output, message);
        if specs.len() > MAX_TENSOR_COUNT {
            return Err(refuse(format!(
                "{} tensors; Burn's reader accepts at most {MAX_TENSOR_COUNT}",
                specs.len()
            )));
        }
        let mut seen = std::collections::HashSet::with_capacity(specs.len());
        let mut offset = 0u64;
        let mut tensors = Vec::with_capacity(specs.len());
        for (name, dtype, shape, param_id) in specs {
            if !seen.insert(name.clone()) {
                return Err(refuse(format!("tensor '{name}' appears twice in the pack")));
            }
            if dtype.is_quantized() && !target.reads_quantized() {
                return Err(refuse(format!(
                    "tensor '{name}' is {dtype}: quantized packs are written for Burn 0.22 (older readers spell the scheme differently)"
                )));
            }
            let len = dtype
                .byte_len(&shape)
                .map_err(|why| refuse(format!("tensor '{name}' cannot be {dtype}: {why}")))?;
            if len > MAX_TENSOR_SIZE {
                return Err(refuse(format!(
                    "tensor '{name}' is {len} bytes; Burn's reader refuses tensors over {MAX_TENSOR_SIZE} bytes"
                )));
            }
            let start = if target.aligned() {
                align_up(offset, TENSOR_ALIGNMENT)
            } else {
                offset
            };
            let end = start + len;
            offset = end;
            tensors.push(TensorPlan {
                name,
                dtype,
                shape,
                param_id,
                start,
                end,
            });
        }
        let cbor = encode_metadata(&tensors, &metadata, target).map_err(refuse)?;
        if cbor.len() as u64 > MAX_METADATA_SIZE {
            return Err(refuse(format!(
                "metadata is {} bytes; Burn's reader accepts at most {MAX_METADATA_SIZE}",
                cbor.len()
            )));
        }
        let metadata_end = HEADER_SIZE + cbor.len() as u64;
        let data_start = if target.aligned() {
            align_up(metadata_end, TENSOR_ALIGNMENT)
        } else {
            metadata_end
        };
        let file_size = data_start + tensors.iter().map(|t| t.end).max().unwrap_or(0);
        if file_size > MAX_FILE_SIZE {
            return Err(refuse(format!(
                "the pack would be {file_size} bytes; Burn's file loaders refuse files over {MAX_FILE_SIZE} bytes"
            )));
        }
        Ok(PackLayout {
            target,
            tensors,
            metadata,
            cbor,
            data_start,
            file_size,
        })
    }

    /// Header, CBOR metadata and the zero padding up to the data section.
    pub fn preamble(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data_start as usize);
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.cbor.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.cbor);
        out.resize(self.data_start as usize, 0);
        out
    }
}

/// Burn's `DType` as its derived `Serialize` writes it: unit variants as text,
/// from 0.21 on `Bool(BoolStore::Native)` as the map `{"Bool": "Native"}`, and `QFloat(scheme)`
/// as `{"QFloat": scheme}`.
struct CborDType {
    dtype: DType,
    bool_has_store: bool,
}

/// cubecl-common 0.11's `QuantScheme` as serde writes it: the fields in declaration order, unit
/// variants as their names, `None` as null. Only the schemes we write are spelled here.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
struct QuantSchemeCbor {
    value: String,
    store: StoreCbor,
    mode: String,
    tensor: Option<String>,
    block: Option<BlockScaleCbor>,
}

/// cubecl-common's `QuantStore` as serde writes it: `"Native"`, or `{"PackedU32": dim}` (the
/// packed dimension counted from the innermost; we write 0). `PackedNative` is not read.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
enum StoreCbor {
    Native,
    PackedU32(u64),
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
struct BlockScaleCbor {
    size: BlockSizeCbor,
    dtype: String,
}

/// Burn's `BlockSize`: the block's extents with leading 1s dropped, padded with 1s to five
/// (so a block of one value has no extents at all: `len` 0).
#[derive(Serialize, Deserialize, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
struct BlockSizeCbor {
    storage: [u8; 5],
    len: u8,
}

impl QuantSchemeCbor {
    /// `{Q8S, store, Symmetric, tensor: None, block: [block] F32}`.
    fn q8s(block: u8, store: QuantStore) -> QuantSchemeCbor {
        QuantSchemeCbor {
            value: "Q8S".into(),
            store: match store {
                QuantStore::PackedU32 => StoreCbor::PackedU32(0),
                QuantStore::Native => StoreCbor::Native,
            },
            mode: "Symmetric".into(),
            tensor: None,
            block: Some(BlockScaleCbor {
                size: BlockSizeCbor {
                    storage: [block, 1, 1, 1, 1],
                    len: u8::from(block != 1),
                },
                dtype: "F32".into(),
            }),
        }
    }

    /// The dtype this scheme is, when it is one we read.
    fn dtype(&self) -> Option<DType> {
        let block = self.block.as_ref()?.size.storage[0];
        [QuantStore::PackedU32, QuantStore::Native]
            .into_iter()
            .find(|&store| block > 0 && *self == QuantSchemeCbor::q8s(block, store))
            .map(|store| DType::Q8S(block, store))
    }
}

impl Serialize for CborDType {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        // ciborium ignores variant indices; only names reach the bytes.
        if let DType::Q8S(block, store) = self.dtype {
            s.serialize_newtype_variant("DType", 0, "QFloat", &QuantSchemeCbor::q8s(block, store))
        } else if self.dtype == DType::Bool && self.bool_has_store {
            struct Native;
            impl Serialize for Native {
                fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                    s.serialize_unit_variant("BoolStore", 0, "Native")
                }
            }
            s.serialize_newtype_variant("DType", 0, "Bool", &Native)
        } else {
            s.serialize_unit_variant("DType", 0, self.dtype.plain_name())
        }
    }
}

// Field order and skip rules mirror Burn's `BurnpackMetadata` / `TensorDescriptor`.
#[derive(Serialize)]
struct MetadataOut<'a> {
    tensors: BTreeMap<&'a str, DescriptorOut<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
struct DescriptorOut<'a> {
    dtype: CborDType,
    shape: &'a [u64],
    data_offsets: (u64, u64),
    #[serde(skip_serializing_if = "Option::is_none")]
    param_id: Option<u64>,
}

pub(crate) fn encode_metadata(
    tensors: &[TensorPlan],
    metadata: &BTreeMap<String, String>,
    target: BurnTarget,
) -> std::result::Result<Vec<u8>, String> {
    let out = MetadataOut {
        tensors: tensors
            .iter()
            .map(|t| {
                let descriptor = DescriptorOut {
                    dtype: CborDType {
                        dtype: t.dtype,
                        bool_has_store: target.bool_has_store(),
                    },
                    shape: &t.shape,
                    data_offsets: (t.start, t.end),
                    param_id: t.param_id,
                };
                (t.name.as_str(), descriptor)
            })
            .collect(),
        metadata: metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
    };
    let mut cbor = Vec::new();
    ciborium::into_writer(&out, &mut cbor).map_err(|e| match e {
        ciborium::ser::Error::Value(message) => format!("cannot encode the pack's metadata: {message}"),
        ciborium::ser::Error::Io(e) => format!("cannot encode the pack's metadata: {e}"),
    })?;
    Ok(cbor)
}

// ---------------------------------------------------------------------------------------------
// Reading

/// How a pack's data section is laid out, told apart by the file size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Burn 0.20 and later: 256-byte aligned.
    Aligned,
    /// Burn 0.19: tensors packed back to back right after the metadata.
    Unaligned019,
}

impl Layout {
    pub fn describe(self) -> &'static str {
        match self {
            Layout::Aligned => "0.20+ (256-byte aligned)",
            Layout::Unaligned019 => "0.19 (unaligned)",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PackTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub param_id: Option<u64>,
    /// Relative to the data section.
    pub start: u64,
    pub end: u64,
    /// Absolute offset of the first byte in the file.
    pub file_offset: u64,
}

#[derive(Debug, Clone)]
pub struct PackIndex {
    pub path: PathBuf,
    pub file_size: u64,
    pub metadata_size: u64,
    pub data_start: u64,
    pub layout: Layout,
    pub metadata: BTreeMap<String, String>,
    /// Sorted by position in the file.
    pub tensors: Vec<PackTensor>,
}

#[derive(Deserialize)]
struct MetadataIn {
    #[serde(deserialize_with = "entries")]
    tensors: Vec<(String, DescriptorIn)>,
    #[serde(default, deserialize_with = "entries")]
    metadata: Vec<(String, String)>,
}

/// A CBOR map as its entries, in order and duplicates included (a `BTreeMap` would silently keep
/// the last of two entries under one key; Burn's reader would then load one of two tensors).
fn entries<'de, D, V>(deserializer: D) -> std::result::Result<Vec<(String, V)>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Entries<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Entries<V> {
        type Value = Vec<(String, V)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0).min(MAX_TENSOR_COUNT));
            while let Some(entry) = map.next_entry()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_map(Entries(std::marker::PhantomData))
}

/// The first key that appears twice, if any.
fn first_duplicate<V>(entries: &[(String, V)]) -> Option<&str> {
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    entries
        .iter()
        .find(|(key, _)| !seen.insert(key.as_str()))
        .map(|(key, _)| key.as_str())
}

/// A ciborium decoding error in words (its `Display` is Rust debug text).
fn describe_cbor_error(e: &ciborium::de::Error<std::io::Error>) -> String {
    use ciborium::de::Error as E;
    match e {
        E::Io(e) => format!("cannot read it: {e}"),
        E::Syntax(at) => format!("malformed CBOR at byte {at} of the metadata"),
        E::Semantic(Some(at), message) => format!("{message} (at byte {at} of the metadata)"),
        E::Semantic(None, message) => message.clone(),
        E::RecursionLimitExceeded => format!("nested deeper than {MAX_CBOR_DEPTH} levels"),
    }
}

/// A CBOR value as a person reads it in an error: text quoted, anything else by its kind.
fn describe_cbor_value(value: &ciborium::Value) -> String {
    use ciborium::Value as V;
    match value {
        V::Text(text) => format!("'{}'", text.escape_debug()),
        V::Integer(i) => format!("{}", i128::from(*i)),
        V::Map(_) => "(a map)".into(),
        V::Array(_) => "(an array)".into(),
        V::Bytes(_) => "(a byte string)".into(),
        V::Float(f) => format!("{f}"),
        V::Bool(b) => format!("{b}"),
        V::Null => "null".into(),
        V::Tag(..) => "(a tagged value)".into(),
        _ => "(an unknown value)".into(),
    }
}

#[derive(Deserialize)]
struct DescriptorIn {
    dtype: ciborium::Value,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
    #[serde(default)]
    param_id: Option<u64>,
}

/// Reads `"F32"` (all versions), `"Bool"` (0.19/0.20), `{"Bool": "Native"|"U8"}` (0.21+) and
/// `{"QFloat": scheme}` for the Q8S block schemes we write, either store (0.22+).
fn decode_dtype(value: &ciborium::Value) -> Option<DType> {
    match value {
        ciborium::Value::Text(name) => DType::PLAIN.into_iter().find(|d| d.plain_name() == name),
        ciborium::Value::Map(entries) if entries.len() == 1 => match &entries[0] {
            (ciborium::Value::Text(k), ciborium::Value::Text(store))
                if k == "Bool" && (store == "Native" || store == "U8") =>
            {
                Some(DType::Bool)
            }
            (ciborium::Value::Text(k), scheme) if k == "QFloat" => {
                scheme.deserialized::<QuantSchemeCbor>().ok()?.dtype()
            }
            _ => None,
        },
        _ => None,
    }
}

/// Parses a pack's header and metadata and checks every descriptor against the file.
pub fn read_index(path: &Path) -> Result<PackIndex> {
    let mut file = crate::fs::open_regular(path, crate::fs::Input::Pack)?;
    let file_size = file
        .metadata()
        .map_err(|e| Error::io(path, "cannot stat pack", e))?
        .len();
    let mut header = [0u8; HEADER_SIZE as usize];
    let available = file_size.min(HEADER_SIZE) as usize;
    file.read_exact(&mut header[..available])
        .map_err(|e| Error::io(path, "cannot read header", e))?;
    let metadata_size = check_header(path, &header[..available], file_size)?;
    let mut cbor = vec![0u8; metadata_size as usize];
    file.read_exact(&mut cbor)
        .map_err(|e| Error::io(path, "cannot read metadata", e))?;
    parse_index(path, &cbor, file_size)
}

/// The same as `read_index`, for a pack already in memory (`path` only names it in errors).
pub fn index_from_bytes(path: &Path, bytes: &[u8]) -> Result<PackIndex> {
    let metadata_size = check_header(
        path,
        &bytes[..bytes.len().min(HEADER_SIZE as usize)],
        bytes.len() as u64,
    )?;
    let cbor = &bytes[HEADER_SIZE as usize..(HEADER_SIZE + metadata_size) as usize];
    parse_index(path, cbor, bytes.len() as u64)
}

/// Checks the 10-byte header against Burn's limits; returns the metadata size, which is known
/// to fit in the file.
fn check_header(path: &Path, header: &[u8], file_size: u64) -> Result<u64> {
    let bad = |message: String| Error::pack_file(path, message);
    if file_size > MAX_FILE_SIZE {
        return Err(bad(format!(
            "file is {file_size} bytes, over Burn's limit of {MAX_FILE_SIZE}"
        )));
    }
    if header.len() < HEADER_SIZE as usize {
        return Err(bad(format!(
            "not a Burn pack: only {file_size} bytes, shorter than the 10-byte header"
        )));
    }
    let magic = u32::from_le_bytes(header[0..4].try_into().unwrap());
    if magic != MAGIC {
        return Err(bad("not a Burn pack: bad magic number (expected \"NRUB\")".into()));
    }
    let version = u16::from_le_bytes(header[4..6].try_into().unwrap());
    if version > FORMAT_VERSION {
        return Err(bad(format!(
            "unsupported Burn pack format version {version} (this reader knows version {FORMAT_VERSION})"
        )));
    }
    let metadata_size = u32::from_le_bytes(header[6..10].try_into().unwrap()) as u64;
    if metadata_size > MAX_METADATA_SIZE {
        return Err(bad(format!(
            "metadata size {metadata_size} exceeds the limit of {MAX_METADATA_SIZE} bytes"
        )));
    }
    let metadata_end = HEADER_SIZE + metadata_size;
    if file_size < metadata_end {
        return Err(bad(format!(
            "truncated: metadata needs {metadata_end} bytes but the file has {file_size}"
        )));
    }
    Ok(metadata_size)
}

fn parse_index(path: &Path, cbor: &[u8], file_size: u64) -> Result<PackIndex> {
    let bad = |message: String| Error::pack_file(path, message);
    let parsed: MetadataIn = ciborium::de::from_reader_with_recursion_limit(cbor, MAX_CBOR_DEPTH)
        .map_err(|e| bad(format!("invalid CBOR metadata: {}", describe_cbor_error(&e))))?;
    if let Some(name) = first_duplicate(&parsed.tensors) {
        return Err(Error::pack_tensor(path, name, "appears twice in the metadata"));
    }
    if let Some(key) = first_duplicate(&parsed.metadata) {
        return Err(bad(format!("metadata key '{key}' appears twice")));
    }
    if parsed.tensors.len() > MAX_TENSOR_COUNT {
        return Err(bad(format!(
            "{} tensors, over Burn's limit of {MAX_TENSOR_COUNT}",
            parsed.tensors.len()
        )));
    }
    let metadata_size = cbor.len() as u64;
    let metadata_end = HEADER_SIZE + metadata_size;
    let aligned_start = align_up(metadata_end, TENSOR_ALIGNMENT);

    let mut tensors = Vec::with_capacity(parsed.tensors.len());
    for (name, d) in parsed.tensors {
        let dtype = decode_dtype(&d.dtype).ok_or_else(|| {
            Error::pack_tensor(
                path,
                &name,
                format!("unsupported dtype {}", describe_cbor_value(&d.dtype)),
            )
        })?;
        let (start, end) = d.data_offsets;
        if end < start {
            return Err(Error::pack_tensor(
                path,
                &name,
                format!("corrupt offsets: end {end} < start {start}"),
            ));
        }
        if end - start > MAX_TENSOR_SIZE {
            return Err(Error::pack_tensor(
                path,
                &name,
                format!(
                    "{} bytes, over Burn's per-tensor limit of {MAX_TENSOR_SIZE}",
                    end - start
                ),
            ));
        }
        match dtype.byte_len(&d.shape) {
            Ok(needed) if needed == end - start => {}
            Ok(needed) => {
                return Err(Error::pack_tensor(
                    path,
                    &name,
                    format!("holds {} bytes but {dtype} {:?} needs {needed}", end - start, d.shape),
                ))
            }
            Err(why) => return Err(Error::pack_tensor(path, &name, format!("{dtype} {:?}: {why}", d.shape))),
        }
        tensors.push(PackTensor {
            name,
            dtype,
            shape: d.shape,
            param_id: d.param_id,
            start,
            end,
            file_offset: 0,
        });
    }
    let max_end = tensors.iter().map(|t| t.end).max().unwrap_or(0);
    let (layout, data_start) = if file_size == aligned_start + max_end {
        (Layout::Aligned, aligned_start)
    } else if file_size == metadata_end + max_end {
        (Layout::Unaligned019, metadata_end)
    } else {
        // Neither size fits: judge the intended layout by the offsets (0.20+ writers align every start).
        let aligned = tensors.iter().all(|t| t.start % TENSOR_ALIGNMENT == 0);
        let (expected, name) = if aligned {
            (aligned_start + max_end, Layout::Aligned.describe())
        } else {
            (metadata_end + max_end, Layout::Unaligned019.describe())
        };
        return Err(bad(if file_size < expected {
            format!("truncated: the {name} layout needs {expected} bytes but the file has {file_size}")
        } else {
            format!(
                "{} unexpected bytes after the last tensor ({name} layout ends at {expected})",
                file_size - expected
            )
        }));
    };
    for t in &mut tensors {
        t.file_offset = data_start + t.start;
    }
    tensors.sort_by(|a, b| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
    for pair in tensors.windows(2) {
        if pair[1].start < pair[0].end {
            return Err(Error::pack_tensor(
                path,
                &pair[1].name,
                format!("overlaps tensor '{}'", pair[0].name),
            ));
        }
    }
    Ok(PackIndex {
        path: path.to_path_buf(),
        file_size,
        metadata_size,
        data_start,
        layout,
        metadata: parsed.metadata.into_iter().collect(),
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Burn 0.21's reader limits, copied by hand from its source (burn-store `burnpack/base.rs` and
    /// `reader.rs`; the format reference, section 5), not from the constants above.
    #[test]
    fn the_limits_are_burns_own() {
        assert_eq!(MAX_METADATA_SIZE, 104_857_600);
        assert_eq!(MAX_TENSOR_SIZE, 10_737_418_240);
        assert_eq!(MAX_TENSOR_COUNT, 100_000);
        assert_eq!(MAX_FILE_SIZE, 107_374_182_400);
    }

    #[test]
    fn every_burn_version_names_its_layout() {
        let cases = [
            ("0.19", Some(BurnTarget::V0_19)),
            ("0.20", Some(BurnTarget::V0_20)),
            ("0.21", Some(BurnTarget::V0_21)),
            ("0.22", Some(BurnTarget::V0_22)),
            ("0.23", None),
            ("", None),
        ];
        for (text, target) in cases {
            assert_eq!(BurnTarget::parse(text), target, "{text}");
        }
    }

    /// A CBOR text string (major type 3), short form: the golden below is spelt out byte by byte
    /// from the format reference (sections 1-2), not through ciborium.
    fn text(s: &str) -> Vec<u8> {
        assert!(s.len() < 24);
        let mut out = vec![0x60 + s.len() as u8];
        out.extend(s.as_bytes());
        out
    }

    /// Every `--burn-version` against its whole preamble, written by hand: header, CBOR, padding.
    /// Two tensors written as "b" (Bool, 3 bytes) then "ab" (F32, 8 bytes): the map lists "ab"
    /// first (Rust's byte order; canonical CBOR would put "b" first); param_id 300 needs a
    /// two-byte head. 0.19 packs the data right after the CBOR; 0.20 and later align each tensor
    /// to 256 bytes; 0.21 and 0.22 spell Bool `{"Bool": "Native"}`.
    #[test]
    fn each_burn_version_has_its_golden_preamble() {
        for version in ["0.19", "0.20", "0.21", "0.22"] {
            let target = BurnTarget::parse(version).unwrap();
            let layout = PackLayout::plan(
                vec![
                    ("b".into(), DType::Bool, vec![3], Some(1)),
                    ("ab".into(), DType::F32, vec![2], Some(300)),
                ],
                md(&[("k", "v")]),
                target,
                Path::new("out.bpk"),
            )
            .unwrap();
            let aligned = version != "0.19";
            let (ab_start, ab_end): (&[u8], &[u8]) = if aligned {
                (&[0x19, 0x01, 0x00], &[0x19, 0x01, 0x08]) // 256, 264
            } else {
                (&[0x03], &[0x0b]) // 3, 11
            };
            let bool_dtype = if matches!(version, "0.21" | "0.22") {
                [vec![0xa1], text("Bool"), text("Native")].concat()
            } else {
                text("Bool")
            };
            let cbor = [
                vec![0xa2],
                text("tensors"),
                vec![0xa2],
                text("ab"),
                vec![0xa4],
                text("dtype"),
                text("F32"),
                text("shape"),
                vec![0x81, 0x02],
                text("data_offsets"),
                vec![0x82],
                ab_start.to_vec(),
                ab_end.to_vec(),
                text("param_id"),
                vec![0x19, 0x01, 0x2c],
                text("b"),
                vec![0xa4],
                text("dtype"),
                bool_dtype,
                text("shape"),
                vec![0x81, 0x03],
                text("data_offsets"),
                vec![0x82, 0x00, 0x03],
                text("param_id"),
                vec![0x01],
                text("metadata"),
                vec![0xa1],
                text("k"),
                text("v"),
            ]
            .concat();
            let mut preamble = vec![0x4e, 0x52, 0x55, 0x42, 0x01, 0x00];
            preamble.extend((cbor.len() as u32).to_le_bytes());
            preamble.extend(&cbor);
            let data_start = if aligned { 256 } else { preamble.len() as u64 };
            preamble.resize(data_start as usize, 0);
            assert_eq!(layout.preamble(), preamble, "--burn-version {version}");
            assert_eq!(layout.data_start, data_start, "--burn-version {version}");
            let offsets: Vec<(u64, u64)> = layout.tensors.iter().map(|t| (t.start, t.end)).collect();
            let ab = if aligned { (256, 264) } else { (3, 11) };
            assert_eq!(offsets, [(0, 3), ab], "--burn-version {version}");
            assert_eq!(layout.file_size, data_start + ab.1, "--burn-version {version}");
        }
    }

    fn plan_u8(sizes: &[u64], metadata: BTreeMap<String, String>) -> Result<PackLayout> {
        let specs = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("t{i}"), DType::U8, vec![*n], None));
        PackLayout::plan(specs.collect(), metadata, BurnTarget::V0_19, Path::new("out.bpk"))
    }

    #[test]
    fn byte_lengths_are_the_tensors_own() {
        let layout = PackLayout::plan(
            vec![
                ("a".into(), DType::F32, vec![3, 5], None),
                ("b".into(), DType::BF16, vec![7], None),
            ],
            BTreeMap::new(),
            BurnTarget::V0_21,
            Path::new("out.bpk"),
        )
        .unwrap();
        let lens: Vec<u64> = layout.tensors.iter().map(TensorPlan::byte_len).collect();
        assert_eq!(lens, [60, 14]);
        assert_eq!((layout.tensors[1].start, layout.tensors[1].end), (256, 270));
    }

    /// Each limit is the largest value Burn accepts: at the limit the plan is made, one past it is refused.
    #[test]
    fn each_limit_is_inclusive() {
        let count = |n: usize| plan_u8(&vec![0; n], BTreeMap::new());
        assert!(count(MAX_TENSOR_COUNT).is_ok());
        assert!(count(MAX_TENSOR_COUNT + 1).is_err());

        assert!(plan_u8(&[MAX_TENSOR_SIZE], BTreeMap::new()).is_ok());
        assert!(plan_u8(&[MAX_TENSOR_SIZE + 1], BTreeMap::new()).is_err());

        // Eleven tensors of about a tenth of the file limit (every size and offset a 9-byte CBOR
        // integer, so the metadata keeps its length while the last size moves), the last sized to end
        // the file exactly at the limit.
        let mut sizes = vec![MAX_FILE_SIZE / 11 - (1 << 20); 11];
        let first = plan_u8(&sizes, BTreeMap::new()).unwrap();
        sizes[10] = sizes[10] + MAX_FILE_SIZE - first.file_size;
        assert_eq!(plan_u8(&sizes, BTreeMap::new()).unwrap().file_size, MAX_FILE_SIZE);
        sizes[10] += 1;
        assert!(plan_u8(&sizes, BTreeMap::new()).is_err());

        // One metadata value sized so that the encoded metadata is exactly the limit.
        let value = |n: usize| md(&[("v", &"x".repeat(n))]);
        let probe = plan_u8(&[1], value(1 << 20)).unwrap().cbor.len() as u64;
        let at_limit = (1 << 20) + (MAX_METADATA_SIZE - probe) as usize;
        assert_eq!(
            plan_u8(&[1], value(at_limit)).unwrap().cbor.len() as u64,
            MAX_METADATA_SIZE
        );
        assert!(plan_u8(&[1], value(at_limit + 1)).is_err());
    }

    /// The worked example of the format reference (one F32 [2,2] tensor, param_id 42,
    /// BurnpackStore 0.21 metadata), written out byte by byte from the spec.
    #[test]
    fn preamble_matches_the_hand_written_burn_021_example() {
        let layout = PackLayout::plan(
            vec![("weight".into(), DType::F32, vec![2, 2], Some(42))],
            md(&[("format", "burnpack"), ("producer", "burn"), ("version", "0.21.0")]),
            BurnTarget::V0_21,
            Path::new("out.bpk"),
        )
        .unwrap();
        let mut expected: Vec<u8> = vec![0x4e, 0x52, 0x55, 0x42, 0x01, 0x00, 0x77, 0x00, 0x00, 0x00];
        expected.push(0xa2);
        expected.push(0x67);
        expected.extend(b"tensors");
        expected.push(0xa1);
        expected.push(0x66);
        expected.extend(b"weight");
        expected.push(0xa4);
        expected.push(0x65);
        expected.extend(b"dtype");
        expected.push(0x63);
        expected.extend(b"F32");
        expected.push(0x65);
        expected.extend(b"shape");
        expected.extend([0x82, 0x02, 0x02]);
        expected.push(0x6c);
        expected.extend(b"data_offsets");
        expected.extend([0x82, 0x00, 0x10]);
        expected.push(0x68);
        expected.extend(b"param_id");
        expected.extend([0x18, 0x2a]);
        expected.push(0x68);
        expected.extend(b"metadata");
        expected.push(0xa3);
        expected.push(0x66);
        expected.extend(b"format");
        expected.push(0x68);
        expected.extend(b"burnpack");
        expected.push(0x68);
        expected.extend(b"producer");
        expected.push(0x64);
        expected.extend(b"burn");
        expected.push(0x67);
        expected.extend(b"version");
        expected.push(0x66);
        expected.extend(b"0.21.0");
        assert_eq!(expected.len(), 0x81);
        expected.resize(256, 0);
        assert_eq!(layout.preamble(), expected);
        assert_eq!(layout.data_start, 256);
        assert_eq!(layout.file_size, 272);
    }

    /// A Q8S block-16 [16, 48] tensor's descriptor, CBOR written out by hand from cubecl-common
    /// 0.11's `QuantScheme` field order: the dtype `{"QFloat": {value, store, mode, tensor: null,
    /// block: {size: {storage: [16,1,1,1,1], len: 1}, dtype}}}`, and 768 + 48 * 4 = 960 bytes;
    /// the store is `"Native"` or `{"PackedU32": 0}` (serde's externally tagged newtype variant).
    #[test]
    fn quantized_descriptor_matches_the_hand_written_cbor_and_reads_back() {
        let text = |out: &mut Vec<u8>, s: &str| {
            out.push(0x60 + s.len() as u8);
            out.extend(s.as_bytes());
        };
        let native = {
            let mut v = Vec::new();
            text(&mut v, "Native");
            v
        };
        let packed = {
            let mut v = vec![0xa1];
            text(&mut v, "PackedU32");
            v.push(0x00);
            v
        };
        for (store, store_cbor) in [(QuantStore::Native, native), (QuantStore::PackedU32, packed)] {
            let layout = PackLayout::plan(
                vec![("w".into(), DType::Q8S(16, store), vec![16, 48], None)],
                BTreeMap::new(),
                BurnTarget::V0_22,
                Path::new("q.bpk"),
            )
            .unwrap();
            let mut expected = vec![0xa1];
            text(&mut expected, "tensors");
            expected.push(0xa1);
            text(&mut expected, "w");
            expected.push(0xa3);
            text(&mut expected, "dtype");
            expected.push(0xa1);
            text(&mut expected, "QFloat");
            expected.push(0xa5);
            text(&mut expected, "value");
            text(&mut expected, "Q8S");
            text(&mut expected, "store");
            expected.extend(&store_cbor);
            text(&mut expected, "mode");
            text(&mut expected, "Symmetric");
            text(&mut expected, "tensor");
            expected.push(0xf6); // null
            text(&mut expected, "block");
            expected.push(0xa2);
            text(&mut expected, "size");
            expected.push(0xa2);
            text(&mut expected, "storage");
            expected.extend([0x85, 0x10, 0x01, 0x01, 0x01, 0x01]);
            text(&mut expected, "len");
            expected.push(0x01);
            text(&mut expected, "dtype");
            text(&mut expected, "F32");
            text(&mut expected, "shape");
            expected.extend([0x82, 0x10, 0x18, 0x30]);
            text(&mut expected, "data_offsets");
            expected.extend([0x82, 0x00, 0x19, 0x03, 0xc0]);
            assert_eq!(layout.cbor, expected, "{store:?}");

            let mut bytes = layout.preamble();
            bytes.resize(layout.file_size as usize, 0);
            let index = index_from_bytes(Path::new("q.bpk"), &bytes).unwrap();
            assert_eq!(index.tensors[0].dtype, DType::Q8S(16, store));
            assert_eq!(index.tensors[0].end, 960);
        }
    }

    #[test]
    fn quantized_tensors_are_refused_for_older_readers_and_uneven_blocks() {
        let plan = |target, store, shape: Vec<u64>| {
            PackLayout::plan(
                vec![("w".into(), DType::Q8S(32, store), shape, None)],
                BTreeMap::new(),
                target,
                Path::new("q.bpk"),
            )
            .map_err(|e| e.to_string())
        };
        for store in [QuantStore::PackedU32, QuantStore::Native] {
            for old in [BurnTarget::V0_19, BurnTarget::V0_20, BurnTarget::V0_21] {
                assert!(plan(old, store, vec![2, 32])
                    .unwrap_err()
                    .contains("written for Burn 0.22"));
            }
            assert!(plan(BurnTarget::V0_22, store, vec![48, 32]).is_ok());
        }
        let uneven = plan(BurnTarget::V0_22, QuantStore::PackedU32, vec![16, 48]).unwrap_err();
        assert!(
            uneven.contains("'w' cannot be Q8S_B32: its last dimension (48) is not a whole number of blocks of 32"),
            "{uneven}"
        );
        let uneven = PackLayout::plan(
            vec![("w".into(), DType::Q8S(2, QuantStore::PackedU32), vec![4, 6], None)],
            BTreeMap::new(),
            BurnTarget::V0_22,
            Path::new("q.bpk"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            uneven.contains("'w' cannot be Q8S_B2: its last dimension (6) is not a multiple of 4"),
            "{uneven}"
        );
    }

    /// Schemes other than the ones we write are refused by name, not misread.
    #[test]
    fn other_quantization_schemes_are_not_read() {
        use ciborium::Value as V;
        let qfloat = |scheme: V| V::Map(vec![(V::Text("QFloat".into()), scheme)]);
        let scheme = |store| ciborium::Value::serialized(&QuantSchemeCbor::q8s(32, store)).unwrap();
        assert_eq!(
            decode_dtype(&qfloat(scheme(QuantStore::PackedU32))),
            Some(DType::Q8S(32, QuantStore::PackedU32))
        );
        assert_eq!(
            decode_dtype(&qfloat(scheme(QuantStore::Native))),
            Some(DType::Q8S(32, QuantStore::Native))
        );
        let with = |field: &str, value: V| {
            let V::Map(mut entries) = scheme(QuantStore::Native) else {
                unreachable!("a scheme is a map")
            };
            let entry = entries.iter_mut().find(|(k, _)| k.as_text() == Some(field)).unwrap();
            entry.1 = value;
            qfloat(V::Map(entries))
        };
        let packed = |key: &str, dim: u64| V::Map(vec![(V::Text(key.into()), V::Integer(dim.into()))]);
        let others = [
            ("value", V::Text("Q4S".into())),
            ("mode", V::Text("Lookup".into())),
            ("store", V::Text("PackedU32".into())),
            ("store", packed("PackedU32", 1)),
            ("store", packed("PackedNative", 0)),
            ("store", V::Text("U8".into())),
        ];
        for (field, value) in others {
            let shown = format!("{field}={value:?}");
            assert_eq!(decode_dtype(&with(field, value)), None, "{shown}");
        }
        assert_eq!(
            decode_dtype(&with("store", packed("PackedU32", 0))),
            Some(DType::Q8S(32, QuantStore::PackedU32))
        );
        let mut global = QuantSchemeCbor::q8s(32, QuantStore::Native);
        global.tensor = Some("F32".into());
        assert_eq!(
            decode_dtype(&qfloat(ciborium::Value::serialized(&global).unwrap())),
            None
        );
        let mut two_dims = QuantSchemeCbor::q8s(32, QuantStore::PackedU32);
        two_dims.block.as_mut().unwrap().size = BlockSizeCbor {
            storage: [4, 32, 1, 1, 1],
            len: 2,
        };
        assert_eq!(
            decode_dtype(&qfloat(ciborium::Value::serialized(&two_dims).unwrap())),
            None
        );
        let zero = ciborium::Value::serialized(&QuantSchemeCbor::q8s(0, QuantStore::PackedU32)).unwrap();
        assert_eq!(decode_dtype(&qfloat(zero)), None);
        // Burn drops leading 1s: a block of one value is `{storage: [1, 1, 1, 1, 1], len: 0}`,
        // and `len: 1` there is not how Burn writes it.
        let one = ciborium::Value::serialized(&QuantSchemeCbor::q8s(1, QuantStore::Native)).unwrap();
        assert_eq!(
            decode_dtype(&qfloat(one.clone())),
            Some(DType::Q8S(1, QuantStore::Native))
        );
        let len_of = |v: &ciborium::Value| format!("{v:?}").contains("Text(\"len\"), Integer(Integer(0))");
        assert!(len_of(&one), "{one:?}");
        let mut spelled_out = QuantSchemeCbor::q8s(1, QuantStore::Native);
        spelled_out.block.as_mut().unwrap().size.len = 1;
        assert_eq!(
            decode_dtype(&qfloat(ciborium::Value::serialized(&spelled_out).unwrap())),
            None
        );
    }

    #[test]
    fn two_tensor_example_offsets_and_key_order() {
        // Reference: struct M { fc: Linear }, weight [3,2] written before bias [2].
        let layout = PackLayout::plan(
            vec![
                ("fc.weight".into(), DType::F32, vec![3, 2], Some(1)),
                ("fc.bias".into(), DType::F32, vec![2], Some(2)),
            ],
            BTreeMap::new(),
            BurnTarget::V0_21,
            Path::new("out.bpk"),
        )
        .unwrap();
        assert_eq!((layout.tensors[0].start, layout.tensors[0].end), (0, 24));
        assert_eq!((layout.tensors[1].start, layout.tensors[1].end), (256, 264));
        // bias sorts before weight in the CBOR map although it is written second.
        let bias = layout.cbor.windows(7).position(|w| w == b"fc.bias").unwrap();
        let weight = layout.cbor.windows(9).position(|w| w == b"fc.weight").unwrap();
        assert!(bias < weight);
        // data_offsets of the bias: array(2) [256, 264] with 2-byte integer heads.
        assert!(layout
            .cbor
            .windows(7)
            .any(|w| w == [0x82, 0x19, 0x01, 0x00, 0x19, 0x01, 0x08]));
        assert_eq!(layout.cbor[0], 0xa1, "no metadata key when the map is empty");
    }

    #[test]
    fn no_metadata_no_param_id_is_53_bytes() {
        let layout = PackLayout::plan(
            vec![("weight".into(), DType::F32, vec![2, 2], None)],
            BTreeMap::new(),
            BurnTarget::V0_21,
            Path::new("out.bpk"),
        )
        .unwrap();
        let mut expected = vec![0xa1, 0x67];
        expected.extend(b"tensors");
        expected.extend([0xa1, 0x66]);
        expected.extend(b"weight");
        expected.extend([0xa3, 0x65]);
        expected.extend(b"dtype");
        expected.push(0x63);
        expected.extend(b"F32");
        expected.push(0x65);
        expected.extend(b"shape");
        expected.extend([0x82, 2, 2, 0x6c]);
        expected.extend(b"data_offsets");
        expected.extend([0x82, 0x00, 0x10]);
        assert_eq!(layout.cbor, expected);
        assert_eq!(layout.cbor.len(), 53);
    }

    #[test]
    fn bool_encoding_depends_on_target() {
        let plan = |t| {
            PackLayout::plan(
                vec![("mask".into(), DType::Bool, vec![3], Some(7))],
                BTreeMap::new(),
                t,
                Path::new("out.bpk"),
            )
            .unwrap()
        };
        let mut v21 = vec![0x65];
        v21.extend(b"dtype");
        v21.push(0xa1);
        v21.push(0x64);
        v21.extend(b"Bool");
        v21.push(0x66);
        v21.extend(b"Native");
        v21.push(0x65);
        v21.extend(b"shape");
        v21.extend([0x81, 0x03]);
        assert!(plan(BurnTarget::V0_21).cbor.windows(v21.len()).any(|w| w == v21));
        let mut v20 = vec![0x65];
        v20.extend(b"dtype");
        v20.push(0x64);
        v20.extend(b"Bool");
        v20.push(0x65);
        v20.extend(b"shape");
        v20.extend([0x81, 0x03]);
        assert!(plan(BurnTarget::V0_20).cbor.windows(v20.len()).any(|w| w == v20));
    }

    #[test]
    fn v019_layout_has_no_padding() {
        let layout = PackLayout::plan(
            vec![("weight".into(), DType::F32, vec![2, 2], Some(42))],
            md(&[("format", "burnpack"), ("producer", "burn"), ("version", "0.19.1")]),
            BurnTarget::V0_19,
            Path::new("out.bpk"),
        )
        .unwrap();
        assert_eq!(layout.data_start, 129);
        assert_eq!(layout.file_size, 145);
    }

    #[test]
    fn empty_tensor_still_pads_and_a_pack_ends_at_the_last_start() {
        let layout = PackLayout::plan(
            vec![
                ("a".into(), DType::U8, vec![3], None),
                ("empty".into(), DType::F32, vec![0, 5], None),
            ],
            BTreeMap::new(),
            BurnTarget::V0_21,
            Path::new("out.bpk"),
        )
        .unwrap();
        assert_eq!((layout.tensors[1].start, layout.tensors[1].end), (256, 256));
        assert_eq!(layout.file_size, layout.data_start + 256);
    }

    #[test]
    fn rejects_duplicates_and_oversized_tensors() {
        let dup = PackLayout::plan(
            vec![
                ("a".into(), DType::U8, vec![1], None),
                ("a".into(), DType::U8, vec![1], None),
            ],
            BTreeMap::new(),
            BurnTarget::V0_21,
            Path::new("out.bpk"),
        );
        assert_eq!(
            dup.unwrap_err().to_string(),
            "out.bpk: tensor 'a' appears twice in the pack"
        );
        let big = PackLayout::plan(
            vec![("big".into(), DType::F32, vec![3, 1024, 1024, 1024], None)],
            BTreeMap::new(),
            BurnTarget::V0_21,
            Path::new("out.bpk"),
        );
        assert!(big.unwrap_err().to_string().contains("refuses tensors over"));
    }

    #[test]
    fn planning_errors_name_the_pack() {
        let specs = (0..=MAX_TENSOR_COUNT)
            .map(|i| (format!("t{i}"), DType::U8, vec![1], None))
            .collect();
        let err = PackLayout::plan(specs, BTreeMap::new(), BurnTarget::V0_21, Path::new("/o/p.bpk"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "/o/p.bpk: 100001 tensors; Burn's reader accepts at most 100000");
    }

    /// A pack whose CBOR is `tensors` (a map given as entries, duplicates kept) plus `metadata`.
    fn pack_bytes(tensors: Vec<(&str, ciborium::Value)>, metadata: Vec<(&str, &str)>) -> Vec<u8> {
        use ciborium::Value as V;
        let entries = |pairs: Vec<(&str, V)>| V::Map(pairs.into_iter().map(|(k, v)| (V::Text(k.into()), v)).collect());
        let root = entries(vec![
            ("tensors", entries(tensors)),
            (
                "metadata",
                entries(metadata.into_iter().map(|(k, v)| (k, V::Text(v.into()))).collect()),
            ),
        ]);
        let mut cbor = Vec::new();
        ciborium::into_writer(&root, &mut cbor).unwrap();
        let mut bytes = MAGIC.to_le_bytes().to_vec();
        bytes.extend(FORMAT_VERSION.to_le_bytes());
        bytes.extend((cbor.len() as u32).to_le_bytes());
        bytes.extend(cbor);
        bytes.resize(align_up(bytes.len() as u64, TENSOR_ALIGNMENT) as usize + 256 + 4, 0);
        bytes
    }

    fn descriptor(dtype: ciborium::Value, start: u64, end: u64) -> ciborium::Value {
        use ciborium::Value as V;
        V::Map(vec![
            (V::Text("dtype".into()), dtype),
            (V::Text("shape".into()), V::Array(vec![V::Integer(1.into())])),
            (
                V::Text("data_offsets".into()),
                V::Array(vec![V::Integer(start.into()), V::Integer(end.into())]),
            ),
        ])
    }

    /// A header as bytes: magic, format version, metadata size.
    fn header(version: u16, metadata_size: u32) -> Vec<u8> {
        let mut out = vec![0x4e, 0x52, 0x55, 0x42];
        out.extend(version.to_le_bytes());
        out.extend(metadata_size.to_le_bytes());
        out
    }

    /// Each of the header's limits on both sides of its edge (the reference's section 5).
    #[test]
    fn the_header_is_checked_at_each_edge() {
        let p = Path::new("p.bpk");
        let check = |header: &[u8], file_size: u64| check_header(p, header, file_size).map_err(|e| e.to_string());
        let max_file = 107_374_182_400;
        assert_eq!(check(&header(1, 6), max_file), Ok(6));
        assert!(check(&header(1, 6), max_file + 1)
            .unwrap_err()
            .contains("over Burn's limit"));
        assert!(check(&header(1, 6)[..9], 9)
            .unwrap_err()
            .contains("shorter than the 10-byte header"));
        assert_eq!(check(&header(0, 0), 10), Ok(0), "version 0 is older, not newer");
        assert!(check(&header(2, 0), 10).unwrap_err().contains("format version 2"));
        let max_metadata = 104_857_600;
        assert_eq!(
            check(&header(1, max_metadata), 10 + max_metadata as u64),
            Ok(max_metadata as u64)
        );
        let over = check(&header(1, max_metadata + 1), 20 + max_metadata as u64).unwrap_err();
        assert!(over.contains("exceeds the limit"), "{over}");
        // The metadata must fit in the file: exactly fitting is fine, one byte short is not.
        assert_eq!(check(&header(1, 6), 16), Ok(6));
        assert!(check(&header(1, 6), 15)
            .unwrap_err()
            .contains("truncated: metadata needs 16 bytes"));
    }

    #[test]
    fn dtypes_are_read_as_each_burn_version_spells_them() {
        use ciborium::Value as V;
        let text = |s: &str| V::Text(s.into());
        let map = |pairs: Vec<(V, V)>| V::Map(pairs);
        let cases = [
            (text("F32"), Some(DType::F32)),
            (text("BF16"), Some(DType::BF16)),
            (text("Bool"), Some(DType::Bool)),
            (text("f32"), None),
            (text("Flex32"), None),
            (map(vec![(text("Bool"), text("Native"))]), Some(DType::Bool)),
            (map(vec![(text("Bool"), text("U8"))]), Some(DType::Bool)),
            (map(vec![(text("Bool"), text("Packed"))]), None),
            (map(vec![(text("F32"), text("Native"))]), None),
            (
                map(vec![(text("Bool"), text("Native")), (text("Bool"), text("U8"))]),
                None,
            ),
            (map(vec![(text("Bool"), V::Integer(1.into()))]), None),
            (V::Integer(3.into()), None),
        ];
        for (value, dtype) in cases {
            assert_eq!(decode_dtype(&value), dtype, "{value:?}");
        }
    }

    #[test]
    fn values_and_layouts_are_named_in_plain_words() {
        use ciborium::Value as V;
        let cases = [
            (V::Text("x\n".into()), "'x\\n'"),
            (V::Integer((-3).into()), "-3"),
            (V::Map(vec![]), "(a map)"),
            (V::Array(vec![]), "(an array)"),
            (V::Bytes(vec![1]), "(a byte string)"),
            (V::Float(1.5), "1.5"),
            (V::Bool(true), "true"),
            (V::Null, "null"),
            (V::Tag(1, Box::new(V::Null)), "(a tagged value)"),
        ];
        for (value, words) in cases {
            assert_eq!(describe_cbor_value(&value), words);
        }
        assert_eq!(Layout::Aligned.describe(), "0.20+ (256-byte aligned)");
        assert_eq!(Layout::Unaligned019.describe(), "0.19 (unaligned)");
        // A `tensors` that is not a map: the message says what was expected.
        let mut cbor = Vec::new();
        ciborium::into_writer(&V::Map(vec![(V::Text("tensors".into()), V::Array(vec![]))]), &mut cbor).unwrap();
        let mut bytes = header(1, cbor.len() as u32);
        bytes.extend(cbor);
        let err = index_from_bytes(Path::new("p.bpk"), &bytes).unwrap_err().to_string();
        assert!(err.contains("invalid type: sequence, expected map"), "{err}");
        // ciborium words that itself; a deserializer that asks the visitor gets its words.
        let number = serde::de::value::U64Deserializer::<serde::de::value::Error>::new(3);
        let err = entries::<_, u64>(number).unwrap_err().to_string();
        assert_eq!(err, "invalid type: integer `3`, expected a map");
    }

    /// A pack as bytes from its tensors (name, dtype, shape, start, end): the header, the CBOR,
    /// zero padding to `data_start` (`None`: right after the CBOR) and `data_len` zero bytes.
    fn raw_pack(tensors: &[(&str, &str, u64, u64, u64)], data_start: Option<usize>, data_len: usize) -> Vec<u8> {
        use ciborium::Value as V;
        let int = |n: u64| V::Integer(n.into());
        let entries = tensors
            .iter()
            .map(|&(name, dtype, len, start, end)| {
                let d = V::Map(vec![
                    (V::Text("dtype".into()), V::Text(dtype.into())),
                    (V::Text("shape".into()), V::Array(vec![int(len)])),
                    (V::Text("data_offsets".into()), V::Array(vec![int(start), int(end)])),
                ]);
                (V::Text(name.into()), d)
            })
            .collect();
        let mut cbor = Vec::new();
        ciborium::into_writer(&V::Map(vec![(V::Text("tensors".into()), V::Map(entries))]), &mut cbor).unwrap();
        let mut bytes = header(1, cbor.len() as u32);
        bytes.extend(cbor);
        bytes.resize(data_start.unwrap_or(bytes.len()) + data_len, 0);
        bytes
    }

    fn read(bytes: &[u8]) -> std::result::Result<PackIndex, String> {
        index_from_bytes(Path::new("p.bpk"), bytes).map_err(|e| e.to_string())
    }

    /// The reader's checks of each descriptor and of the file's length, at their edges.
    #[test]
    fn the_reader_checks_offsets_sizes_and_length_at_each_edge() {
        // An empty tensor (start == end) is fine; end before start is not.
        let index = read(&raw_pack(&[("e", "F32", 0, 0, 0)], Some(256), 0)).unwrap();
        assert_eq!((index.data_start, index.tensors[0].end), (256, 0));
        let err = read(&raw_pack(&[("e", "F32", 1, 8, 4)], Some(256), 8)).unwrap_err();
        assert!(err.contains("'e': corrupt offsets: end 4 < start 8"), "{err}");
        // Burn's per-tensor limit counts the tensor's own bytes (end - start), limit included.
        let max = 10_737_418_240u64;
        let err = read(&raw_pack(&[("big", "U8", max, 0, max)], Some(256), 0)).unwrap_err();
        assert!(
            err.contains("truncated"),
            "exactly at the limit passes that check: {err}"
        );
        let err = read(&raw_pack(&[("big", "U8", max + 1, 0, max + 1)], Some(256), 0)).unwrap_err();
        assert!(
            err.contains("'big': 10737418241 bytes, over Burn's per-tensor limit"),
            "{err}"
        );
        let far = 2 * max; // a small tensor far into the file
        let err = read(&raw_pack(&[("far", "F32", 1, far, far + 4)], Some(256), 0)).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        // A file of the wrong length: the error names the layout the offsets imply, and the length
        // it needs. Aligned: 256 + 260. Unaligned: header 10 + CBOR 82 (map 1, "tensors" 8, map 1,
        // two entries of 2 + 34: map 1, "dtype" 6, "U8" 3, "shape" 6, [n] 2, "data_offsets" 13,
        // [s, e] 3) + 7.
        let aligned = [("a", "U8", 4, 0, 4), ("b", "U8", 4, 256, 260)];
        let bytes = raw_pack(&aligned, Some(256), 259);
        assert_eq!(bytes.len(), 256 + 259);
        let err = read(&bytes).unwrap_err();
        assert!(
            err.contains("the 0.20+ (256-byte aligned) layout needs 516 bytes but the file has 515"),
            "{err}"
        );
        let err = read(&raw_pack(&aligned, Some(256), 262)).unwrap_err();
        assert!(
            err.contains("2 unexpected bytes after the last tensor (0.20+ (256-byte aligned) layout ends at 516)"),
            "{err}"
        );
        let unaligned = [("a", "U8", 3, 0, 3), ("b", "U8", 4, 3, 7)];
        assert_eq!(
            read(&raw_pack(&unaligned, None, 7)).unwrap().layout,
            Layout::Unaligned019
        );
        let err = read(&raw_pack(&unaligned, None, 9)).unwrap_err();
        assert!(
            err.contains("2 unexpected bytes after the last tensor (0.19 (unaligned) layout ends at 99)"),
            "{err}"
        );
        let err = read(&raw_pack(&unaligned, None, 6)).unwrap_err();
        assert!(
            err.contains("the 0.19 (unaligned) layout needs 99 bytes but the file has 98"),
            "{err}"
        );
    }

    /// Burn's tensor-count limit, exactly at it and one over.
    #[test]
    fn the_reader_accepts_exactly_the_tensor_count_limit() {
        let names: Vec<String> = (0..=100_000).map(|i| format!("t{i}")).collect();
        let tensors: Vec<(&str, &str, u64, u64, u64)> = names.iter().map(|n| (n.as_str(), "U8", 0, 0, 0)).collect();
        let bytes = raw_pack(&tensors[..100_000], None, 0);
        let padded = align_up(bytes.len() as u64, 256) as usize;
        let mut aligned = bytes.clone();
        aligned.resize(padded, 0);
        assert_eq!(read(&aligned).unwrap().tensors.len(), 100_000);
        let err = read(&raw_pack(&tensors, None, 0)).unwrap_err();
        assert!(err.contains("100001 tensors, over Burn's limit of 100000"), "{err}");
    }

    #[test]
    fn reader_refuses_duplicate_keys_and_speaks_plain_words() {
        use ciborium::Value as V;
        let p = Path::new("/in/p.bpk");
        let f32 = || V::Text("F32".into());
        let read = |bytes: Vec<u8>| index_from_bytes(p, &bytes).map(|_| ()).unwrap_err().to_string();
        let good = pack_bytes(
            vec![("a", descriptor(f32(), 0, 4)), ("b", descriptor(f32(), 256, 260))],
            vec![("k", "v")],
        );
        assert!(index_from_bytes(p, &good).is_ok());
        let twice = read(pack_bytes(
            vec![("a", descriptor(f32(), 0, 4)), ("a", descriptor(f32(), 256, 260))],
            vec![],
        ));
        assert_eq!(twice, "/in/p.bpk: tensor 'a': appears twice in the metadata");
        let key_twice = read(pack_bytes(
            vec![("a", descriptor(f32(), 0, 4)), ("b", descriptor(f32(), 256, 260))],
            vec![("k", "1"), ("k", "2")],
        ));
        assert_eq!(key_twice, "/in/p.bpk: metadata key 'k' appears twice");
        let sizes = read(pack_bytes(
            vec![("a", descriptor(f32(), 0, 8)), ("b", descriptor(f32(), 256, 260))],
            vec![],
        ));
        assert_eq!(sizes, "/in/p.bpk: tensor 'a': holds 8 bytes but F32 [1] needs 4");
        let dtype = read(pack_bytes(vec![("a", descriptor(V::Text("F99".into()), 0, 4))], vec![]));
        assert_eq!(dtype, "/in/p.bpk: tensor 'a': unsupported dtype 'F99'");
        let mut missing = pack_bytes(vec![("a", descriptor(f32(), 0, 4))], vec![]);
        let at = missing.windows(5).position(|w| w == b"shape").unwrap();
        missing[at..at + 5].copy_from_slice(b"shapf");
        let missing = read(missing);
        assert!(
            missing.starts_with("/in/p.bpk: invalid CBOR metadata: missing field `shape`"),
            "{missing}"
        );
        for text in [twice, sizes, dtype, missing] {
            assert!(!text.contains("Some(") && !text.contains("Semantic") && !text.contains("Text("));
        }
    }

    #[test]
    fn index_round_trips_and_detects_layout() {
        for target in [BurnTarget::V0_19, BurnTarget::V0_21] {
            let layout = PackLayout::plan(
                vec![
                    ("z".into(), DType::BF16, vec![3], Some(u64::MAX)),
                    ("a".into(), DType::Bool, vec![2, 1], None),
                ],
                md(&[("k", "v")]),
                target,
                Path::new("out.bpk"),
            )
            .unwrap();
            let index = parse_index(Path::new("x.bpk"), &layout.cbor, layout.file_size).unwrap();
            let expected = if target == BurnTarget::V0_19 {
                Layout::Unaligned019
            } else {
                Layout::Aligned
            };
            assert_eq!(index.layout, expected);
            assert_eq!(index.tensors[0].name, "z");
            assert_eq!(index.tensors[0].param_id, Some(u64::MAX));
            assert_eq!(index.tensors[1].dtype, DType::Bool);
            assert_eq!(
                index.tensors[1].file_offset,
                layout.data_start + layout.tensors[1].start
            );
            assert_eq!(index.metadata, md(&[("k", "v")]));
            let short = parse_index(Path::new("x.bpk"), &layout.cbor, layout.file_size - 1);
            assert!(short.unwrap_err().to_string().contains("x.bpk"));
        }
    }
}
