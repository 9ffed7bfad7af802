"""The small interface BAC is built against.

A cacheable denoiser exposes its residual blocks in execution order, each with
its layer and kind (BAC_NOTES.md, "Blocks"). BAC never looks further inside the
model: DP-T implements this today; VLA action heads (RDT-1B) can implement it
tomorrow without BAC changing.

This module imports nothing but the standard library and typing-only torch, so
the engine can implement it without depending on the rest of BAC.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import torch


class BlockKind(str, enum.Enum):
    """Kind of a residual sub-block of a transformer layer."""

    SELF_ATTN = "sa"
    CROSS_ATTN = "ca"
    FFN = "ffn"


@dataclass(frozen=True)
class BlockInfo:
    """One cacheable residual block: x = x + block(LN(x))."""

    index: int  # position in execution order, 0..n_blocks-1
    layer: int  # transformer layer the block belongs to
    kind: BlockKind

    @property
    def name(self) -> str:
        return f"L{self.layer}.{self.kind.value}"


@runtime_checkable
class BlockCache(Protocol):
    """What a cacheable model asks at every block of every denoising step.

    The caller owns the denoising loop (diffusers-style): it calls
    ``reset()`` once per action chunk and ``set_step(k)`` before the k-th
    model call (k = 0 is the first, noisiest call).
    """

    def reset(self) -> None: ...

    def set_step(self, step_index: int) -> None: ...

    def should_compute(self, block_index: int) -> bool: ...

    def store(self, block_index: int, delta: torch.Tensor) -> None: ...

    def load(self, block_index: int) -> torch.Tensor: ...

    @property
    def computed_count(self) -> int:
        """Block evaluations since the last ``reset()`` (for latency reports)."""
        ...


# Optional on a BlockCache: ``computes_kind(kind) -> bool``, whether any block of that kind
# computes at the current step. A model may then skip inputs only those blocks read (DP-T
# skips its condition encoder, read only by cross-attention, on steps where every
# cross-attention block is reused); a cache without it gets everything computed.
# Optional too: ``reused_total() -> Tensor | None``, on a step where no block computes, the
# sum of every cached output (the model adds it once instead of block by block).


# Called with (block_index, delta) for every computed block; used by
# calibration to record features. None on the inference path (no hooks).
BlockObserver = Callable[[int, "torch.Tensor"], None]


@runtime_checkable
class CacheableDenoiser(Protocol):
    """A denoiser whose forward can compute or reuse each residual block."""

    def blocks(self) -> Sequence[BlockInfo]: ...

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        cond: Optional[torch.Tensor] = None,
        cache: Optional[BlockCache] = None,
        observer: Optional[BlockObserver] = None,
    ) -> torch.Tensor: ...
