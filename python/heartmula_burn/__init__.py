"""heartmula-burn: convert HeartMuLa (and any safetensors) checkpoints into Burn packs (.bpk)."""

from .checkpoint import Checkpoint, load_checkpoint, load_checkpoints
from .errors import CheckpointError, HeartmulaBurnError, HubError, OutputError, PackFileError, SourceError
from .manifest import Manifest, ManifestTensor, build_manifest, package_version
from .packfile import Pack, PackedTensor, open_pack
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
    "PackReport",
    "PackedTensor",
    "SourceError",
    "build_manifest",
    "load_checkpoint",
    "load_checkpoints",
    "open_pack",
    "pack_checkpoint",
    "pack_manifest",
    "unpack",
    "verify",
]
