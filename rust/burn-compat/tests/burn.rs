//! Checks 1-3 of Burn compatibility, run by Burn itself (the release chosen by the crate feature):
//! 1. Burn's `BurnpackStore` reads our packs: same names, dtypes, shapes and bytes (and, where
//!    Burn's API shows them, the same param_ids and metadata).
//! 2. Burn's writer, given the same tensors, order, param_ids and metadata, writes the same file
//!    byte for byte (its output is kept for check 4, done in Python).
//! 3. A HeartMuLa-shaped Burn module (LinearLayout::Col everywhere) loads our pack with no
//!    missing tensor, and one Linear / Embedding forward is saved for comparison with numpy.

use heartmula_burn_compat::burn_core::module::{Module, Param};
use heartmula_burn_compat::burn_nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, LinearLayout};
use heartmula_burn_compat::burn_store::{BurnpackStore, ModuleSnapshot};
use heartmula_burn_compat::burn_tensor::{DType, Int, Tensor, TensorData};
use heartmula_burn_compat::{
    burn_read, burn_write, expected_tensors, fixtures_dir, load_cases, quantized_difference, quantized_on,
    quantizes_as_ours, BURN_VERSION,
};
// The Module derive expands to `burn::...` paths.
use heartmula_burn_compat::burn_core as burn;

// 0.21 modules and tensors are generic over a backend `B`; 0.22 and 0.23 dispatch at run time and
// drop the parameter. The module tree below is written once, with the generics passed in as tokens.
#[cfg(feature = "burn-021")]
type B = heartmula_burn_compat::burn_flex::Flex<f32>;
#[cfg(feature = "burn-021")]
type Device = heartmula_burn_compat::burn_flex::FlexDevice;
#[cfg(any(feature = "burn-022", feature = "burn-023"))]
type Device = heartmula_burn_compat::burn_tensor::Device;

#[test]
fn burn_reads_our_packs() {
    for case in load_cases(&fixtures_dir()) {
        let expected = expected_tensors(&case);
        let read = burn_read(&case.pack);
        let names: Vec<&String> = read.tensors.keys().collect();
        assert_eq!(
            names,
            expected.keys().collect::<Vec<_>>(),
            "{}: tensor names",
            case.name
        );
        let mut differing = [0; 5];
        let exact = quantizes_as_ours(&case);
        for (name, got) in &read.tensors {
            let want = &expected[name];
            assert_eq!(got.dtype, want.dtype, "{}: dtype of '{name}'", case.name);
            assert_eq!(got.shape, want.shape, "{}: shape of '{name}'", case.name);
            if let (false, Some(&block)) = (exact, case.quantize.get(name)) {
                let [values, of_values, step, scales, of_scales] = quantized_difference(got, want, block);
                differing = [
                    differing[0] + values,
                    differing[1] + of_values,
                    differing[2].max(step),
                    differing[3] + scales,
                    differing[4] + of_scales,
                ];
                continue;
            }
            let at = got.bytes.iter().zip(&want.bytes).position(|(a, b)| a != b);
            assert!(
                got.bytes == want.bytes,
                "{}: bytes of '{name}' differ first at byte {at:?} (ours {:?}, Burn's {:?})",
                case.name,
                at.map(|i| &got.bytes[i.saturating_sub(4)..(i + 8).min(got.bytes.len())]),
                at.map(|i| &want.bytes[i.saturating_sub(4)..(i + 8).min(want.bytes.len())]),
            );
        }
        if let Some(param_ids) = &read.param_ids {
            for (name, id) in param_ids {
                assert_eq!(
                    id.as_ref(),
                    case.param_ids.get(name),
                    "{}: param_id of '{name}'",
                    case.name
                );
            }
        }
        if let Some(metadata) = &read.metadata {
            assert_eq!(metadata, &case.metadata, "{}: metadata", case.name);
        }
        println!(
            "check 1 ok (burn {BURN_VERSION}): {} ({} tensors)",
            case.name,
            expected.len()
        );
        if differing[1] > 0 {
            let [values, of_values, step, scales, of_scales] = differing;
            println!(
                "quantized differently (burn {BURN_VERSION}): {}: {values} of {of_values} values differ \
                 (largest step {step}), {scales} of {of_scales} scales",
                case.name
            );
        }
    }
}

#[test]
fn burn_writes_the_same_bytes() {
    let dir = fixtures_dir();
    let out_dir = dir.join(format!("burn_written_{BURN_VERSION}"));
    std::fs::create_dir_all(&out_dir).unwrap();
    for case in load_cases(&dir) {
        let exact = quantizes_as_ours(&case);
        let mut expected = expected_tensors(&case);
        let ordered = case
            .order
            .iter()
            .map(|name| {
                let t = expected.remove(name).expect("order names expected tensors");
                (name.clone(), t, case.param_ids.get(name).copied())
            })
            .collect();
        assert!(expected.is_empty(), "{}: order misses tensors", case.name);
        let burn_bytes = burn_write(ordered, &case.metadata);
        std::fs::write(out_dir.join(format!("{}.bpk", case.name)), &burn_bytes).unwrap();
        if !exact {
            // Burn's quantized values differ (counted by check 1): the files cannot agree. Its
            // file is kept for check 4, which reads it.
            println!(
                "check 2 not exact (burn {BURN_VERSION}): {} (quantized on {})",
                case.name,
                quantized_on(&case)
            );
            continue;
        }
        let ours = std::fs::read(&case.pack).unwrap();
        let first_diff = ours.iter().zip(&burn_bytes).position(|(a, b)| a != b);
        assert!(
            ours.len() == burn_bytes.len() && first_diff.is_none(),
            "{}: our pack ({} bytes) differs from Burn's ({} bytes), first at byte {first_diff:?}",
            case.name,
            ours.len(),
            burn_bytes.len()
        );
        let quantized = match quantized_on(&case) {
            on if on.is_empty() => String::new(),
            on => format!(", quantized on {on}"),
        };
        println!(
            "check 2 ok (burn {BURN_VERSION}): {} ({} bytes identical{quantized})",
            case.name,
            ours.len()
        );
    }
}

/// The format reference's worked example, written by Burn itself: pins our golden bytes to Burn.
#[test]
fn burn_writes_the_reference_example() {
    let bytes: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let weight = heartmula_burn_compat::BurnTensor {
        dtype: DType::F32,
        shape: vec![2, 2],
        bytes,
    };
    let metadata = [("format", "burnpack"), ("producer", "burn"), ("version", "0.21.0")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let bytes = burn_write(vec![("weight".into(), weight, Some(42))], &metadata);
    assert_eq!(bytes.len(), 272);
    assert_eq!(&bytes[..10], b"NRUB\x01\x00\x77\x00\x00\x00");
    assert_eq!(&bytes[10..20], b"\xa2\x67tensors\xa1");
    assert!(bytes[129..256].iter().all(|&b| b == 0));
    assert_eq!(
        &bytes[256..],
        &[0, 0, 0x80, 0x3f, 0, 0, 0, 0x40, 0, 0, 0x40, 0x40, 0, 0, 0x80, 0x40]
    );
}

// ---- check 3: a HeartMuLa-shaped module, built as Burn HeartMuLa runtimes build it ----

/// Declares the module tree. `[$decl]` are the struct generics, `[$g]` the arguments passed to
/// Burn's modules, `[$t]` the leading tensor arguments: `<B: Backend>`, `<B>`, `B,` for 0.21; empty for 0.22 and 0.23.
macro_rules! heartmula_modules {
    ([$($decl:tt)*] [$($g:tt)*] [$($t:tt)*]) => {
        #[derive(Module, Debug)]
        struct RmsNorm $($decl)* {
            scale: Param<Tensor<$($t)* 1>>,
        }

        #[derive(Module, Debug)]
        struct Attention $($decl)* {
            q_proj: Linear $($g)*,
            k_proj: Linear $($g)*,
            v_proj: Linear $($g)*,
            output_proj: Linear $($g)*,
        }

        #[derive(Module, Debug)]
        struct Mlp $($decl)* {
            w1: Linear $($g)*,
            w2: Linear $($g)*,
            w3: Linear $($g)*,
        }

        #[derive(Module, Debug)]
        struct Layer $($decl)* {
            attn: Attention $($g)*,
            mlp: Mlp $($g)*,
            sa_norm: RmsNorm $($g)*,
            mlp_norm: RmsNorm $($g)*,
        }

        #[derive(Module, Debug)]
        struct Transformer $($decl)* {
            layers: Vec<Layer $($g)*>,
            norm: RmsNorm $($g)*,
        }

        #[derive(Module, Debug)]
        struct HeartMuLa $($decl)* {
            backbone: Transformer $($g)*,
            decoder: Transformer $($g)*,
            text_embeddings: Embedding $($g)*,
            unconditional_text_embedding: Embedding $($g)*,
            projection: Linear $($g)*,
            codebook0_head: Linear $($g)*,
            audio_head: Param<Tensor<$($t)* 3>>,
            muq_linear: Linear $($g)*,
        }

        type LinearM = Linear $($g)*;
        type RmsNormM = RmsNorm $($g)*;
        type TransformerM = Transformer $($g)*;
        type HeartMuLaM = HeartMuLa $($g)*;
        type Tensor2 = Tensor<$($t)* 2>;
        type IntTensor2 = Tensor<$($t)* 2, Int>;
    };
}

#[cfg(feature = "burn-021")]
use heartmula_burn_compat::burn_tensor::backend::Backend;
#[cfg(feature = "burn-021")]
heartmula_modules!([<B: Backend>] [<B>] [B,]);
#[cfg(any(feature = "burn-022", feature = "burn-023"))]
heartmula_modules!([] [] []);

struct Flavor {
    layers: usize,
    heads: usize,
    kv_heads: usize,
    dim: usize,
    ffn: usize,
}

fn flavor(config: &serde_json::Value, key: &str) -> Flavor {
    let name = config[key].as_str().unwrap();
    let f = &config["flavors"][name];
    let n = |k: &str| f[k].as_u64().unwrap_or_else(|| panic!("flavour {name} needs {k}")) as usize;
    Flavor {
        layers: n("num_layers"),
        heads: n("num_heads"),
        kv_heads: n("num_kv_heads"),
        dim: n("embed_dim"),
        ffn: n("intermediate_dim"),
    }
}

fn linear(d_in: usize, d_out: usize, bias: bool, device: &Device) -> LinearM {
    LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_layout(LinearLayout::Col)
        .init(device)
}

fn norm(dim: usize, device: &Device) -> RmsNormM {
    RmsNorm {
        scale: Param::from_tensor(Tensor::ones([dim], device)),
    }
}

fn transformer(f: &Flavor, device: &Device) -> TransformerM {
    let kv = f.kv_heads * (f.dim / f.heads);
    let layers = (0..f.layers)
        .map(|_| Layer {
            attn: Attention {
                q_proj: linear(f.dim, f.dim, false, device),
                k_proj: linear(f.dim, kv, false, device),
                v_proj: linear(f.dim, kv, false, device),
                output_proj: linear(f.dim, f.dim, false, device),
            },
            mlp: Mlp {
                w1: linear(f.dim, f.ffn, false, device),
                w2: linear(f.ffn, f.dim, false, device),
                w3: linear(f.dim, f.ffn, false, device),
            },
            sa_norm: norm(f.dim, device),
            mlp_norm: norm(f.dim, device),
        })
        .collect();
    Transformer {
        layers,
        norm: norm(f.dim, device),
    }
}

fn heartmula(config: &serde_json::Value, device: &Device) -> HeartMuLaM {
    let (bb, dec) = (flavor(config, "backbone_flavor"), flavor(config, "decoder_flavor"));
    let n = |k: &str| config[k].as_u64().unwrap() as usize;
    let (vocab, books) = (n("audio_vocab_size"), n("audio_num_codebooks"));
    HeartMuLa {
        text_embeddings: EmbeddingConfig::new(n("text_vocab_size"), bb.dim).init(device),
        unconditional_text_embedding: EmbeddingConfig::new(1, bb.dim).init(device),
        projection: linear(bb.dim, dec.dim, false, device),
        codebook0_head: linear(bb.dim, vocab, false, device),
        audio_head: Param::from_tensor(Tensor::zeros([books - 1, dec.dim, vocab], device)),
        muq_linear: linear(n("muq_dim"), bb.dim, true, device),
        backbone: transformer(&bb, device),
        decoder: transformer(&dec, device),
    }
}

fn values(t: Tensor2) -> serde_json::Value {
    let dims = t.dims();
    assert_eq!(t.dtype(), DType::F32, "a forward's output is F32, whatever its weights");
    let data = t.into_data();
    let flat: Vec<f32> = data
        .as_bytes()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    serde_json::json!({"shape": dims, "values": flat})
}

/// The dtype a `LinearLayout::Col` weight has once loaded: the file's, except that the layout
/// transposes the [out, in] weight as it loads, and a quantized weight's block (on wgpu its
/// packing dimension too) turns with it; Flex holds every quantized tensor `Native` (one i8 per
/// value), whatever the file's store.
#[cfg(any(feature = "burn-022", feature = "burn-023"))]
fn loaded(file_dtype: DType) -> DType {
    match file_dtype {
        DType::QFloat(mut scheme) => {
            scheme.swap_block_dims(2, 0, 1);
            if cfg!(feature = "wgpu") {
                scheme.swap_packing_dim(0, 1); // packed along the last dimension of the file's layout
            } else {
                scheme.store = heartmula_burn_compat::burn_tensor::quantization::QuantStore::Native;
            }
            DType::QFloat(scheme)
        }
        plain => plain,
    }
}

/// Burn 0.21 reads no quantized fixture (they are filtered out for it).
#[cfg(feature = "burn-021")]
fn loaded(file_dtype: DType) -> DType {
    file_dtype
}

/// Whether this build's backend runs a quantized matmul of that dtype: wgpu's WGSL has no 8-bit
/// integer type, so a `Native` weight does not compile there (every other build runs both stores).
#[cfg(feature = "wgpu")]
fn runs_here(file_dtype: DType) -> bool {
    use heartmula_burn_compat::burn_tensor::quantization::QuantStore;
    !matches!(file_dtype, DType::QFloat(scheme) if scheme.store == QuantStore::Native)
}

#[cfg(not(feature = "wgpu"))]
fn runs_here(_file_dtype: DType) -> bool {
    true
}

/// The store as a runtime opens it (0.21 has an explicit zero-copy switch; 0.22 dropped it).
fn open_store(path: &std::path::Path) -> BurnpackStore {
    let store = BurnpackStore::from_file(path).auto_extension(false);
    #[cfg(feature = "burn-021")]
    let store = store.zero_copy(true);
    store
}

#[test]
fn burn_module_loads_heartmula_packs() {
    let dir = fixtures_dir();
    let device = Default::default();
    let mut checked = 0;
    for case in load_cases(&dir) {
        let Some(config_path) = &case.heartmula_config else {
            continue;
        };
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(config_path).unwrap()).unwrap();
        let mut model = heartmula(&config, &device);
        let mut store = open_store(&case.pack);
        let result = model
            .load_from(&mut store)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert!(result.errors.is_empty(), "{}: {:?}", case.name, result.errors);
        assert!(result.missing.is_empty(), "{}: missing {:?}", case.name, result.missing);
        assert_eq!(
            result.unused,
            vec!["audio_embeddings.weight".to_string()],
            "{}",
            case.name
        );
        assert_eq!(result.applied.len(), 288, "{}", case.name);
        // The Col layout keeps [out, in] in the file: after loading, a weight's dtype is the file's.
        let k = model.backbone.layers[0].attn.k_proj.weight.val();
        let file_dtype = expected_tensors(&case)["backbone.layers.0.attn.k_proj.weight"].dtype;
        assert_eq!(k.dtype(), loaded(file_dtype), "{}", case.name);

        if file_dtype == DType::F32 || matches!(file_dtype, DType::QFloat(_)) && runs_here(file_dtype) {
            // Fixed inputs; the Python side recomputes these with numpy from the same weights.
            let bb_dim = model.text_embeddings.weight.dims()[1];
            let muq_dim = config["muq_dim"].as_u64().unwrap() as usize;
            let input = |rows: usize, cols: usize| {
                let v: Vec<f32> = (0..rows * cols).map(|i| ((i * 7 % 13) as f32) / 13.0 - 0.5).collect();
                Tensor2::from_data(TensorData::new(v, [rows, cols]), &device)
            };
            let ids = IntTensor2::from_data(TensorData::new(vec![0i64, 5, 17, 299], [1, 4]), &device);
            let embedded = model.text_embeddings.forward(ids).reshape([4, bb_dim]);
            let forward = serde_json::json!({
                "backbone.layers.0.attn.k_proj": values(model.backbone.layers[0].attn.k_proj.forward(input(3, bb_dim))),
                "projection": values(model.projection.forward(input(2, bb_dim))),
                "muq_linear": values(model.muq_linear.forward(input(2, muq_dim))),
                "text_embeddings": {"ids": [0, 5, 17, 299], "out": values(embedded)},
            });
            let path = dir.join(format!("forward_{BURN_VERSION}_{}.json", case.name));
            std::fs::write(path, serde_json::to_string(&forward).unwrap()).unwrap();
        }
        println!("check 3 ok (burn {BURN_VERSION}): {} loads into a HeartMuLa module (288 applied, unused: audio_embeddings.weight)", case.name);
        checked += 1;
    }
    assert!(checked >= 1, "no HeartMuLa fixture");
}
