"""heartmula-burn: convert HeartMuLa (and any safetensors) checkpoints into Burn packs (.bpk)."""

from ._core import PackError
from .checkpoint import Checkpoint, load_checkpoint
from .errors import CheckpointError
from .manifest import Manifest, ManifestTensor, build_manifest, package_version
from .packfile import Pack, PackedTensor, open_pack
from .packing import pack_checkpoint, pack_manifest

__version__ = package_version()

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "Manifest",
    "ManifestTensor",
    "Pack",
    "PackError",
    "PackedTensor",
    "build_manifest",
    "load_checkpoint",
    "open_pack",
    "pack_checkpoint",
    "pack_manifest",
]
