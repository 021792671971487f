//! Burn's own quantizer and writer as a q8 packer, for the benchmark: what a Burn 0.22.1 user
//! would write to turn a safetensors checkpoint into a Q8 pack. Gives burn-pack's `Writer` one
//! deferred tensor per manifest entry (produced when the writer reaches it, so memory is bounded
//! by one tensor): the tensors the manifest marks `Q8S_B<n>` (or `Q8S_B<n>_NATIVE`) go through `Tensor::quantize_dynamic`
//! on the CPU backend (Flex), the others are copied. The file is then flushed to disk, as our
//! packer does.
//!
//!     burn_q8_bench MANIFEST.json OUTPUT.bpk
//!
//! The manifest comes from `heartmula_burn manifest --dtype q8`: order, names, dtypes,
//! param_ids and metadata. Sources must be F32. Prints a JSON line of timings.

use heartmula_burn_compat::bench::Run;
use heartmula_burn_compat::burn_pack::{Bytes, Tensor as PackTensor, Writer};
use heartmula_burn_compat::burn_tensor::{DType, Tensor, TensorData};
use heartmula_burn_compat::q8_scheme;

fn main() {
    let run = Run::from_args("burn_q8_bench");
    let mut tensors = Vec::new();
    for entry in &run.entries {
        assert_eq!(
            entry.source_dtype,
            safetensors::Dtype::F32,
            "{}: F32 sources only",
            entry.name
        );
        let (name, shape, param_id) = (entry.name.clone(), entry.shape.clone(), entry.param_id);
        let (map, range) = (entry.map.clone(), entry.range.clone());
        let tensor = match entry.dtype.strip_prefix("Q8S_B") {
            Some(spelled) => {
                let (block, native) = match spelled.strip_suffix("_NATIVE") {
                    Some(block) => (block, true),
                    None => (spelled, false),
                };
                let block: u8 = block.parse().expect("a block length");
                let elements: usize = shape.iter().product();
                let len = elements + elements / block as usize * 4;
                let data_shape = shape.clone();
                let scheme = q8_scheme(block, native);
                // Flex writes the Native store; for Q8S the PackedU32(0) bytes are the same
                // (checked against Burn's own layout in tests/burn.rs), only the descriptor differs.
                PackTensor::deferred(name, DType::QFloat(scheme), shape, param_id, len, move || {
                    let data = TensorData::from_bytes_vec(map[range.clone()].to_vec(), data_shape.clone(), DType::F32);
                    let quantized = Tensor::<2>::from_data(data, &Default::default())
                        .quantize_dynamic(&scheme)
                        .into_data();
                    Ok(Bytes::from_bytes_vec(quantized.as_bytes().to_vec()))
                })
            }
            None => {
                assert_eq!(entry.dtype, "F32", "{name}: F32 or Q8S_B<n> only");
                let len = range.len();
                PackTensor::deferred(name, DType::F32, shape, param_id, len, move || {
                    Ok(Bytes::from_bytes_vec(map[range.clone()].to_vec()))
                })
            }
        };
        tensors.push(tensor);
    }
    let mut writer = Writer::new(tensors);
    for (k, v) in &run.metadata {
        writer = writer.with_metadata(k, v);
    }
    run.time_write(|output| writer.write_to_file(output).expect("Burn writes the pack"));
}
