//! The .bpk reader on arbitrary bytes: it must return an error, never panic or over-read.
#![no_main]

use std::path::Path;

use heartmula_burn_core::burnpack::index_from_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(index) = index_from_bytes(Path::new("fuzz.bpk"), data) {
        // Whatever it accepts must describe ranges inside the file.
        for t in &index.tensors {
            assert!(t.file_offset + (t.end - t.start) <= data.len() as u64);
        }
    }
});
