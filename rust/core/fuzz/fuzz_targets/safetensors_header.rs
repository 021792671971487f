//! The safetensors and .npy header parsers on arbitrary bytes: errors, never panics or over-reads.
#![no_main]

use std::path::Path;

use heartmula_burn_core::npy;
use heartmula_burn_core::source::parse_safetensors;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((tensors, _)) = parse_safetensors(Path::new("fuzz.safetensors"), data) {
        for t in &tensors {
            assert!(t.file_offset + t.byte_len <= data.len() as u64);
        }
    }
    if let Ok(header) = npy::parse_header(data) {
        assert!(header.data_offset <= data.len() as u64);
    }
});
