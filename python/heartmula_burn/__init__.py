"""heartmula-burn: convert HeartMuLa, ACE-Step 1.5 (and any safetensors) checkpoints into Burn packs (.bpk).

The public API is what this module exports (`__all__`); the modules whose names start with `_`
are internal and may change between releases. The command line: `python -m heartmula_burn --help`."""

from ._checkpoint import Checkpoint, load_checkpoint, load_checkpoints
from ._errors import CheckpointError, HeartmulaBurnError, HubError, OutputError, PackFileError, SourceError
from ._hub.packing import pack_hub
from ._manifest import Manifest, ManifestTensor, build_manifest, package_version
from ._packfile import Pack, PackedTensor, PackMetadata, PackSlice, PackTensor, open_pack, safe_open
from ._packing import Conversion, PackReport, pack_checkpoint, pack_manifest
from ._presets.acestep.folder import pack_acestep
from ._presets.runner import SanityResult
from ._sanity import run as sanity
from ._verify import unpack, verify

__version__ = package_version()

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "Conversion",
    "HeartmulaBurnError",
    "HubError",
    "Manifest",
    "ManifestTensor",
    "OutputError",
    "Pack",
    "PackFileError",
    "PackMetadata",
    "PackReport",
    "PackSlice",
    "PackTensor",
    "PackedTensor",
    "SanityResult",
    "SourceError",
    "build_manifest",
    "load_checkpoint",
    "load_checkpoints",
    "open_pack",
    "pack_acestep",
    "pack_checkpoint",
    "pack_hub",
    "pack_manifest",
    "safe_open",
    "sanity",
    "unpack",
    "verify",
]
