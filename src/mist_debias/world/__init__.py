"""The synthetic world: rendered person glyphs with planted bias, captions, an exact oracle and training.

The trained world is a standard ``StableDiffusionPipeline`` folder shipped with the package
(:func:`bundled_world_path`); its tiny CLIP (:func:`bundled_world_clip_path`) is a zero-shot classifier of
the same world whose errors can be measured against the oracle.
"""

from mist_debias.world.bias import CONTROL_PROFESSIONS, PROFESSIONS, planted_table, sample_attributes
from mist_debias.world.bundled import bundled_world_clip_path, bundled_world_path
from mist_debias.world.captions import bare_caption, sample_caption
from mist_debias.world.oracle import Decoded, WorldOracle
from mist_debias.world.render import AGES, GENDERS, RACES, Attributes, render

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
