"""Load a user's Stable Diffusion pipeline (hub id or local folder) quietly and check it can be edited."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from mist_debias.core.choices import DTYPE_NAMES
from mist_debias.core.errors import ModelLoadError
from mist_debias.core.families import detect_family, find_projections
from mist_debias.core.locations import is_missing_path, looks_like_path

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def default_device() -> torch.device:
    """CUDA if present, else Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def quiet_libraries() -> None:
    """Silence diffusers/transformers progress bars, info logs and Python warnings (for the CLI)."""
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def _load_failure(model: str, error: Exception) -> str:
    """One complete, short line for a failed ``from_pretrained``: a hub id that cannot be fetched (diffusers
    raises ``OSError`` for a missing repository and for an unreachable hub alike), else the error's first
    sentence."""
    if isinstance(error, OSError) and not looks_like_path(model):
        return f"cannot load model {model!r}: not a local folder and the hub is unreachable or has no such repository"
    text = " ".join(str(error).split())
    sentence = text.split(". ")[0].rstrip(".") if text else type(error).__name__
    if ".safetensors" in sentence:
        sentence += " (only safetensors weights are read, never pickled .bin files)"
    return f"cannot load model {model!r}: {sentence}"


def use_scheduler(pipe: DiffusionPipeline, name: str) -> None:
    """Sample with the diffusers scheduler class ``name``, built from the pipeline's scheduler config (so the
    noise schedule the model was trained with is kept). Raises :class:`ModelLoadError` for a class that is not
    one of the scheduler's ``compatibles``."""
    compatible = {cls.__name__: cls for cls in pipe.scheduler.compatibles}
    if name not in compatible:
        choices = ", ".join(sorted(compatible))
        raise ModelLoadError(f"unknown scheduler {name!r} for this pipeline (choose from {choices})")
    pipe.scheduler = compatible[name].from_config(pipe.scheduler.config)


def load_pipeline(
    model: str | Path, device: torch.device | str | None = None, torch_dtype: torch.dtype = torch.float32
) -> DiffusionPipeline:
    """Load a text-to-image diffusers pipeline of a family the project edits (SD1.x, SD2.x, SDXL, SD3, FLUX).

    ``model`` is a local folder (``model_index.json`` inside) or a hub id (``owner/name``); ``torch_dtype`` is
    passed on to ``DiffusionPipeline.from_pretrained``. Only safetensors weights are read
    (``use_safetensors=True``): a pipeline that ships only pickled ``.bin`` weights is refused, never unpickled.
    Raises :class:`ModelLoadError` with one line for a missing path, a folder that is not a diffusers pipeline,
    one without safetensors weights, a hub id that cannot be fetched, or a pipeline of another family (the line
    names the families it can edit).
    """
    model = str(model)
    if is_missing_path(model):
        raise ModelLoadError(f"model not found: {model}")
    if looks_like_path(model) and not (Path(model).expanduser() / "model_index.json").is_file():
        raise ModelLoadError(f"{model} is not a diffusers pipeline folder (no model_index.json)")
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=torch_dtype, use_safetensors=True)
    except Exception as error:  # any loader failure becomes one line for the user
        raise ModelLoadError(_load_failure(model, error)) from None
    detect_family(pipe)
    find_projections(pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device or default_device())
