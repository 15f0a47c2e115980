"""The synthetic world: rendered person glyphs with planted bias, captions, an exact oracle and training.

The trained world is a standard ``StableDiffusionPipeline`` folder shipped with the package
(:func:`bundled_world_path`); its tiny CLIP (:func:`bundled_world_clip_path`) is a zero-shot classifier of
the same world whose errors can be measured against the oracle. Names are imported on first use, so that
``mist world --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_SOURCES = {
    "mist_debias.world.bias": ("CONTROL_PROFESSIONS", "PROFESSIONS", "planted_table", "sample_attributes"),
    "mist_debias.world.bundled": ("bundled_world_clip_path", "bundled_world_path"),
    "mist_debias.world.captions": ("bare_caption", "sample_caption"),
    "mist_debias.world.oracle": ("Decoded", "WorldOracle"),
    "mist_debias.world.render": ("AGES", "GENDERS", "RACES", "Attributes", "render"),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = [
    "AGES",
    "CONTROL_PROFESSIONS",
    "GENDERS",
    "PROFESSIONS",
    "RACES",
    "Attributes",
    "Decoded",
    "WorldOracle",
    "bare_caption",
    "bundled_world_clip_path",
    "bundled_world_path",
    "planted_table",
    "render",
    "sample_attributes",
    "sample_caption",
]

if TYPE_CHECKING:
    from mist_debias.world.bias import CONTROL_PROFESSIONS, PROFESSIONS, planted_table, sample_attributes
    from mist_debias.world.bundled import bundled_world_clip_path, bundled_world_path
    from mist_debias.world.captions import bare_caption, sample_caption
    from mist_debias.world.oracle import Decoded, WorldOracle
    from mist_debias.world.render import AGES, GENDERS, RACES, Attributes, render


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
