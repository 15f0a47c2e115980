"""Find the text-facing projections (``to_k``, ``to_v``) of every cross-attention in a diffusers UNet.

SD1.x and SD2.x have 16 cross-attentions (``attn2``); SDXL has several transformer blocks per attention
module (70 in the base model). Each projection is an ``nn.Linear`` without bias, ``W ∈ R^{m×d}`` with d the
text-embedding width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from mist_debias.core.errors import ModelLoadError

PROJECTIONS = ("k", "v")


@dataclass(frozen=True)
class Projection:
    """One editable matrix: its dotted module name in the UNet and the ``nn.Linear`` itself."""

    name: str
    module: nn.Linear

    @property
    def weight_shape(self) -> tuple[int, int]:
        return tuple(self.module.weight.shape)  # type: ignore[return-value]


def find_cross_attention_projections(
    unet: nn.Module,
    projections: Sequence[str] = PROJECTIONS,
    blocks: Sequence[str] | None = None,
) -> list[Projection]:
    """All cross-attention ``to_k`` / ``to_v`` layers of ``unet``, in module order.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (or any module built from diffusers ``Attention``).
        projections: which of ``"k"`` and ``"v"`` to include.
        blocks: keep only layers whose name starts with one of these prefixes (e.g. ``"mid_block"``,
            ``"up_blocks.1"``); ``None`` keeps all.

    Raises:
        ModelLoadError: when the UNet has no cross-attention or the filters leave nothing.
    """
    unknown = set(projections) - set(PROJECTIONS)
    if unknown or not projections:
        raise ModelLoadError(f"projections must be a non-empty subset of {PROJECTIONS}, got {list(projections)}")
    found = []
    for name, module in unet.named_modules():
        if not getattr(module, "is_cross_attention", False):
            continue
        if blocks is not None and not any(name == b or name.startswith(b + ".") for b in blocks):
            continue
        for projection in projections:
            linear = getattr(module, f"to_{projection}")
            found.append(Projection(name=f"{name}.to_{projection}", module=linear))
    if not found:
        reason = "the UNet has no cross-attention layers" if blocks is None else f"no cross-attention in {blocks}"
        raise ModelLoadError(f"nothing to edit: {reason}")
    return found
