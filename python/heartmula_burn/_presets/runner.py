"""What every model's `sanity` runner is made of (each model's `sanity.py` builds on it, and the
orchestrator, `_sanity`, runs it): a check's verdict, the result of a run, the runner's shape, and
the checks every model shares. It sits below the models, so that no model imports upward."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .._fields import Fields
from .._weights import import_torch

if TYPE_CHECKING:
    import torch

    from . import Preset


@dataclass
class Check:
    name: str
    ok: bool | None  # None: reported, not judged
    figure: str


@dataclass
class SanityResult:
    pack: str
    reference: str | None
    device: str
    pack_dtype: str
    frames: int
    model: str = ""  # the preset's name
    checks: list[Check] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    figures: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


class Runner(ABC):
    """How one model is run and judged: its outputs (those compared with a reference, in order),
    what its weights must satisfy, and what its outputs must."""

    preset: ClassVar[Preset]
    compared: ClassVar[tuple[str, ...]]
    # The least cosine similarity a quantized pack's float outputs may have to the unquantized
    # reference's; None: the difference is reported, not judged.
    quantized_cosine_bound: ClassVar[float | None] = None

    def __init__(self, config: Fields, frames: int) -> None:
        self.config = config
        self.frames = frames

    @abstractmethod
    def outputs(self, weights: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
        """Every output the checks look at, as CPU tensors."""

    def weight_checks(self, weights: Mapping[str, torch.Tensor], result: SanityResult) -> None:
        finite_weights(weights, result)

    @abstractmethod
    def output_checks(self, out: dict[str, torch.Tensor], result: SanityResult) -> None: ...


def max_abs(x: torch.Tensor) -> float:
    return float(x.abs().max()) if x.numel() else 0.0


def finite_weights(weights: Mapping[str, torch.Tensor], result: SanityResult) -> None:
    torch = import_torch()
    counts = {n: int((~torch.isfinite(w)).sum()) for n, w in weights.items() if w.is_floating_point()}
    bad = {n: c for n, c in counts.items() if c}
    figure = (
        "all finite"
        if not bad
        else f"{sum(bad.values())} non-finite values in "
        + ", ".join(f"'{n}' ({c})" for n, c in list(bad.items())[:3])
        + (f" and {len(bad) - 3} more tensors" if len(bad) > 3 else "")
    )
    result.checks.append(Check("weights finite", not bad, f"{len(weights)} tensors, {figure}"))
