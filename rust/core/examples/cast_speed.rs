//! F32 -> BF16/F16 conversion speed on one core: the core's `cast::convert` against the plain
//! element-by-element conversion with the `half` crate, side by side, in 8 MiB chunks as the
//! packer converts. Prints medians of 7 alternating rounds and their ratio.
//!
//!     cargo run --release -p heartmula-burn-core --example cast_speed

use std::time::Instant;

use half::{bf16, f16};
use heartmula_burn_core::{cast, DType};

const CHUNK: usize = 8 << 20;
const ROUNDS: usize = 7;

fn element_wise(src: &[u8], to: DType, dst: &mut Vec<u8>) {
    for c in src.chunks_exact(4) {
        let v = f32::from_le_bytes(c.try_into().unwrap());
        match to {
            DType::BF16 => dst.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
            _ => dst.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
        }
    }
}

fn gb_per_s(src: &[u8], mut run: impl FnMut(&[u8], &mut Vec<u8>)) -> f64 {
    let mut out = Vec::with_capacity(CHUNK);
    let started = Instant::now();
    for piece in src.chunks(CHUNK) {
        out.clear();
        run(piece, &mut out);
    }
    std::hint::black_box(&out);
    src.len() as f64 / started.elapsed().as_secs_f64() / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // 256 MiB of weight-like values (small, both signs, every rounding case on the way).
    let src: Vec<u8> = (0..64u32 << 20)
        .flat_map(|i| ((i as f32 * 0.618_034).sin() * 0.02).to_le_bytes())
        .collect();
    println!(
        "{:>5}  {:>16}  {:>16}  {:>6}",
        "to", "element-wise GB/s", "cast::convert GB/s", "ratio"
    );
    for to in [DType::BF16, DType::F16] {
        let (mut base, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            base.push(gb_per_s(&src, |s, d| element_wise(s, to, d)));
            ours.push(gb_per_s(&src, |s, d| cast::convert(s, DType::F32, to, d)));
        }
        let (b, o) = (median(base), median(ours));
        println!("{:>5}  {:>16.2}  {:>16.2}  {:>5.2}x", to.to_string(), b, o, o / b);
    }
}
