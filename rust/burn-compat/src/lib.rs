//! Helpers for checking heartmula-burn packs against the real Burn 0.21 crates.
//!
//! The fixtures (packs made by our CLI, the tensors they must hold, param_ids and metadata) are
//! written by `tests/test_burn_compat.py`, which then runs this crate's tests with
//! `HEARTMULA_COMPAT_FIXTURES` pointing at them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn_tensor::{BoolStore, DType};

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
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(std::env::var("HEARTMULA_COMPAT_FIXTURES").expect(
        "HEARTMULA_COMPAT_FIXTURES is not set: run these checks through tests/test_burn_compat.py (tests/run.sh does)",
    ))
}

pub fn load_cases(dir: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(dir.join("cases.json")).expect("cases.json");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("cases.json is JSON");
    let strings = |v: &serde_json::Value| -> BTreeMap<String, String> {
        v.as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect())
            .unwrap_or_default()
    };
    let cases: Vec<Case> = doc
        .as_array()
        .expect("a list of cases")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            pack: dir.join(c["pack"].as_str().unwrap()),
            expected: dir.join(c["expected"].as_str().unwrap()),
            order: c["order"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect(),
            param_ids: c["param_ids"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect())
                .unwrap_or_default(),
            metadata: strings(&c["metadata"]),
            heartmula_config: c["heartmula_config"].as_str().map(|p| dir.join(p)),
        })
        .collect();
    assert!(!cases.is_empty(), "no fixtures in {}", dir.display());
    cases
}

/// Burn's dtype for a safetensors dtype (Burn 0.21 stores bools natively, one byte each).
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

/// The expected tensors of a case: name -> (dtype, shape, bytes).
pub fn expected_tensors(case: &Case) -> BTreeMap<String, (DType, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(&case.expected).expect("expected safetensors");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| (name, (burn_dtype(view.dtype()), view.shape().to_vec(), view.data().to_vec())))
        .collect()
}
