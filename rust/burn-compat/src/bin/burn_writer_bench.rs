//! Burn's own writer as a packer, for the benchmark: what a Burn user would write to turn a
//! safetensors checkpoint into a pack with burn-store 0.21. Maps each shard (`memmap2`), reads
//! its index with the `safetensors` crate, gives `BurnpackWriter` one lazy `TensorSnapshot` per
//! tensor whose data comes from the mapping, and writes the pack with `write_to_file`. The
//! file is then flushed to disk (`fsync`), as our packer does, so both are timed doing the same
//! work.
//!
//!     burn_writer_bench MANIFEST.json OUTPUT.bpk
//!
//! The manifest (from `heartmula_burn manifest`) gives the order, names, param_ids and metadata;
//! only unconverted tensors are supported (the F32 -> F32 pack). Prints a JSON line of timings.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use heartmula_burn_compat::burn_core::module::ParamId;
use heartmula_burn_compat::burn_dtype;
use heartmula_burn_compat::burn_store::{BurnpackWriter, TensorSnapshot};
use heartmula_burn_compat::burn_tensor::{Shape, TensorData};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: burn_writer_bench MANIFEST.json OUTPUT.bpk");
        std::process::exit(2);
    }
    let manifest = PathBuf::from(&args[1]);
    let output = PathBuf::from(&args[2]);
    let started = Instant::now();
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).expect("read manifest")).expect("manifest is JSON");
    let base = manifest.parent().unwrap_or(Path::new("."));

    // Each shard mapped once, its header read once: key -> (dtype, shape, byte range in the map).
    type Index = HashMap<String, (safetensors::Dtype, Vec<usize>, usize, usize)>;
    let mut shards: HashMap<PathBuf, (Rc<memmap2::Mmap>, Index)> = HashMap::new();
    let mut snapshots = Vec::new();
    for t in doc["tensors"].as_array().expect("tensors") {
        let file = base.join(t["source"]["file"].as_str().unwrap());
        let key = t["source"]["key"].as_str().unwrap();
        let name = t["name"].as_str().unwrap();
        let (map, index) = shards.entry(file.clone()).or_insert_with(|| {
            let f = File::open(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            // SAFETY: the shards are not modified while the benchmark runs.
            let map = unsafe { memmap2::Mmap::map(&f) }.expect("mmap");
            let st = safetensors::SafeTensors::deserialize(&map).expect("valid safetensors");
            let index = st
                .tensors()
                .into_iter()
                .map(|(k, v)| {
                    let start = v.data().as_ptr() as usize - map.as_ptr() as usize;
                    (k, (v.dtype(), v.shape().to_vec(), start, start + v.data().len()))
                })
                .collect();
            (Rc::new(map), index)
        });
        let (st_dtype, shape, start, end) = index.get(key).cloned().unwrap_or_else(|| panic!("{key}: not found"));
        let map = map.clone();
        let dtype = burn_dtype(st_dtype);
        assert_eq!(
            t["dtype"].as_str().unwrap().to_uppercase(),
            format!("{dtype:?}").to_uppercase(),
            "{name}: only unconverted tensors are supported"
        );
        let data_shape = shape.clone();
        let data_fn = Rc::new(move || {
            Ok(TensorData::from_bytes_vec(
                map[start..end].to_vec(),
                data_shape.clone(),
                dtype,
            ))
        });
        let path = name.split('.').map(String::from).collect();
        let mut snap = TensorSnapshot::from_closure(data_fn, dtype, Shape::from(shape), path, vec![], ParamId::new());
        snap.tensor_id = t["param_id"].as_u64().map(ParamId::from);
        snapshots.push(snap);
    }
    let mut writer = BurnpackWriter::new(snapshots);
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
