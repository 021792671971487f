"""What the model card of a HeartMuLa pack says about loading it from Rust."""

LOADING = """Tensors keep their upstream names and PyTorch layout (`Linear` weights are `[out, in]`), so
build every `Linear` with `LinearLayout::Col` and load with a plain `BurnpackStore`:

```rust
use burn_store::{BurnpackStore, ModuleSnapshot};

let mut store = BurnpackStore::from_file("heartmula.bpk");
let result = model.load_from(&mut store)?;
assert!(result.missing.is_empty());
// audio_embeddings.weight is read separately, by name.
```"""
