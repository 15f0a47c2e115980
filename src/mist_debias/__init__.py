"""mist-debias: closed-form single and intersectional debiasing of Stable Diffusion models.

The public API is imported on first use (as diffusers does), so ``import mist_debias`` loads neither torch nor
the synthetic world, matplotlib, rich or typer::

    from mist_debias import ConceptPrompts, EditProblem, PromptEncoder, load_pipeline
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SOURCES = {
    "mist_debias.core.edit": ("Edit",),
    "mist_debias.core.errors": ("MistError",),
    "mist_debias.core.generate": ("GenerationConfig", "generate_images"),
    "mist_debias.core.layers": ("find_cross_attention_projections",),
    "mist_debias.core.pipeline": ("load_pipeline",),
    "mist_debias.core.solve": ("EditHyperparameters",),
    "mist_debias.core.spec": ("AttributeSpec", "Axis"),
    "mist_debias.core.targets": ("ConceptPrompts", "EditProblem"),
    "mist_debias.core.text": ("PromptEncoder",),
    "mist_debias.loop.config": ("RunConfig", "load_config"),
    "mist_debias.loop.debias": ("DebiasRun",),
    "mist_debias.loop.profile": ("ModelProfile", "ProfileSampler"),
    "mist_debias.loop.runner": ("prepare_run",),
    "mist_debias.measure.classifiers.base": ("CellClassifier",),
    "mist_debias.measure.classifiers.clip": ("CLIPCellClassifier",),
    "mist_debias.measure.metrics": ("Distribution",),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = [
    "AttributeSpec",
    "Axis",
    "CLIPCellClassifier",
    "CellClassifier",
    "ConceptPrompts",
    "DebiasRun",
    "Distribution",
    "Edit",
    "EditHyperparameters",
    "EditProblem",
    "GenerationConfig",
    "MistError",
    "ModelProfile",
    "ProfileSampler",
    "PromptEncoder",
    "RunConfig",
    "__version__",
    "find_cross_attention_projections",
    "generate_images",
    "load_config",
    "load_pipeline",
    "prepare_run",
]

if TYPE_CHECKING:
    from mist_debias.core.edit import Edit
    from mist_debias.core.errors import MistError
    from mist_debias.core.generate import GenerationConfig, generate_images
    from mist_debias.core.layers import find_cross_attention_projections
    from mist_debias.core.pipeline import load_pipeline
    from mist_debias.core.solve import EditHyperparameters
    from mist_debias.core.spec import AttributeSpec, Axis
    from mist_debias.core.targets import ConceptPrompts, EditProblem
    from mist_debias.core.text import PromptEncoder
    from mist_debias.loop.config import RunConfig, load_config
    from mist_debias.loop.debias import DebiasRun
    from mist_debias.loop.profile import ModelProfile, ProfileSampler
    from mist_debias.loop.runner import prepare_run
    from mist_debias.measure.classifiers.base import CellClassifier
    from mist_debias.measure.classifiers.clip import CLIPCellClassifier
    from mist_debias.measure.metrics import Distribution


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF})
