"""Load a CLIP zero-shot cell classifier by hub id or folder (a model profile's own classifier, such as the
synthetic world's oracle, comes from the profile: :func:`mist_debias.loop.profile.profile_classifier`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mist_debias.measure.classifiers.base import CellClassifier


def load_classifier(
    name: str,
    device: torch.device | str = "cpu",
    mode: str = "joint",
    templates: Sequence[str] | None = None,
    batch_size: int = 32,
) -> CellClassifier:
    """A :class:`~mist_debias.measure.classifiers.clip.CLIPCellClassifier` from a CLIP hub id or folder."""
    from mist_debias.measure.classifiers.clip import CLIPCellClassifier

    options = {"templates": tuple(templates)} if templates else {}
    return CLIPCellClassifier.load(name, device=device, mode=mode, batch_size=batch_size, **options)
