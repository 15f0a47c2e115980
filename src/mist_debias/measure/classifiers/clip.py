"""CLIP zero-shot classification of images into attribute cells.

For image x with normalised CLIP image embedding ``f(x)`` and a text prompt p with normalised text embedding
``g(p)``, the logit is the scaled cosine similarity ``s(x, p) = exp(τ) · f(x)ᵀ g(p)`` (τ = the model's
``logit_scale``). With several templates the text embedding of a phrase is the normalised mean of its
templates' normalised embeddings (CLIP's prompt ensembling).

Two modes (results always cover the joint distribution over the spec's cells; marginals follow from
:meth:`~mist_debias.core.spec.AttributeSpec.marginalize`):

- ``joint``: one softmax over the K cell phrases, ``p(k | x) = softmax_k s(x, phrase_k)``.
- ``per-axis``: one softmax per axis over that axis's value phrases (e.g. "woman", "Asian person",
  "young person"), ``p_a(v | x) = softmax_v s(x, phrase_{a,v})``, and the joint is the product
  ``p(k | x) = Π_a p_a(v_a(k) | x)``; its marginal over axis a is exactly ``p_a``. Needs a spec built from
  axes.

Images are preprocessed by transformers' PIL/numpy CLIP image processor (no torchvision).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import huggingface_hub
import numpy as np
import torch
import transformers
from PIL import Image
from transformers import AutoConfig, CLIPModel, CLIPTokenizer

from mist_debias.core import choices
from mist_debias.core.errors import MistError, one_line
from mist_debias.core.locations import is_missing_path
from mist_debias.core.prompts import indefinite_article
from mist_debias.core.spec import AttributeSpec, natural_phrase
from mist_debias.measure.classifiers.base import CellPredictions

try:  # transformers ≥ 5: the PIL backend by its own name (the plain name warns without torchvision).
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # transformers 4.x: CLIPImageProcessor is the PIL/numpy implementation.
    from transformers import CLIPImageProcessor

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of {a} {phrase}",)
CLASSIFY_MODES = choices.CLASSIFY_MODES


class ClassifierError(MistError):
    """A classifier that cannot be loaded or used as asked; the message is one line."""


def axis_value_phrase(axis: str, value: str) -> str:
    """Phrase of one axis value for per-axis mode: :func:`~mist_debias.core.spec.natural_phrase` of that value."""
    return natural_phrase([(axis, value)])


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' and the hub client's logging, progress bars and Python warnings, then restore."""
    logging = transformers.utils.logging
    hub_logging = huggingface_hub.utils.logging
    verbosity, hub_verbosity = logging.get_verbosity(), hub_logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    hub_logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.set_verbosity(verbosity)
        hub_logging.set_verbosity(hub_verbosity)
        if bars:
            logging.enable_progress_bar()


def _check_is_clip(path_or_id: str) -> None:
    """Raise :class:`ClassifierError` when a local path is missing or clearly is not a CLIP model."""
    if is_missing_path(path_or_id):
        raise ClassifierError(f"CLIP model not found: {path_or_id}")
    path = Path(path_or_id).expanduser()
    if not path.exists():
        return
    config_file = path / "config.json"
    if not path.is_dir() or not config_file.is_file():
        raise ClassifierError(f"{path_or_id} is not a CLIP model: no config.json in a model folder")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        raise ClassifierError(f"{path_or_id} is not a CLIP model: unreadable config.json") from None
    if model_type != "clip":
        raise ClassifierError(f"{path_or_id} is not a CLIP model: its config says model_type {model_type!r}")


def _one_line(error: BaseException) -> str:
    return one_line(error)[:300] or type(error).__name__


class CLIPCellClassifier:
    """Zero-shot :class:`~mist_debias.measure.classifiers.base.CellClassifier` on a transformers ``CLIPModel``.

    Templates are ``str.format`` strings with ``{phrase}`` and optionally ``{a}`` (its indefinite article).
    Text embeddings are cached per phrase. Images are processed in batches of ``batch_size``; every row of the
    result is valid. Inference runs under ``torch.inference_mode`` in ``dtype`` on ``device``; softmaxes are
    taken in float64 on the CPU, so the same model, images and settings give the same result.
    """

    def __init__(
        self,
        model: CLIPModel,
        tokenizer: CLIPTokenizer,
        image_processor: CLIPImageProcessor,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        mode: str = "joint",
        batch_size: int = 32,
        axis_phrase: Callable[[str, str], str] = axis_value_phrase,
    ) -> None:
        if mode not in CLASSIFY_MODES:
            raise ClassifierError(f"unknown classifier mode {mode!r} (choose from {', '.join(CLASSIFY_MODES)})")
        if batch_size <= 0:
            raise ClassifierError(f"batch size must be positive, got {batch_size}")
        templates = tuple(templates)
        if not templates:
            raise ClassifierError("at least one text template is needed")
        for template in templates:
            try:
                template.format(a="a", phrase="x")
            except (KeyError, IndexError, ValueError):
                raise ClassifierError(f"bad template {template!r}: only {{a}} and {{phrase}} may be used") from None
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.templates = templates
        self.mode = mode
        self.batch_size = batch_size
        self.axis_phrase = axis_phrase
        self._text_cache: dict[str, torch.Tensor] = {}

    @classmethod
    def load(
        cls,
        path_or_id: str = DEFAULT_CLIP_MODEL,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        **kwargs,
    ) -> CLIPCellClassifier:
        """Load model, tokenizer and image processor from a hub id or a local folder.

        Raises :class:`ClassifierError` (one line, no traceback needed) when the path is not a CLIP model or
        cannot be loaded. ``kwargs`` go to the constructor (templates, mode, batch_size, axis_phrase).
        """
        _check_is_clip(str(path_or_id))
        with _quiet_transformers():
            try:
                model_type = AutoConfig.from_pretrained(path_or_id).model_type
                if model_type != "clip":
                    raise ClassifierError(f"{path_or_id} is not a CLIP model: model_type {model_type!r}")
                model = CLIPModel.from_pretrained(path_or_id)
                tokenizer = CLIPTokenizer.from_pretrained(path_or_id)
                image_processor = CLIPImageProcessor.from_pretrained(path_or_id)
            except ClassifierError:
                raise
            except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
                raise ClassifierError(f"cannot load CLIP model {path_or_id}: {_one_line(error)}") from None
        return cls(model.to(device=device, dtype=dtype), tokenizer, image_processor, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def logit_scale(self) -> float:
        """``exp(τ)``, the factor on cosine similarities."""
        return float(self.model.logit_scale.detach().float().exp())

    def prompts(self, phrase: str) -> list[str]:
        """The texts of ``phrase``, one per template."""
        return [template.format(a=indefinite_article(phrase), phrase=phrase) for template in self.templates]

    @torch.inference_mode()
    def text_embeddings(self, phrases: Sequence[str]) -> torch.Tensor:
        """``(P, D)`` unit-norm text embeddings (template-ensembled), float32 on the CPU."""
        missing = [phrase for phrase in dict.fromkeys(phrases) if phrase not in self._text_cache]
        if missing:
            texts = [text for phrase in missing for text in self.prompts(phrase)]
            max_length = self.model.config.text_config.max_position_embeddings
            tokens = self.tokenizer(
                texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            ).to(self.device)
            pooled = self.model.text_model(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            ).pooler_output
            features = _normalize(self.model.text_projection(pooled).float().cpu())
            per_phrase = features.reshape(len(missing), len(self.templates), -1).mean(dim=1)
            for phrase, embedding in zip(missing, _normalize(per_phrase), strict=True):
                self._text_cache[phrase] = embedding
        return torch.stack([self._text_cache[phrase] for phrase in phrases])

    @torch.inference_mode()
    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``(n, D)`` unit-norm image embeddings, float32 on the CPU, computed in batches."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = [image.convert("RGB") for image in images[start : start + self.batch_size]]
            pixels = self.image_processor(images=batch, return_tensors="pt")["pixel_values"]
            pooled = self.model.vision_model(pixel_values=pixels.to(self.device, self.dtype)).pooler_output
            chunks.append(_normalize(self.model.visual_projection(pooled).float().cpu()))
        return torch.cat(chunks)

    def logits(self, images: Sequence[Image.Image], phrases: Sequence[str]) -> np.ndarray:
        """``(n, P)`` float64 logits ``exp(τ) · cos(f(x_i), g(p_j))``."""
        cosine = self.image_embeddings(images).double() @ self.text_embeddings(phrases).double().T
        return (self.logit_scale * cosine).numpy()

    def axis_probabilities(self, images: Sequence[Image.Image], spec: AttributeSpec) -> dict[str, np.ndarray]:
        """Per-axis mode: axis name → ``(n, V_a)`` softmax over that axis's value phrases."""
        if not spec.axes:
            raise ClassifierError("per-axis classification needs a spec built from axes, not explicit cells")
        image_features = self.image_embeddings(images).double()
        result = {}
        for axis in spec.axes:
            phrases = [self.axis_phrase(axis.name, value) for value in axis.values]
            cosine = image_features @ self.text_embeddings(phrases).double().T
            result[axis.name] = _softmax(self.logit_scale * cosine.numpy())
        return result

    def classify(self, images: Sequence[Image.Image], spec: AttributeSpec) -> CellPredictions:
        """Joint cell probabilities ``(n, K)`` for ``images`` under ``spec`` (mode as configured)."""
        if len(images) == 0:
            return CellPredictions(probs=np.zeros((0, spec.num_cells)), valid=np.zeros(0, dtype=bool))
        if self.mode == "joint":
            probs = _softmax(self.logits(images, spec.phrases))
        else:
            per_axis = self.axis_probabilities(images, spec)
            indices = spec.value_indices()
            probs = np.ones((len(images), spec.num_cells))
            for position, axis in enumerate(spec.axes):
                probs *= per_axis[axis.name][:, indices[:, position]]
        return CellPredictions(probs=probs, valid=np.ones(len(images), dtype=bool))


def _normalize(features: torch.Tensor) -> torch.Tensor:
    return features / features.norm(dim=-1, keepdim=True)


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, ``exp(l − max l) / Σ exp(l − max l)``."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
