"""Pick a classifier by name: the synthetic world's exact oracle, or a CLIP zero-shot model."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mist_debias.measure.classifiers.base import CellClassifier

ORACLE = "oracle"


def load_classifier(
    name: str,
    device: torch.device | str = "cpu",
    mode: str = "joint",
    templates: Sequence[str] | None = None,
    batch_size: int = 32,
) -> CellClassifier:
    """``"oracle"`` → :class:`~mist_debias.world.WorldOracle`; anything else → a CLIP id or folder."""
    if name == ORACLE:
        from mist_debias.world import WorldOracle

        return WorldOracle()
    from mist_debias.measure.classifiers.clip import CLIPCellClassifier

    options = {"templates": tuple(templates)} if templates else {}
    return CLIPCellClassifier.load(name, device=device, mode=mode, batch_size=batch_size, **options)
