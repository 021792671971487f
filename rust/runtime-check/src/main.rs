//! `acestep_load_check`: loads a folder of ACE-Step packs into the runtime's OWN modules
//! (`maolan_generate::acestep`, maolan-generate 0.0.19 on Burn 0.22.1), the way the runtime does,
//! and reports what burn-store's apply step saw.
//!
//! ```text
//! acestep_load_check --list-expected FOLDER [--prefix sft-]
//! acestep_load_check check FOLDER OUT_DIR [--prefix sft-] [--strict] [--skip-from-burnpack]
//! ```
//!
//! `--list-expected` prints, for each pack whose config is in FOLDER, one JSON line with the config
//! the runtime parses and every tensor (name, shape, dtype) of the module built from it.
//!
//! `check` prints, for each pack present in FOLDER, one JSON line:
//! `{"pack", "module", "from_burnpack", "load_from", "missing", "unused", "errors", "applied",
//! "dtypes", "warnings", "saved", ...}`, then saves the loaded module back to `OUT_DIR/<pack>` with
//! burn-store's writer (so values that went through the module can be compared by name). The exit
//! status is 1 when a pack has missing tensors or apply errors, a module cannot be built or the
//! runtime's own loader rejects the pack; `--strict` also fails on unused tensors and warnings
//! (non-F32 tensors, config inconsistencies the runtime only trips over at generation time).

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use burn::module::Module;
use burn::tensor::{DType, Device};
use burn_store::{ApplyResult, BurnpackStore, ModuleSnapshot, ModuleStore};
use maolan_generate::acestep::condition::AceStepCondition;
use maolan_generate::acestep::config::AceStepConfig;
use maolan_generate::acestep::dit::AceStepDiT;
use maolan_generate::acestep::qwen3::{Qwen3Config, Qwen3Model};
use maolan_generate::acestep::vae::{OobleckDecoder, OobleckVaeConfig};
use maolan_generate::acestep::{SilenceLatent, lm::AceStepLm};
use serde_json::{Value, json};

const USAGE: &str = "\
usage:
  acestep_load_check --list-expected FOLDER [--prefix sft-]
  acestep_load_check check FOLDER OUT_DIR [--prefix sft-] [--strict] [--skip-from-burnpack] [--vulkan]

--prefix: \"\" (turbo, the default) or \"sft-\", as the runtime's AceStepVariant.
--strict: also fail on unused tensors and on warnings.
--skip-from-burnpack: do not also call the runtime's own <Module>::from_burnpack (halves the
  time on full-size packs; the check itself builds the module and calls load_from either way).
--vulkan: load onto the runtime's default GPU device (wgpu pinned to Vulkan, as maolan-generate's
  vulkan_device sets it up) instead of Flex on the CPU; Mesa's lavapipe serves where no GPU is.";

/// Which runtime module a pack is loaded into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `qwen3-encoder.bpk`: `Qwen3Model::from_burnpack(&Qwen3Config, ..)`.
    TextEncoder,
    /// `acestep-lm*.bpk`: `AceStepLm::from_burnpack(&Qwen3Config, ..)` (a `Qwen3Model`).
    Lm,
    /// `acestep-dit.bpk`: `AceStepDiT::from_burnpack(&AceStepConfig, ..)`.
    Dit,
    /// `acestep-condition.bpk`: `AceStepCondition::from_burnpack(&AceStepConfig, ..)`.
    Condition,
    /// `acestep-vae.bpk`: `OobleckDecoder::from_burnpack(&OobleckVaeConfig, ..)`.
    Vae,
    /// `silence_latent.bpk`: `SilenceLatent::from_burnpack(..)` (by name, no module shape).
    Silence,
}

impl Kind {
    fn module_name(self) -> &'static str {
        match self {
            Self::TextEncoder => "Qwen3Model",
            Self::Lm => "AceStepLm (Qwen3Model)",
            Self::Dit => "AceStepDiT",
            Self::Condition => "AceStepCondition",
            Self::Vae => "OobleckDecoder",
            Self::Silence => "SilenceLatent",
        }
    }
}

/// One pack of the runtime's folder and the config file it is built from.
#[derive(Clone, Debug)]
struct PackSpec {
    pack: String,
    config: Option<String>,
    kind: Kind,
}

/// The packs of one variant's folder, as `AceStepModelPaths::resolve_for_lm` names them.
fn pack_specs(prefix: &str) -> Vec<PackSpec> {
    let spec = |pack: String, config: Option<String>, kind| PackSpec { pack, config, kind };
    let mut specs = vec![spec(
        "qwen3-encoder.bpk".into(),
        Some("qwen3_config.json".into()),
        Kind::TextEncoder,
    )];
    // The turbo folder may hold all three planners (`--acestep-lm 0.6B|1.7B|4B`); SFT has one.
    let lm_suffixes: &[&str] = if prefix.is_empty() {
        &["", "-1.7b", "-4b"]
    } else {
        &[""]
    };
    for suffix in lm_suffixes {
        specs.push(spec(
            format!("{prefix}acestep-lm{suffix}.bpk"),
            Some(format!("{prefix}lm_config{suffix}.json")),
            Kind::Lm,
        ));
    }
    let dit_config = format!("{prefix}dit_config.json");
    specs.push(spec(
        format!("{prefix}acestep-dit.bpk"),
        Some(dit_config.clone()),
        Kind::Dit,
    ));
    specs.push(spec(
        format!("{prefix}acestep-condition.bpk"),
        Some(dit_config),
        Kind::Condition,
    ));
    specs.push(spec(
        "acestep-vae.bpk".into(),
        Some("vae_config.json".into()),
        Kind::Vae,
    ));
    specs.push(spec("silence_latent.bpk".into(), None, Kind::Silence));
    specs
}

/// A module built from its config exactly as the runtime's `from_burnpack` builds it.
// One value at a time, moved once or twice per pack: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Built {
    Qwen3(Qwen3Model),
    Dit(AceStepDiT),
    Condition(AceStepCondition),
    Vae(OobleckDecoder),
}

impl Built {
    fn qwen3(self) -> Option<Qwen3Model> {
        match self {
            Self::Qwen3(m) => Some(m),
            _ => None,
        }
    }
    fn dit(self) -> Option<AceStepDiT> {
        match self {
            Self::Dit(m) => Some(m),
            _ => None,
        }
    }
    fn condition(self) -> Option<AceStepCondition> {
        match self {
            Self::Condition(m) => Some(m),
            _ => None,
        }
    }
    fn vae(self) -> Option<OobleckDecoder> {
        match self {
            Self::Vae(m) => Some(m),
            _ => None,
        }
    }
}

/// A second module of the same kind (the first was built from the same config moments ago).
fn rebuild_as<M>(rebuild: impl FnOnce() -> Result<Built>, pick: fn(Built) -> Option<M>) -> impl FnOnce() -> M {
    move || {
        rebuild()
            .ok()
            .and_then(pick)
            .expect("the module was built from this config a moment ago")
    }
}

/// Runs `f`, turning a panic (a module constructor given an impossible config, a rank mismatch
/// in `Tensor::<3>::from_data`) into an error.
fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic payload".into());
        Err(anyhow!("{what} panicked: {message}"))
    })
}

fn qwen3_config_json(config: &Qwen3Config) -> Value {
    json!({
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "head_dim_used": config.head_dim(),
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
    })
}

fn acestep_config_json(config: &AceStepConfig) -> Value {
    json!({
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "sliding_window": config.sliding_window,
        "in_channels": config.in_channels,
        "audio_acoustic_hidden_dim": config.audio_acoustic_hidden_dim,
        "patch_size": config.patch_size,
        "text_hidden_dim": config.text_hidden_dim,
        "num_lyric_encoder_hidden_layers": config.num_lyric_encoder_hidden_layers,
        "num_timbre_encoder_hidden_layers": config.num_timbre_encoder_hidden_layers,
        "timbre_fix_frame": config.timbre_fix_frame,
        "pool_window_size": config.pool_window_size,
        "num_attention_pooler_hidden_layers": config.num_attention_pooler_hidden_layers,
        "fsq_dim": config.fsq_dim,
        "fsq_input_levels": config.fsq_input_levels,
        "vocab_size": config.vocab_size,
        "layer_types": config.layer_types,
        "is_turbo": config.is_turbo,
    })
}

/// Inconsistencies the runtime accepts at load time but trips over (or silently ignores) later.
fn acestep_config_warnings(config: &AceStepConfig, folder: &Path) -> Vec<String> {
    let mut warnings = Vec::new();
    if config.hidden_size != 2048 {
        warnings.push(format!(
            "hidden_size {} != 2048: the FSQ quantizer is fixed at 2048 (project_in [6, 2048], \
             project_out [2048, 6]) whatever the config, so generation (FSQ -> detokenizer) \
             needs hidden_size 2048; loading is unaffected",
            config.hidden_size
        ));
    }
    if config.in_channels != 3 * config.audio_acoustic_hidden_dim {
        warnings.push(format!(
            "in_channels {} != 3 x audio_acoustic_hidden_dim {}: the DiT is fed \
             [xt, src_latents, chunk_mask], each audio_acoustic_hidden_dim wide",
            config.in_channels, config.audio_acoustic_hidden_dim
        ));
    }
    if config.layer_types.len() < config.num_hidden_layers {
        warnings.push(format!(
            "layer_types has {} entries for {} layers: missing entries mean full attention",
            config.layer_types.len(),
            config.num_hidden_layers
        ));
    }
    if config.num_key_value_heads == 0 || !config.num_attention_heads.is_multiple_of(config.num_key_value_heads) {
        warnings.push(format!(
            "num_attention_heads {} is not a multiple of num_key_value_heads {}",
            config.num_attention_heads, config.num_key_value_heads
        ));
    }
    if config.timbre_fix_frame != 750 {
        warnings.push(format!(
            "timbre_fix_frame {} is ignored: the runtime always takes 750 frames of the silence \
             latent as the timbre reference",
            config.timbre_fix_frame
        ));
    }
    if config.fsq_input_levels != [8, 8, 8, 5, 5, 5] || config.fsq_dim != 2048 {
        warnings.push(format!(
            "fsq_input_levels {:?} / fsq_dim {} are ignored: the runtime's FSQ is fixed at \
             levels [8, 8, 8, 5, 5, 5] and 2048 dims",
            config.fsq_input_levels, config.fsq_dim
        ));
    }
    if let Ok(text) = Qwen3Config::load(&folder.join("qwen3_config.json"))
        && text.hidden_size != config.text_hidden_dim
    {
        warnings.push(format!(
            "text_hidden_dim {} != the text encoder's hidden_size {} (qwen3_config.json)",
            config.text_hidden_dim, text.hidden_size
        ));
    }
    warnings
}

/// Parses the pack's config the way the runtime does and builds the module with the runtime's
/// own constructor (the first line of every `from_burnpack`). Returns the module, the config as
/// JSON and config warnings.
fn build(spec: &PackSpec, folder: &Path, device: &Device) -> Result<(Built, Value, Vec<String>)> {
    let config_path = folder.join(
        spec.config
            .as_deref()
            .ok_or_else(|| anyhow!("{} has no config", spec.pack))?,
    );
    match spec.kind {
        Kind::TextEncoder | Kind::Lm => {
            let config = Qwen3Config::load(&config_path)?;
            let mut warnings = Vec::new();
            if spec.kind == Kind::TextEncoder && config.vocab_size <= 151_643 {
                warnings.push(format!(
                    "vocab_size {} <= 151643: the runtime always feeds token id 151643 to the \
                     text encoder, so generation needs a larger vocabulary",
                    config.vocab_size
                ));
            }
            let module = no_panic("module construction", || {
                Ok(match spec.kind {
                    // `AceStepLm::new` wraps exactly `Qwen3Model::new`; its `model` is the module
                    // the planner pack is loaded into (no `lm_head`: the head is tied).
                    Kind::Lm => AceStepLm::new(&config, device).model,
                    _ => Qwen3Model::new(&config, device),
                })
            })?;
            Ok((Built::Qwen3(module), qwen3_config_json(&config), warnings))
        }
        Kind::Dit | Kind::Condition => {
            let config = AceStepConfig::load(&config_path)?;
            let warnings = acestep_config_warnings(&config, folder);
            let module = no_panic("module construction", || {
                Ok(match spec.kind {
                    Kind::Dit => Built::Dit(AceStepDiT::new(&config, device)),
                    _ => Built::Condition(AceStepCondition::new(&config, device)),
                })
            })?;
            Ok((module, acestep_config_json(&config), warnings))
        }
        Kind::Vae => {
            let config = OobleckVaeConfig::load(&config_path)?;
            let value = serde_json::to_value(&config)?;
            let module = no_panic("module construction", || Ok(OobleckDecoder::new(&config, device)))?;
            Ok((Built::Vae(module), value, Vec::new()))
        }
        Kind::Silence => bail!("silence_latent.bpk is not built from a config"),
    }
}

/// Calls the runtime's own loader for the pack (it builds its own module and drops it).
fn runtime_from_burnpack(spec: &PackSpec, folder: &Path, device: &Device) -> Result<()> {
    let path = folder.join(&spec.pack);
    let config_path = folder.join(spec.config.as_deref().unwrap_or_default());
    no_panic("from_burnpack", || match spec.kind {
        Kind::TextEncoder => Qwen3Model::from_burnpack(&Qwen3Config::load(&config_path)?, &path, device).map(drop),
        Kind::Lm => AceStepLm::from_burnpack(&Qwen3Config::load(&config_path)?, &path, device).map(drop),
        Kind::Dit => AceStepDiT::from_burnpack(&AceStepConfig::load(&config_path)?, &path, device).map(drop),
        Kind::Condition => {
            AceStepCondition::from_burnpack(&AceStepConfig::load(&config_path)?, &path, device).map(drop)
        }
        Kind::Vae => OobleckDecoder::from_burnpack(&OobleckVaeConfig::load(&config_path)?, &path, device).map(drop),
        Kind::Silence => SilenceLatent::from_burnpack(&path, device).map(drop),
    })
}

/// Every tensor of a module, as burn-store's collector names it (what a pack must hold).
fn expected_tensors<M: ModuleSnapshot>(module: &M) -> Vec<Value> {
    module
        .collect(None, None, false)
        .iter()
        .map(|t| json!({"name": t.name, "shape": t.shape.to_vec(), "dtype": dtype_name(t.dtype)}))
        .collect()
}

fn dtype_name(dtype: DType) -> String {
    format!("{dtype:?}")
}

/// Names, shapes and dtypes of the tensors IN THE PACK FILE (burn-store's reader, header only).
struct PackContents {
    names: Vec<String>,
    dtypes: BTreeMap<String, usize>,
    shapes: BTreeMap<String, Vec<usize>>,
}

fn read_pack(path: &Path) -> Result<PackContents> {
    let mut store = BurnpackStore::from_file(path);
    let tensors = store
        .get_all_tensors()
        .map_err(|e| anyhow!("failed to read {}: {e}", path.display()))?;
    let mut dtypes = BTreeMap::new();
    let mut shapes = BTreeMap::new();
    for (name, tensor) in tensors {
        *dtypes.entry(dtype_name(tensor.dtype)).or_insert(0) += 1;
        shapes.insert(name.clone(), tensor.shape.to_vec());
    }
    Ok(PackContents {
        names: tensors.keys().cloned().collect(),
        dtypes,
        shapes,
    })
}

/// The runtime's load: `BurnpackStore::from_file` + `load_from`, which fails on missing tensors
/// and on apply errors. Where it fails, the same apply into a FRESH module (`rebuild`) with
/// `allow_partial(true)` and `validate(false)`, so that the lists come back instead of one error
/// string. (Not into the same module: a `LinearLayout::Col` weight that has been loaded once
/// reports its shape transposed, so a second apply into it sees spurious shape mismatches.)
fn load<M: ModuleSnapshot>(module: &mut M, rebuild: impl FnOnce() -> M, path: &Path) -> (Result<()>, ApplyResult) {
    let mut store = BurnpackStore::from_file(path);
    match module.load_from(&mut store) {
        Ok(result) => (Ok(()), result),
        Err(err) => {
            let runtime_err = anyhow!("{err}");
            let mut fresh = rebuild();
            let mut lenient = BurnpackStore::from_file(path).allow_partial(true).validate(false);
            match fresh.load_from(&mut lenient) {
                Ok(result) => (Err(runtime_err), result),
                Err(err2) => (
                    Err(runtime_err.context(format!("lenient reload also failed: {err2}"))),
                    ApplyResult {
                        applied: Vec::new(),
                        skipped: Vec::new(),
                        missing: Vec::new(),
                        unused: Vec::new(),
                        errors: Vec::new(),
                    },
                ),
            }
        }
    }
}

fn save<M: ModuleSnapshot>(module: &M, out: &Path) -> Result<()> {
    let mut store = BurnpackStore::from_file(out).overwrite(true);
    module
        .save_into(&mut store)
        .map_err(|e| anyhow!("failed to save {}: {e}", out.display()))
}

/// Loads one pack and reports; returns the report and whether it passed.
fn check_pack(
    spec: &PackSpec,
    folder: &Path,
    out_dir: &Path,
    device: &Device,
    options: &CheckOptions,
) -> (Value, bool) {
    let path = folder.join(&spec.pack);
    let mut report = json!({
        "pack": spec.pack,
        "module": spec.kind.module_name(),
        "config_file": spec.config,
        "missing": [],
        "unused": [],
        "errors_apply": [],
        "applied": 0,
        "saved": null,
    });
    let mut errors: Vec<String> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();

    let contents = match read_pack(&path) {
        Ok(contents) => contents,
        Err(err) => {
            report["errors"] = json!([format!("{err:#}")]);
            return (report, false);
        }
    };
    report["tensors_in_pack"] = json!(contents.names.len());
    report["dtypes"] = json!(contents.dtypes);
    if contents.dtypes.keys().any(|d| d != "F32") && spec.kind != Kind::Silence {
        warnings.push(
            "pack holds non-F32 tensors: the runtime keeps the file's dtype (no cast on load) \
             and its modules do not cast their weights"
                .into(),
        );
    }

    if options.from_burnpack {
        report["from_burnpack"] = match runtime_from_burnpack(spec, folder, device) {
            Ok(()) => json!("ok"),
            Err(err) => {
                errors.push(format!("runtime from_burnpack: {err:#}"));
                json!(format!("{err:#}"))
            }
        };
    }

    let out = out_dir.join(&spec.pack);
    let passed = if spec.kind == Kind::Silence {
        check_silence(
            &path,
            &out,
            &contents,
            device,
            &mut report,
            &mut errors,
            &mut warnings,
            folder,
            &options.prefix,
        )
    } else {
        match build(spec, folder, device) {
            Err(err) => {
                errors.push(format!("cannot build module: {err:#}"));
                false
            }
            Ok((built, config, config_warnings)) => {
                report["config"] = config;
                warnings.extend(config_warnings);
                // A fresh module for the lenient second pass, built the same way.
                let rebuild = || build(spec, folder, device).map(|(built, _, _)| built);
                let (outcome, result) = match built {
                    Built::Qwen3(mut m) => finish(&mut m, rebuild_as(rebuild, Built::qwen3), &path, &out),
                    Built::Dit(mut m) => finish(&mut m, rebuild_as(rebuild, Built::dit), &path, &out),
                    Built::Condition(mut m) => finish(&mut m, rebuild_as(rebuild, Built::condition), &path, &out),
                    Built::Vae(mut m) => finish(&mut m, rebuild_as(rebuild, Built::vae), &path, &out),
                };
                report["load_from"] = match &outcome.load {
                    Ok(()) => json!("ok"),
                    Err(err) => json!(format!("{err:#}")),
                };
                report["missing"] = json!(result.missing.iter().map(|(p, _)| p).collect::<Vec<_>>());
                report["unused"] = json!(result.unused);
                report["errors_apply"] = json!(result.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>());
                report["applied"] = json!(result.applied.len());
                if !result.skipped.is_empty() {
                    report["skipped"] = json!(result.skipped);
                }
                errors.extend(result.errors.iter().map(|e| e.to_string()));
                if let Err(err) = &outcome.load
                    && result.errors.is_empty()
                    && result.missing.is_empty()
                {
                    errors.push(format!("load_from: {err:#}"));
                }
                if let Some(err) = outcome.save_error {
                    errors.push(err);
                }
                report["saved"] = json!(outcome.saved.then(|| out.display().to_string()));
                if options.strict && !result.unused.is_empty() {
                    errors.push(format!("--strict: {} unused tensors", result.unused.len()));
                }
                result.missing.is_empty() && outcome.load.is_ok()
            }
        }
    };
    if options.strict && !warnings.is_empty() {
        errors.push(format!("--strict: {} warnings", warnings.len()));
    }
    report["errors"] = json!(errors);
    report["warnings"] = json!(warnings);
    (report, passed && errors.is_empty())
}

struct Outcome {
    load: Result<()>,
    saved: bool,
    save_error: Option<String>,
}

/// Loads the pack into the built module and, when nothing is missing and nothing failed, saves
/// the loaded module to `out`.
fn finish<M: ModuleSnapshot>(
    module: &mut M,
    rebuild: impl FnOnce() -> M,
    path: &Path,
    out: &Path,
) -> (Outcome, ApplyResult) {
    let (load, result) = load(module, rebuild, path);
    let mut outcome = Outcome {
        load,
        saved: false,
        save_error: None,
    };
    if outcome.load.is_ok() {
        match save(module, out) {
            Ok(()) => outcome.saved = true,
            Err(err) => outcome.save_error = Some(format!("{err:#}")),
        }
    }
    (outcome, result)
}

/// `silence_latent.bpk`: the runtime reads tensor `silence_latent` by name, converts it to f32
/// and builds a rank-3 tensor from it (`SilenceLatent::from_burnpack`); there is no module shape
/// to validate against. Other tensors in the file are ignored.
#[allow(clippy::too_many_arguments)]
fn check_silence(
    path: &Path,
    out: &Path,
    contents: &PackContents,
    device: &Device,
    report: &mut Value,
    errors: &mut Vec<String>,
    warnings: &mut Vec<String>,
    folder: &Path,
    prefix: &str,
) -> bool {
    let name = "silence_latent";
    let present = contents.names.iter().any(|n| n == name);
    report["missing"] = json!(if present { vec![] } else { vec![name] });
    report["unused"] = json!(contents.names.iter().filter(|n| *n != name).collect::<Vec<_>>());
    report["errors_apply"] = json!([]);
    report["saved"] = Value::Null;
    if !present {
        report["applied"] = json!(0);
        errors.push(format!("no tensor named {name}"));
        return false;
    }
    if let Some(shape) = contents.shapes.get(name) {
        report["shape_in_pack"] = json!(shape);
    }
    match no_panic("SilenceLatent::from_burnpack", || {
        SilenceLatent::from_burnpack(path, device)
    }) {
        Err(err) => {
            report["applied"] = json!(0);
            errors.push(format!("{err:#}"));
            false
        }
        Ok(silence) => {
            report["applied"] = json!(1);
            let shape = silence.silence_latent.val().dims();
            let dtype = silence.silence_latent.val().dtype();
            report["shape"] = json!(shape);
            report["loaded_dtype"] = json!(dtype_name(dtype));
            if shape[0] != 1 {
                warnings.push(format!("batch dim {} != 1", shape[0]));
            }
            if let Ok(config) = AceStepConfig::load(&folder.join(format!("{prefix}dit_config.json")))
                && shape[2] != config.audio_acoustic_hidden_dim
            {
                warnings.push(format!(
                    "last dim {} != audio_acoustic_hidden_dim {} (the timbre encoder's input)",
                    shape[2], config.audio_acoustic_hidden_dim
                ));
            }
            if shape[1] < 750 {
                warnings.push(format!(
                    "{} frames < 750: the runtime tiles it to the 750-frame timbre reference",
                    shape[1]
                ));
            }
            match save(&silence, out) {
                Ok(()) => {
                    report["saved"] = json!(out.display().to_string());
                    true
                }
                Err(err) => {
                    errors.push(format!("{err:#}"));
                    false
                }
            }
        }
    }
}

/// `--list-expected`: one JSON line per pack whose config is in the folder.
fn list_expected(folder: &Path, prefix: &str, device: &Device) -> Result<bool> {
    let mut ok = true;
    let mut any = false;
    for spec in pack_specs(prefix) {
        let mut line = json!({
            "pack": spec.pack,
            "module": spec.kind.module_name(),
            "config_file": spec.config,
            "present": folder.join(&spec.pack).exists(),
        });
        if spec.kind == Kind::Silence {
            let dit = AceStepConfig::load(&folder.join(format!("{prefix}dit_config.json"))).ok();
            let width = dit.map(|c| c.audio_acoustic_hidden_dim);
            line["tensors"] = json!([{
                "name": "silence_latent",
                "shape": [1, Value::Null, width],
                "dtype": "any float (converted to f32 on read)",
            }]);
            line["note"] = json!(
                "read by name, not through a module: [1, S, audio_acoustic_hidden_dim], S free \
                 (750 frames are taken as the timbre reference, tiled if shorter)"
            );
            println!("{line}");
            continue;
        }
        let Some(config) = &spec.config else { continue };
        if !folder.join(config).exists() {
            continue;
        }
        any = true;
        match build(&spec, folder, device) {
            Err(err) => {
                ok = false;
                line["errors"] = json!([format!("cannot build module: {err:#}")]);
            }
            Ok((built, config, warnings)) => {
                line["config"] = config;
                line["warnings"] = json!(warnings);
                let tensors = match &built {
                    Built::Qwen3(m) => expected_tensors(m),
                    Built::Dit(m) => expected_tensors(m),
                    Built::Condition(m) => expected_tensors(m),
                    Built::Vae(m) => expected_tensors(m),
                };
                line["num_tensors"] = json!(tensors.len());
                line["num_params"] = json!(match &built {
                    Built::Qwen3(m) => m.num_params(),
                    Built::Dit(m) => m.num_params(),
                    Built::Condition(m) => m.num_params(),
                    Built::Vae(m) => m.num_params(),
                });
                line["tensors"] = json!(tensors);
            }
        }
        println!("{line}");
    }
    if !any {
        eprintln!(
            "no config of the {} folder in {}",
            if prefix.is_empty() { "turbo" } else { "sft" },
            folder.display()
        );
        ok = false;
    }
    Ok(ok)
}

struct CheckOptions {
    prefix: String,
    strict: bool,
    from_burnpack: bool,
    vulkan: bool,
}

/// The device the runtime loads onto: Flex on the CPU, or its Vulkan device, configured as
/// maolan-generate 0.0.19's `vulkan_device` configures it.
fn device(vulkan: bool) -> Result<Device> {
    if !vulkan {
        return Ok(Device::flex());
    }
    Device::wgpu_options()
        .graphics_api(burn::tensor::wgpu::WgpuBackend::Vulkan)
        .memory_config(burn::tensor::wgpu::MemoryConfiguration::ExclusivePages)
        .init()
        .map_err(|error| anyhow::anyhow!("Failed to initialize Vulkan: {error}"))
}

fn check(folder: &Path, out_dir: &Path, options: &CheckOptions) -> Result<bool> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let device = device(options.vulkan)?;
    let mut ok = true;
    let mut checked = 0;
    for spec in pack_specs(&options.prefix) {
        if !folder.join(&spec.pack).exists() {
            continue;
        }
        checked += 1;
        let (report, passed) = check_pack(&spec, folder, out_dir, &device, options);
        println!("{report}");
        ok &= passed;
    }
    if checked == 0 {
        eprintln!("no pack of the runtime's folder in {}", folder.display());
        ok = false;
    }
    Ok(ok)
}

fn run() -> Result<bool> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut take_flag = |flag: &str| -> bool {
        let before = args.len();
        args.retain(|a| a != flag);
        args.len() != before
    };
    let strict = take_flag("--strict");
    let skip_from_burnpack = take_flag("--skip-from-burnpack");
    let vulkan = take_flag("--vulkan");
    let mut prefix = String::new();
    if let Some(i) = args.iter().position(|a| a == "--prefix") {
        if i + 1 >= args.len() {
            bail!("--prefix needs a value\n{USAGE}");
        }
        prefix = args.remove(i + 1);
        args.remove(i);
    }
    if !prefix.is_empty() && prefix != "sft-" {
        bail!("--prefix must be \"\" (turbo) or \"sft-\", got {prefix:?}");
    }
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["--list-expected", folder] => list_expected(&PathBuf::from(folder), &prefix, &Device::flex()),
        ["check", folder, out_dir] => check(
            &PathBuf::from(folder),
            &PathBuf::from(out_dir),
            &CheckOptions {
                prefix: prefix.clone(),
                strict,
                from_burnpack: !skip_from_burnpack,
                vulkan,
            },
        ),
        _ => bail!("{USAGE}"),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("{err:#}");
            ExitCode::from(2)
        }
    }
}
