//! Burn's own writer as a packer, for the benchmark: what a Burn user would write to turn a
//! safetensors checkpoint into a pack with burn-store 0.21. Gives `BurnpackWriter` one lazy
//! `TensorSnapshot` per manifest entry whose data comes from the shard's mapping, and writes the
//! pack with `write_to_file`; then flushes it to disk, as our packer does, so that both are timed
//! doing the same work.
//!
//!     burn_writer_bench MANIFEST.json OUTPUT.bpk
//!
//! The manifest (from `heartmula_burn manifest`) gives the order, names, param_ids and metadata;
//! only unconverted tensors are supported (the F32 -> F32 pack). Prints a JSON line of timings.

use std::rc::Rc;

use heartmula_burn_compat::bench::Run;
use heartmula_burn_compat::burn_core::module::ParamId;
use heartmula_burn_compat::burn_dtype;
use heartmula_burn_compat::burn_store::{BurnpackWriter, TensorSnapshot};
use heartmula_burn_compat::burn_tensor::{Shape, TensorData};

fn main() {
    let run = Run::from_args("burn_writer_bench");
    let mut snapshots = Vec::new();
    for entry in &run.entries {
        let dtype = burn_dtype(entry.source_dtype);
        assert_eq!(
            entry.dtype.to_uppercase(),
            format!("{dtype:?}").to_uppercase(),
            "{}: only unconverted tensors are supported",
            entry.name
        );
        let (map, range, shape) = (entry.map.clone(), entry.range.clone(), entry.shape.clone());
        let data_fn = Rc::new(move || {
            Ok(TensorData::from_bytes_vec(
                map[range.clone()].to_vec(),
                shape.clone(),
                dtype,
            ))
        });
        let path = entry.name.split('.').map(String::from).collect();
        let shape = Shape::from(entry.shape.clone());
        let mut snap = TensorSnapshot::from_closure(data_fn, dtype, shape, path, vec![], ParamId::new());
        snap.tensor_id = entry.param_id.map(ParamId::from);
        snapshots.push(snap);
    }
    let mut writer = BurnpackWriter::new(snapshots);
    for (k, v) in &run.metadata {
        writer = writer.with_metadata(k, v);
    }
    run.time_write(|output| writer.write_to_file(output).expect("Burn writes the pack"));
}
