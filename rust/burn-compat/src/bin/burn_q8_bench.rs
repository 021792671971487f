//! Burn's own quantizer and writer as a q8 packer, for the benchmark: what a Burn 0.22.1 user
//! would write to turn a safetensors checkpoint into a Q8 pack. Maps each shard (`memmap2`),
//! gives burn-pack's `Writer` one deferred tensor per manifest entry (produced when the writer
//! reaches it, so memory is bounded by one tensor): the tensors the manifest marks `Q8S_B<n>`
//! go through `Tensor::quantize_dynamic` on the CPU backend (Flex), the others are copied. The
//! file is then flushed to disk (`fsync`), as our packer does.
//!
//!     burn_q8_bench MANIFEST.json OUTPUT.bpk
//!
//! The manifest comes from `heartmula_burn manifest --dtype q8`: order, names, dtypes,
//! param_ids and metadata. Sources must be F32. Prints a JSON line of timings.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use heartmula_burn_compat::burn_pack::{Bytes, Tensor as PackTensor, Writer};
use heartmula_burn_compat::burn_tensor::{DType, Tensor, TensorData};
use heartmula_burn_compat::q8_scheme;

type Index = HashMap<String, (Vec<usize>, usize, usize)>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: burn_q8_bench MANIFEST.json OUTPUT.bpk");
        std::process::exit(2);
    }
    let manifest = PathBuf::from(&args[1]);
    let output = PathBuf::from(&args[2]);
    let started = Instant::now();
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).expect("read manifest")).expect("manifest is JSON");
    let base = manifest.parent().unwrap_or(Path::new("."));

    let mut shards: HashMap<PathBuf, (Arc<memmap2::Mmap>, Index)> = HashMap::new();
    let mut tensors = Vec::new();
    for t in doc["tensors"].as_array().expect("tensors") {
        let file = base.join(t["source"]["file"].as_str().unwrap());
        let key = t["source"]["key"].as_str().unwrap();
        let name = t["name"].as_str().unwrap().to_string();
        let (map, index) = shards.entry(file.clone()).or_insert_with(|| {
            let f = File::open(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            // SAFETY: the shards are not modified while the benchmark runs.
            let map = unsafe { memmap2::Mmap::map(&f) }.expect("mmap");
            let st = safetensors::SafeTensors::deserialize(&map).expect("valid safetensors");
            let index = st
                .tensors()
                .into_iter()
                .map(|(k, v)| {
                    assert_eq!(v.dtype(), safetensors::Dtype::F32, "{k}: F32 sources only");
                    let start = v.data().as_ptr() as usize - map.as_ptr() as usize;
                    (k, (v.shape().to_vec(), start, start + v.data().len()))
                })
                .collect();
            (Arc::new(map), index)
        });
        let (shape, start, end) = index.get(key).cloned().unwrap_or_else(|| panic!("{key}: not found"));
        let map = map.clone();
        let param_id = t["param_id"].as_u64();
        let dtype = t["dtype"].as_str().unwrap();
        let tensor = match dtype.strip_prefix("Q8S_B") {
            Some(block) => {
                let block: u8 = block.parse().expect("a block length");
                let elements: usize = shape.iter().product();
                let len = elements + elements / block as usize * 4;
                let data_shape = shape.clone();
                PackTensor::deferred(name, DType::QFloat(q8_scheme(block)), shape, param_id, len, move || {
                    let data = TensorData::from_bytes_vec(map[start..end].to_vec(), data_shape.clone(), DType::F32);
                    let quantized = Tensor::<2>::from_data(data, &Default::default())
                        .quantize_dynamic(&q8_scheme(block))
                        .into_data();
                    Ok(Bytes::from_bytes_vec(quantized.as_bytes().to_vec()))
                })
            }
            None => {
                assert_eq!(dtype, "F32", "{name}: F32 or Q8S_B<n> only");
                PackTensor::deferred(name, DType::F32, shape, param_id, end - start, move || {
                    Ok(Bytes::from_bytes_vec(map[start..end].to_vec()))
                })
            }
        };
        tensors.push(tensor);
    }
    let mut writer = Writer::new(tensors);
    if let Some(meta) = doc["metadata"].as_object() {
        for (k, v) in meta {
            writer = writer.with_metadata(k, v.as_str().unwrap());
        }
    }
    let planned = started.elapsed().as_secs_f64();
    writer.write_to_file(&output).expect("Burn writes the pack");
    let written = started.elapsed().as_secs_f64();
    File::open(&output).and_then(|f| f.sync_all()).expect("fsync");
    let synced = started.elapsed().as_secs_f64();
    println!(
        "{{\"plan_s\": {planned:.4}, \"write_s\": {:.4}, \"fsync_s\": {:.4}, \"seconds\": {synced:.4}}}",
        written - planned,
        synced - written
    );
}
