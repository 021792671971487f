//! heartmula-burn core: reads safetensors shards through mmap and writes Burn packs (`.bpk`)
//! byte-compatible with Burn's own `BurnpackWriter`.
//!
//! Pure Rust, no Python types: the PyO3 binding in `rust/py` is a thin layer over this crate.

pub mod burnpack;
pub mod cast;
pub mod dtype;
pub mod engine;
pub mod error;
pub mod export;
pub mod fs;
pub mod guard;
pub mod journal;
pub mod npy;
pub mod output;
pub mod pack;
pub mod quant;
pub mod runs;
pub mod source;
pub mod stream;
pub mod unpack;
pub mod verify;

pub use burnpack::{BurnTarget, PackIndex, PackLayout, TensorPlan};
pub use dtype::{DType, QuantStore};
pub use engine::{Progress, TensorRequest, WriteSummary};
pub use error::{Error, Result};
pub use output::AtomicFile;
pub use pack::{pack_staged, PackRequest};
pub use source::{Shard, SourceTensor};
pub use stream::{RemoteShard, Resume, StreamedPacks};
