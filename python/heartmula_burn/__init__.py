"""heartmula-burn: convert HeartMuLa (and any safetensors) checkpoints into Burn packs (.bpk)."""

from .checkpoint import Checkpoint, load_checkpoint, load_checkpoints
from .errors import CheckpointError, HeartmulaBurnError, HubError, OutputError, PackFileError, SourceError
from .manifest import Manifest, ManifestTensor, build_manifest, package_version
from .packfile import Pack, PackedTensor, PackMetadata, PackSlice, PackTensor, open_pack, safe_open
from .packing import Conversion, PackReport, pack_checkpoint, pack_manifest
from .verify import unpack, verify

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
    "SourceError",
    "build_manifest",
    "load_checkpoint",
    "load_checkpoints",
    "open_pack",
    "pack_checkpoint",
    "pack_manifest",
    "safe_open",
    "unpack",
    "verify",
]
