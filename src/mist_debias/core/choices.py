"""The named choices of the library, each defined once: a ``Literal`` type and the tuple of its values.

Torch-free, so that the command line builds its option enums from here without importing torch.
"""

from typing import Literal, get_args

Method = Literal["mist", "uce", "time"]
"""Closed-form edit constructions (see :class:`~mist_debias.core.targets.EditProblem`)."""
KeySet = Literal["eos", "eos+pad", "last-word", "all"]
"""Token positions whose keys an edit maps."""
PreserveMode = Literal["default", "paper", "none"]
"""Preserve sets (see :func:`~mist_debias.core.prompts.preservation_prompts`)."""
MistForm = Literal["paper", "running"]
"""MIST's normalisation: the paper's, or the official code's running norm."""
DtypeName = Literal["float32", "float16", "bfloat16"]
"""Weight and generation precisions."""
ControllerName = Literal["panel", "adaptive", "official"]
"""Feedback controllers of the debias loop (:mod:`mist_debias.loop.control`)."""
ClassifyMode = Literal["joint", "per-axis"]
"""CLIP zero-shot modes (:mod:`mist_debias.measure.classifiers.clip`)."""

METHODS: tuple[str, ...] = get_args(Method)
KEY_SETS: tuple[str, ...] = get_args(KeySet)
PRESERVE_MODES: tuple[str, ...] = get_args(PreserveMode)
MIST_FORMS: tuple[str, ...] = get_args(MistForm)
DTYPE_NAMES: tuple[str, ...] = get_args(DtypeName)
CONTROLLER_NAMES: tuple[str, ...] = get_args(ControllerName)
CLASSIFY_MODES: tuple[str, ...] = get_args(ClassifyMode)
