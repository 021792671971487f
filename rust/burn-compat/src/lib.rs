//! Checks of heartmula-burn packs against the real Burn crates, one Burn release per build:
//! `--features burn-021` (burn-store 0.21.0, what HeartMuLa runtimes use today),
//! `--features burn-022` (0.22.1, the newest stable release) or `--features burn-023`
//! (0.23.0-pre.1, a pre-release of the next one). Development only, not in the wheel.
//!
//! The fixtures (packs made by our CLI, the tensors they must hold, param_ids and metadata) are
//! written by `tests/test_burn_compat.py`, which then runs this crate's tests with
//! `HEARTMULA_COMPAT_FIXTURES` pointing at them.

#[cfg(any(
    all(feature = "burn-021", feature = "burn-022"),
    all(feature = "burn-021", feature = "burn-023"),
    all(feature = "burn-022", feature = "burn-023"),
))]
compile_error!("build with one of the features burn-021, burn-022, burn-023 at a time");
#[cfg(not(any(feature = "burn-021", feature = "burn-022", feature = "burn-023")))]
compile_error!("build with --features burn-021, --features burn-022 or --features burn-023");

#[cfg(feature = "burn-021")]
pub use {
    burn_core_021 as burn_core, burn_flex_021 as burn_flex, burn_nn_021 as burn_nn, burn_store_021 as burn_store,
    burn_tensor_021 as burn_tensor,
};
#[cfg(feature = "burn-022")]
pub use {
    burn_core_022 as burn_core, burn_nn_022 as burn_nn, burn_pack_022 as burn_pack, burn_store_022 as burn_store,
    burn_tensor_022 as burn_tensor,
};
#[cfg(feature = "burn-023")]
pub use {
    burn_core_023 as burn_core, burn_nn_023 as burn_nn, burn_pack_023 as burn_pack, burn_store_023 as burn_store,
    burn_tensor_023 as burn_tensor,
};

pub mod bench;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn_tensor::{BoolStore, DType};

#[cfg(feature = "burn-021")]
pub const BURN_VERSION: &str = "0.21";
#[cfg(all(feature = "burn-022", not(feature = "wgpu")))]
pub const BURN_VERSION: &str = "0.22";
/// 0.22.1 with its wgpu backend: tensors are quantized, loaded and run on wgpu (Vulkan).
#[cfg(feature = "wgpu")]
pub const BURN_VERSION: &str = "0.22-wgpu";
/// A pre-release: the version is spelled out in full wherever results are reported.
#[cfg(feature = "burn-023")]
pub const BURN_VERSION: &str = "0.23.0-pre.1";

/// One fixture: a pack made by our CLI and the tensors it must hold.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub pack: PathBuf,
    /// A safetensors file holding every tensor exactly as the pack must (same names, dtypes, bytes).
    pub expected: PathBuf,
    /// Tensor names in data order.
    pub order: Vec<String>,
    pub param_ids: BTreeMap<String, u64>,
    pub metadata: BTreeMap<String, String>,
    /// config.json of a HeartMuLa checkpoint, for the module-loading check.
    pub heartmula_config: Option<PathBuf>,
    /// Tensors the pack holds quantized (Q8S, this block, F32 scales): their expected bytes are
    /// what Burn's own `quantize_dynamic` makes of the expected values. Burn 0.22 and later only.
    pub quantize: BTreeMap<String, u8>,
    /// Those of them stored `Native` (one i8 per value); the others are `PackedU32(0)`.
    pub native: std::collections::BTreeSet<String>,
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(std::env::var("HEARTMULA_COMPAT_FIXTURES").expect(
        "HEARTMULA_COMPAT_FIXTURES is not set: run these checks through tests/test_burn_compat.py (tests/run.sh does)",
    ))
}

pub fn load_cases(dir: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(dir.join("cases.json")).expect("cases.json");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("cases.json is JSON");
    let cases: Vec<Case> = doc
        .as_array()
        .expect("a list of cases")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            pack: dir.join(c["pack"].as_str().unwrap()),
            expected: dir.join(c["expected"].as_str().unwrap()),
            order: c["order"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_string())
                .collect(),
            param_ids: c["param_ids"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect())
                .unwrap_or_default(),
            metadata: c["metadata"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            heartmula_config: c["heartmula_config"].as_str().map(|p| dir.join(p)),
            quantize: c["quantize"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap() as u8)).collect())
                .unwrap_or_default(),
            native: c["native"]
                .as_array()
                .map(|names| names.iter().map(|n| n.as_str().unwrap().to_string()).collect())
                .unwrap_or_default(),
        })
        // Burn 0.21 spells quantization schemes differently: its reader does not read these packs.
        .filter(|c: &Case| BURN_VERSION != "0.21" || c.quantize.is_empty())
        .collect();
    assert!(!cases.is_empty(), "no fixtures in {}", dir.display());
    cases
}

/// Burn's dtype for a safetensors dtype (bools are stored natively, one byte each).
pub fn burn_dtype(dtype: safetensors::Dtype) -> DType {
    use safetensors::Dtype as S;
    match dtype {
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
        S::BOOL => DType::Bool(BoolStore::Native),
        other => panic!("no Burn dtype for {other:?}"),
    }
}

/// A tensor as Burn sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct BurnTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// The expected tensors of a case: name -> tensor, those named in `case.quantize` quantized by Burn.
pub fn expected_tensors(case: &Case) -> BTreeMap<String, BurnTensor> {
    let bytes = std::fs::read(&case.expected).expect("expected safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let t = BurnTensor {
                dtype: burn_dtype(view.dtype()),
                shape: view.shape().to_vec(),
                bytes: view.data().to_vec(),
            };
            let t = match case.quantize.get(&name) {
                Some(&block) => burn_quantize(t, block, case.native.contains(&name)),
                None => t,
            };
            (name, t)
        })
        .collect()
}

/// Whether this release's Flex `quantize_dynamic` gives Burn 0.22.1's bytes, which our q8 packs
/// hold. 0.23.0-pre.1's Flex quantizer divides by the scale (0.22.1 multiplies by its reciprocal)
/// and rounds ties to even (0.22.1: away from zero): it reads and loads our q8 packs, and the
/// values in which its own quantization differs are counted (`quantized_difference`), not asserted.
pub const QUANTIZES_AS_0_22: bool = cfg!(feature = "burn-022");

/// Whether Burn quantized this case's tensors as our packs do (0.22.1 on Flex). 0.22.1's wgpu
/// kernel (cubek-quant 0.3.1) divides by the scale and rounds ties to even, as 0.23's Flex does,
/// and treats blocks holding NaN or infinities otherwise: the cases it quantized are counted.
pub fn quantizes_as_ours(case: &Case) -> bool {
    let on_flex = || !cfg!(feature = "wgpu") || case.quantize.keys().all(|name| case.native.contains(name));
    case.quantize.is_empty() || QUANTIZES_AS_0_22 && on_flex()
}

/// How a quantized tensor `ours` differs from Burn's quantization `burn` of the same values:
/// (values differing, values, largest code step, scales differing, scales).
pub fn quantized_difference(ours: &BurnTensor, burn: &BurnTensor, block: u8) -> [usize; 5] {
    let values: usize = ours.shape.iter().product();
    let scales = values / block as usize;
    let (mut values_differing, mut largest_step) = (0, 0);
    for (a, b) in ours.bytes[..values].iter().zip(&burn.bytes[..values]) {
        if a != b {
            values_differing += 1;
            largest_step = largest_step.max((*a as i8 as i32 - *b as i8 as i32).unsigned_abs() as usize);
        }
    }
    let scales_differing = ours.bytes[values..]
        .chunks(4)
        .zip(burn.bytes[values..].chunks(4))
        .filter(|(a, b)| a != b)
        .count();
    [values_differing, values, largest_step, scales_differing, scales]
}

/// The scheme a q8 pack holds: `{Q8S, PackedU32(0) or Native, Symmetric, tensor: None, block:
/// [block] F32}`.
#[cfg(any(feature = "burn-022", feature = "burn-023"))]
pub fn q8_scheme(block: u8, native: bool) -> burn_tensor::quantization::QuantScheme {
    use burn_tensor::quantization::{QuantScheme, QuantStore, QuantValue, ScaleDtype};
    let store = if native {
        QuantStore::Native
    } else {
        QuantStore::PackedU32(0)
    };
    QuantScheme::default()
        .with_value(QuantValue::Q8S)
        .with_store(store)
        .per_block([block], ScaleDtype::F32)
}

/// The backend Burn quantizes a tensor on, by store: `Native` on Flex, the CPU backend, which
/// writes that store; `PackedU32(0)` on the default device, which is wgpu when the crate is built
/// with it (Burn's wgpu quantizer writes that store itself) and Flex otherwise.
#[cfg(any(feature = "burn-022", feature = "burn-023"))]
fn quantizer_device(native: bool) -> burn_tensor::Device {
    if native {
        burn_tensor::Device::flex()
    } else {
        Default::default()
    }
}

/// Which backend quantized a case's tensors, for the report: "flex", "wgpu", both, or "".
#[cfg(any(feature = "burn-022", feature = "burn-023"))]
pub fn quantized_on(case: &Case) -> String {
    let mut names: Vec<String> = case
        .quantize
        .keys()
        .map(|name| {
            let device = format!("{:?}", quantizer_device(case.native.contains(name)));
            ["Wgpu", "Flex"]
                .into_iter()
                .find(|backend| device.contains(backend))
                .map_or(device, str::to_lowercase)
        })
        .collect();
    names.sort();
    names.dedup();
    names.join(" and ")
}

#[cfg(feature = "burn-021")]
pub fn quantized_on(_case: &Case) -> String {
    String::new()
}

/// Burn's own quantizer: the tensor widened to f32 as Burn converts it, then `quantize_dynamic`
/// on the backend `quantizer_device` picks, read back as the bytes Burn's writer stores.
///
/// Flex stores whatever scheme it is asked for `Native` (burn-store 0.22.1 `bridge.rs` says so
/// too). Where it does, a `PackedU32(0)` tensor is laid out from Flex's values and scales by
/// Burn's own `TensorData::quantized` for that scheme, so Burn, not this crate, decides the
/// packed bytes; on wgpu the quantizer's own output is taken as it is.
#[cfg(any(feature = "burn-022", feature = "burn-023"))]
pub fn burn_quantize(t: BurnTensor, block: u8, native: bool) -> BurnTensor {
    use burn_tensor::quantization::{QuantStore, QuantizedBytes};
    use burn_tensor::{Tensor, TensorData};
    let device = quantizer_device(native);
    let data = TensorData::from_bytes_vec(t.bytes, t.shape.clone(), t.dtype).convert::<f32>();
    let rank = t.shape.len();
    assert!(rank == 2, "the quantized fixtures are matrices (got rank {rank})");
    let scheme = q8_scheme(block, native);
    let mut quantized = Tensor::<2>::from_data(data, &device)
        .quantize_dynamic(&scheme)
        .into_data();
    match quantized.dtype() {
        DType::QFloat(got) if got == scheme => {}
        DType::QFloat(got) if got.store == QuantStore::Native && !native => {
            let (values, scales) = QuantizedBytes {
                bytes: quantized.into_bytes(),
                scheme: got,
                shape: t.shape.clone().into(),
            }
            .into_vec_i8();
            quantized = TensorData::quantized(values, t.shape.clone(), scheme, &scales.block, None);
        }
        other => panic!("Burn quantized to {other:?}, not {scheme:?}"),
    }
    BurnTensor {
        dtype: quantized.dtype(),
        shape: t.shape,
        bytes: quantized.as_bytes().to_vec(),
    }
}

#[cfg(feature = "burn-021")]
pub fn burn_quantize(_t: BurnTensor, _block: u8, _native: bool) -> BurnTensor {
    unreachable!("quantized cases are filtered out for Burn 0.21")
}

/// What Burn's own reader finds in a pack: tensors, and where the public API exposes them,
/// param_ids and the metadata map (burn-store 0.21 keeps both private).
pub struct BurnRead {
    pub tensors: BTreeMap<String, BurnTensor>,
    pub param_ids: Option<BTreeMap<String, Option<u64>>>,
    pub metadata: Option<BTreeMap<String, String>>,
}

#[cfg(feature = "burn-021")]
pub fn burn_read(path: &Path) -> BurnRead {
    use burn_store::{BurnpackStore, ModuleStore};
    let mut store = BurnpackStore::from_file(path).auto_extension(false);
    let snapshots = store
        .get_all_snapshots()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tensors = snapshots
        .iter()
        .map(|(name, snap)| {
            let data = snap.to_data().unwrap_or_else(|e| panic!("'{name}': {e:?}"));
            let t = BurnTensor {
                dtype: snap.dtype,
                shape: snap.shape.as_slice().to_vec(),
                bytes: data.as_bytes().to_vec(),
            };
            (name.clone(), t)
        })
        .collect();
    BurnRead {
        tensors,
        param_ids: None,
        metadata: None,
    }
}

#[cfg(feature = "burn-022")]
pub fn burn_read(path: &Path) -> BurnRead {
    use burn_store::{BurnpackStore, ModuleStore};
    let mut store = BurnpackStore::from_file(path).auto_extension(false);
    let all = store
        .get_all_tensors()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut tensors = BTreeMap::new();
    let mut param_ids = BTreeMap::new();
    for (name, t) in all {
        let bytes = t.to_bytes().unwrap_or_else(|e| panic!("'{name}': {e:?}"));
        tensors.insert(
            name.clone(),
            BurnTensor {
                dtype: t.dtype,
                shape: t.shape.as_slice().to_vec(),
                bytes: bytes.to_vec(),
            },
        );
        param_ids.insert(name.clone(), t.param_id);
    }
    let reader = burn_pack::Reader::from_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    BurnRead {
        tensors,
        param_ids: Some(param_ids),
        metadata: Some(reader.metadata().clone()),
    }
}

/// 0.23 hands tensors out as `StoreTensor`s (accessor methods instead of 0.22's public fields);
/// the data is read the way a module load reads it, through `to_data`.
#[cfg(feature = "burn-023")]
pub fn burn_read(path: &Path) -> BurnRead {
    use burn_store::{BurnpackStore, ModuleStore};
    let mut store = BurnpackStore::from_file(path).auto_extension(false);
    let all = store
        .get_all_tensors()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut tensors = BTreeMap::new();
    let mut param_ids = BTreeMap::new();
    for (name, t) in all {
        let data = t.to_data().unwrap_or_else(|e| panic!("'{name}': {e:?}"));
        tensors.insert(
            name.clone(),
            BurnTensor {
                dtype: t.dtype(),
                shape: t.shape().to_vec(),
                bytes: data.as_bytes().to_vec(),
            },
        );
        param_ids.insert(name.clone(), t.param_id());
    }
    let reader = burn_pack::Reader::from_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    BurnRead {
        tensors,
        param_ids: Some(param_ids),
        metadata: Some(reader.metadata().clone()),
    }
}

/// Burn's own writer, given the tensors in data order with their param_ids, and the metadata.
#[cfg(feature = "burn-021")]
pub fn burn_write(tensors: Vec<(String, BurnTensor, Option<u64>)>, metadata: &BTreeMap<String, String>) -> Vec<u8> {
    use burn_core::module::ParamId;
    use burn_store::{BurnpackWriter, TensorSnapshot};
    let snapshots = tensors
        .into_iter()
        .map(|(name, t, param_id)| {
            let data = burn_tensor::TensorData::from_bytes_vec(t.bytes, t.shape, t.dtype);
            // The snapshot's name is its path stack joined with '.', so splitting on '.' round-trips.
            let path = name.split('.').map(String::from).collect();
            let mut snap = TensorSnapshot::from_data(data, path, vec![], ParamId::new());
            snap.tensor_id = param_id.map(ParamId::from);
            snap
        })
        .collect();
    let mut writer = BurnpackWriter::new(snapshots);
    for (k, v) in metadata {
        writer = writer.with_metadata(k, v);
    }
    writer.to_bytes().expect("Burn writes the pack").to_vec()
}

/// 0.22 and 0.23.0-pre.1 share the writer (burn-pack's `Writer`; its source is unchanged between them).
#[cfg(any(feature = "burn-022", feature = "burn-023"))]
pub fn burn_write(tensors: Vec<(String, BurnTensor, Option<u64>)>, metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let tensors = tensors
        .into_iter()
        .map(|(name, t, param_id)| {
            burn_pack::Tensor::new(
                name,
                t.dtype,
                t.shape,
                param_id,
                burn_pack::Bytes::from_bytes_vec(t.bytes),
            )
        })
        .collect();
    let mut writer = burn_pack::Writer::new(tensors);
    for (k, v) in metadata {
        writer = writer.with_metadata(k, v);
    }
    writer.into_bytes().expect("Burn writes the pack").to_vec()
}
