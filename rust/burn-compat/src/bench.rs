//! What the benchmark binaries share, apart from the Burn calls they time: the command line,
//! the manifest's tensors located in their memory-mapped shards, and the JSON line of timings.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// One manifest entry and where its source bytes lie.
pub struct Entry {
    pub name: String,
    /// The dtype the manifest asks for in the pack (`F32`, `BF16`, `Q8S_B32`...).
    pub dtype: String,
    pub param_id: Option<u64>,
    pub source_dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    /// The whole shard, shared by its tensors; `range` is this tensor's bytes in it.
    pub map: Arc<memmap2::Mmap>,
    pub range: Range<usize>,
}

/// A parsed command line: `BINARY MANIFEST.json OUTPUT.bpk`.
pub struct Run {
    pub entries: Vec<Entry>,
    pub metadata: Vec<(String, String)>,
    pub output: PathBuf,
    started: Instant,
}

type Index = HashMap<String, (safetensors::Dtype, Vec<usize>, Range<usize>)>;

impl Run {
    /// Reads the arguments and the manifest (from `heartmula_burn manifest`), mapping each
    /// shard once and reading its header once; exits 2 on a wrong command line.
    pub fn from_args(binary: &str) -> Run {
        let args: Vec<String> = std::env::args().collect();
        if args.len() != 3 {
            eprintln!("usage: {binary} MANIFEST.json OUTPUT.bpk");
            std::process::exit(2);
        }
        let started = Instant::now();
        let manifest = PathBuf::from(&args[1]);
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&manifest).expect("read manifest"))
            .expect("manifest is JSON");
        let base = manifest.parent().unwrap_or(Path::new("."));
        let mut shards: HashMap<PathBuf, (Arc<memmap2::Mmap>, Index)> = HashMap::new();
        let mut entries = Vec::new();
        for t in doc["tensors"].as_array().expect("tensors") {
            let file = base.join(t["source"]["file"].as_str().unwrap());
            let key = t["source"]["key"].as_str().unwrap();
            let (map, index) = shards.entry(file.clone()).or_insert_with(|| map_shard(&file));
            let (source_dtype, shape, range) = index.get(key).cloned().unwrap_or_else(|| panic!("{key}: not found"));
            entries.push(Entry {
                name: t["name"].as_str().unwrap().to_string(),
                dtype: t["dtype"].as_str().unwrap().to_string(),
                param_id: t["param_id"].as_u64(),
                source_dtype,
                shape,
                map: map.clone(),
                range,
            });
        }
        let metadata = doc["metadata"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Run {
            entries,
            metadata,
            output: PathBuf::from(&args[2]),
            started,
        }
    }

    /// Times `write` (which writes `self.output`), then flushes the file to disk (`fsync`) as
    /// our packer does, and prints the timings as one JSON line.
    pub fn time_write(&self, write: impl FnOnce(&Path)) {
        let planned = self.started.elapsed().as_secs_f64();
        write(&self.output);
        let written = self.started.elapsed().as_secs_f64();
        File::open(&self.output).and_then(|f| f.sync_all()).expect("fsync");
        let synced = self.started.elapsed().as_secs_f64();
        println!(
            "{{\"plan_s\": {planned:.4}, \"write_s\": {:.4}, \"fsync_s\": {:.4}, \"seconds\": {synced:.4}}}",
            written - planned,
            synced - written
        );
    }
}

fn map_shard(file: &Path) -> (Arc<memmap2::Mmap>, Index) {
    let f = File::open(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    // SAFETY: the shards are not modified while the benchmark runs.
    let map = unsafe { memmap2::Mmap::map(&f) }.expect("mmap");
    let st = safetensors::SafeTensors::deserialize(&map).expect("valid safetensors");
    let index = st
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            let start = v.data().as_ptr() as usize - map.as_ptr() as usize;
            (k, (v.dtype(), v.shape().to_vec(), start..start + v.data().len()))
        })
        .collect();
    (Arc::new(map), index)
}
