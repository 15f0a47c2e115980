"""Model profiles: what a known model family brings to a run (its sampler, preserve set and classifier).

A profile is plain data that the layers below the application accept without knowing where it came from;
profiles register through the entry-point group ``mist_debias.profiles`` (see :mod:`mist_debias.profiles`),
so the edit core, measurement and the loop never import a particular model's code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mist_debias.core.errors import MistError
from mist_debias.core.spec import Axis

if TYPE_CHECKING:
    import torch

    from mist_debias.measure.classifiers.base import CellClassifier

ORACLE = "oracle"
"""The ``--classifier`` name of a profile's own classifier (the synthetic world's exact pixel oracle)."""


@dataclass(frozen=True)
class ProfileSampler:
    """The sampler a model is meant to be sampled with: DDIM ``steps``, classifier-free ``guidance``, DDIM η
    (``eta``) and images per batch (``batch_size``; batching changes the images by float rounding only)."""

    steps: int
    guidance: float
    eta: float
    batch_size: int

    def describe(self) -> str:
        return f"{self.steps} steps, guidance {self.guidance:g}, η {self.eta:g}"


@dataclass(frozen=True)
class ModelProfile:
    """A known model: ``name`` and ``aliases`` (accepted as MODEL), its ``pipeline`` folder, its ``sampler``,

    ``preserve_set(edited, template)``, the default preserve prompts of an edit of the concepts ``edited``
    (prompts built with ``template``), and ``classifier(device)``, its own cell classifier (``None``: none;
    runs then default to CLIP). ``demo_concepts`` and ``demo_axes`` are what ``mist debias`` debiases on it when
    given no concepts. ``observable_axes`` are the axes its own classifier reads whatever a run balances: a run's
    summary reports how the edit moved the ones it did not edit (:mod:`mist_debias.loop.other_axes`).
    """

    name: str
    description: str
    pipeline: Path
    sampler: ProfileSampler
    preserve_set: Callable[[Sequence[str], str], list[str]]
    classifier: Callable[[torch.device | str], CellClassifier] | None = None
    aliases: tuple[str, ...] = ()
    demo_concepts: tuple[str, ...] = ()
    demo_axes: tuple[str, ...] = ()
    observable_axes: tuple[Axis, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


def own_classifier(profile: ModelProfile | None, model: str) -> Callable[[torch.device | str], CellClassifier]:
    """The factory of the profile's own classifier (what ``--classifier oracle`` names); raises
    :class:`~mist_debias.core.errors.MistError` (one line) when ``model`` has none."""
    if profile is None or profile.classifier is None:
        raise MistError(f"--classifier {ORACLE}: model {model!r} has no oracle (give a CLIP hub id or folder)")
    return profile.classifier


def profile_classifier(profile: ModelProfile | None, model: str, device: torch.device | str) -> CellClassifier:
    """The profile's own classifier on ``device`` (see :func:`own_classifier`)."""
    return own_classifier(profile, model)(device)
