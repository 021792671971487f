"""What the model card of a HeartCodec pack says about loading it from Rust."""

LOADING = """Every tensor is F32 under its upstream name, in PyTorch layout (`Linear` `[out, in]`, `Conv1d`
`[out, in, k]`, `ConvTranspose1d` `[in, out, k]`). Weight norm is kept unfolded: a runtime computes
each normed convolution's weight as `g * v / ||v||` (norm over all but the first axis) from
`<conv>.parametrizations.weight.original0` (g) and `.original1` (v). Runtimes look tensors up by
their full names:

```rust
use burn_store::{BurnpackStore, ModuleStore};

let mut store = BurnpackStore::from_file("heartcodec.bpk");
let tensors = store.get_all_snapshots()?;
let cond = &tensors["flow_matching.cond_feature_emb.weight"];   // [512, 512]
```"""
