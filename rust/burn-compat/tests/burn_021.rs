//! Checks 1-3 of Burn compatibility, run by Burn 0.21 itself:
//! 1. Burn's `BurnpackStore` reads our packs: same names, dtypes, shapes and bytes.
//! 2. Burn's `BurnpackWriter`, given the same tensors, order, param_ids and metadata, writes
//!    the same file byte for byte (its output is kept for check 4, done in Python).
//! 3. A HeartMuLa-shaped Burn module (LinearLayout::Col everywhere) loads our pack with no
//!    missing tensor, and one Linear / Embedding forward is saved for comparison with numpy.

// The Module derive expands to `burn::...` paths.
extern crate burn_core as burn;

use burn_core::module::{Module, Param, ParamId};
use burn_flex::{Flex, FlexDevice};
use burn_nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, LinearLayout};
use burn_store::{BurnpackStore, BurnpackWriter, ModuleSnapshot, ModuleStore, TensorSnapshot};
use burn_tensor::backend::Backend;
use burn_tensor::{DType, Int, Tensor, TensorData};
use heartmula_burn_compat::{expected_tensors, fixtures_dir, load_cases};

type B = Flex<f32>;
type Device = FlexDevice;

#[test]
fn burn_reads_our_packs() {
    let cases = load_cases(&fixtures_dir());
    for case in &cases {
        let expected = expected_tensors(case);
        let mut store = BurnpackStore::from_file(&case.pack).auto_extension(false);
        let snapshots = store.get_all_snapshots().unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let names: Vec<&String> = snapshots.keys().collect();
        let want: Vec<&String> = expected.keys().collect();
        assert_eq!(names, want, "{}: tensor names", case.name);
        for (name, snap) in snapshots {
            let (dtype, shape, bytes) = &expected[name];
            assert_eq!(&snap.dtype, dtype, "{}: dtype of '{name}'", case.name);
            assert_eq!(snap.shape.as_slice(), shape.as_slice(), "{}: shape of '{name}'", case.name);
            let data = snap.to_data().unwrap_or_else(|e| panic!("{}: '{name}': {e:?}", case.name));
            assert_eq!(data.as_bytes(), bytes.as_slice(), "{}: bytes of '{name}'", case.name);
        }
        println!("check 1 ok: {} ({} tensors)", case.name, expected.len());
    }
}

#[test]
fn burn_writes_the_same_bytes() {
    let dir = fixtures_dir();
    let out_dir = dir.join("burn_written");
    std::fs::create_dir_all(&out_dir).unwrap();
    for case in load_cases(&dir) {
        let mut expected = expected_tensors(&case);
        let snapshots: Vec<TensorSnapshot> = case
            .order
            .iter()
            .map(|name| {
                let (dtype, shape, bytes) = expected.remove(name).expect("order names expected tensors");
                let data = TensorData::from_bytes_vec(bytes, shape, dtype);
                // The path stack is joined with '.', so splitting on '.' round-trips any name.
                let path = name.split('.').map(String::from).collect();
                let mut snap = TensorSnapshot::from_data(data, path, vec![], ParamId::new());
                snap.tensor_id = case.param_ids.get(name).map(|&id| ParamId::from(id));
                snap
            })
            .collect();
        assert!(expected.is_empty(), "{}: order misses tensors", case.name);
        let mut writer = BurnpackWriter::new(snapshots);
        for (k, v) in &case.metadata {
            writer = writer.with_metadata(k, v);
        }
        let burn_bytes = writer.to_bytes().unwrap();
        let ours = std::fs::read(&case.pack).unwrap();
        let first_diff = ours.iter().zip(burn_bytes.iter()).position(|(a, b)| a != b);
        assert!(
            ours.len() == burn_bytes.len() && first_diff.is_none(),
            "{}: our pack ({} bytes) differs from Burn's ({} bytes), first at byte {first_diff:?}",
            case.name,
            ours.len(),
            burn_bytes.len()
        );
        std::fs::write(out_dir.join(format!("{}.bpk", case.name)), &burn_bytes[..]).unwrap();
        println!("check 2 ok: {} ({} bytes identical)", case.name, ours.len());
    }
}

/// The format reference's worked example, written by Burn itself: pins our golden bytes to Burn.
#[test]
fn burn_writes_the_reference_example() {
    let data = TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]);
    let snap = TensorSnapshot::from_data(data, vec!["weight".into()], vec![], ParamId::from(42u64));
    let bytes = BurnpackWriter::new(vec![snap])
        .with_metadata("format", "burnpack")
        .with_metadata("producer", "burn")
        .with_metadata("version", "0.21.0")
        .to_bytes()
        .unwrap();
    assert_eq!(bytes.len(), 272);
    assert_eq!(&bytes[..10], b"NRUB\x01\x00\x77\x00\x00\x00");
    assert_eq!(&bytes[10..20], b"\xa2\x67tensors\xa1");
    assert!(bytes[129..256].iter().all(|&b| b == 0));
    assert_eq!(&bytes[256..], &[0, 0, 0x80, 0x3f, 0, 0, 0, 0x40, 0, 0, 0x40, 0x40, 0, 0, 0x80, 0x40]);
}

// ---- check 3: a HeartMuLa-shaped module, built as Burn HeartMuLa runtimes build it ----

#[derive(Module, Debug)]
struct RmsNorm<B: Backend> {
    scale: Param<Tensor<B, 1>>,
}

#[derive(Module, Debug)]
struct Attention<B: Backend> {
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    output_proj: Linear<B>,
}

#[derive(Module, Debug)]
struct Mlp<B: Backend> {
    w1: Linear<B>,
    w2: Linear<B>,
    w3: Linear<B>,
}

#[derive(Module, Debug)]
struct Layer<B: Backend> {
    attn: Attention<B>,
    mlp: Mlp<B>,
    sa_norm: RmsNorm<B>,
    mlp_norm: RmsNorm<B>,
}

#[derive(Module, Debug)]
struct Transformer<B: Backend> {
    layers: Vec<Layer<B>>,
    norm: RmsNorm<B>,
}

#[derive(Module, Debug)]
struct HeartMuLa<B: Backend> {
    backbone: Transformer<B>,
    decoder: Transformer<B>,
    text_embeddings: Embedding<B>,
    unconditional_text_embedding: Embedding<B>,
    projection: Linear<B>,
    codebook0_head: Linear<B>,
    audio_head: Param<Tensor<B, 3>>,
    muq_linear: Linear<B>,
}

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

fn linear(d_in: usize, d_out: usize, bias: bool, device: &Device) -> Linear<B> {
    LinearConfig::new(d_in, d_out).with_bias(bias).with_layout(LinearLayout::Col).init(device)
}

fn norm(dim: usize, device: &Device) -> RmsNorm<B> {
    RmsNorm { scale: Param::from_tensor(Tensor::ones([dim], device)) }
}

fn transformer(f: &Flavor, device: &Device) -> Transformer<B> {
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
    Transformer { layers, norm: norm(f.dim, device) }
}

fn heartmula(config: &serde_json::Value, device: &Device) -> HeartMuLa<B> {
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

fn values(t: Tensor<B, 2>) -> serde_json::Value {
    let dims = t.dims();
    let flat: Vec<f32> = t.into_data().to_vec().unwrap();
    serde_json::json!({"shape": dims, "values": flat})
}

#[test]
fn burn_module_loads_heartmula_packs() {
    let dir = fixtures_dir();
    let device = Default::default();
    let mut checked = 0;
    for case in load_cases(&dir) {
        let Some(config_path) = &case.heartmula_config else { continue };
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(config_path).unwrap()).unwrap();
        let mut model = heartmula(&config, &device);
        let mut store = BurnpackStore::from_file(&case.pack).auto_extension(false).zero_copy(true);
        let result = model.load_from(&mut store).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert!(result.errors.is_empty(), "{}: {:?}", case.name, result.errors);
        assert!(result.missing.is_empty(), "{}: missing {:?}", case.name, result.missing);
        assert_eq!(result.unused, vec!["audio_embeddings.weight".to_string()], "{}", case.name);
        assert_eq!(result.applied.len(), 288, "{}", case.name);
        // The Col layout keeps [out, in] in the file: after loading, a weight's dtype is the file's.
        let k = model.backbone.layers[0].attn.k_proj.weight.val();
        let file_dtype = expected_tensors(&case)["backbone.layers.0.attn.k_proj.weight"].0;
        assert_eq!(k.dtype(), file_dtype, "{}", case.name);

        if file_dtype == DType::F32 {
            // Fixed inputs; the Python side recomputes these with numpy from the same weights.
            let bb_dim = model.text_embeddings.weight.dims()[1];
            let muq_dim = config["muq_dim"].as_u64().unwrap() as usize;
            let input = |rows: usize, cols: usize| {
                let v: Vec<f32> = (0..rows * cols).map(|i| ((i * 7 % 13) as f32) / 13.0 - 0.5).collect();
                Tensor::<B, 2>::from_data(TensorData::new(v, [rows, cols]), &device)
            };
            let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![0i64, 5, 17, 299], [1, 4]), &device);
            let embedded = model.text_embeddings.forward(ids).reshape([4, bb_dim]);
            let forward = serde_json::json!({
                "backbone.layers.0.attn.k_proj": values(model.backbone.layers[0].attn.k_proj.forward(input(3, bb_dim))),
                "projection": values(model.projection.forward(input(2, bb_dim))),
                "muq_linear": values(model.muq_linear.forward(input(2, muq_dim))),
                "text_embeddings": {"ids": [0, 5, 17, 299], "out": values(embedded)},
            });
            let path = dir.join(format!("forward_{}.json", case.name));
            std::fs::write(path, serde_json::to_string(&forward).unwrap()).unwrap();
        }
        println!("check 3 ok: {} loads into a HeartMuLa module (288 applied, unused: audio_embeddings.weight)", case.name);
        checked += 1;
    }
    assert!(checked >= 1, "no HeartMuLa fixture");
}
