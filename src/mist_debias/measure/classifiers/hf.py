"""Any transformers image-classification model as a classifier of attribute values, through a label mapping.

A model with labels ``l = 1 … L`` gives each image the softmax ``p(l | x)`` of its logits. A mapping assigns
labels to values of one or more axes, e.g. ``{gender: {Male: man, Female: woman}}``; labels listed under
``ignore`` are dropped and the rest renormalised, ``p̃(l | x) = p(l | x) / Σ_{l' kept} p(l' | x)``. For the axes
``a_1 … a_m`` the model is mapped on, the probability of the value combination ``v = (v_1 … v_m)`` is the sum
over the labels mapped to it:

    p(v | x) = Σ_{l kept: map_{a_j}(l) = v_j for every j} p̃(l | x),

so labels mapped to the same value add up (FairFace's "East Asian" and "Southeast Asian" both to "Asian"), and
a model whose labels are joint ("Male_White") keeps its own joint distribution. Every kept label must be mapped
on every axis of its model; every value combination must receive at least one label (otherwise a cell could
never be predicted and the mapping is refused, naming the cell).

Models load with ``AutoModelForImageClassification`` and ``AutoImageProcessor`` from safetensors only; the
labels come from the config's ``id2label`` and are read without loading weights, so a bad mapping is refused
before anything heavy is loaded.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

from mist_debias.core.locations import is_missing_path
from mist_debias.core.spec import AttributeSpec
from mist_debias.measure.classifiers.clip import ClassifierError, _one_line, _quiet_transformers, _softmax

LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError)


def read_labels(path_or_id: str) -> tuple[str, ...]:
    """The model's labels in logit order (``config.id2label``), read from its config alone."""
    if is_missing_path(path_or_id):
        raise ClassifierError(f"image-classification model not found: {path_or_id}")
    with _quiet_transformers():
        try:
            config = AutoConfig.from_pretrained(path_or_id)
        except LOAD_ERRORS as error:
            raise ClassifierError(f"cannot read the config of {path_or_id}: {_one_line(error)}") from None
    id2label = {int(index): str(label) for index, label in (config.id2label or {}).items()}
    if len(id2label) < 2 or sorted(id2label) != list(range(len(id2label))):
        raise ClassifierError(f"{path_or_id} has no image-classification labels (config.id2label)")
    if getattr(config, "problem_type", None) == "multi_label_classification":
        raise ClassifierError(f"{path_or_id} is a multi-label model; one label per image is needed")
    return tuple(id2label[index] for index in range(len(id2label)))


@dataclass(frozen=True)
class LabelMapping:
    """A model's labels mapped to axis values: ``values[axis][label] = value``; ``ignore`` lists dropped labels.

    Construction checks the mapping against the model's ``labels`` alone; :meth:`check` checks it against an
    attribute spec. Both raise :class:`~mist_debias.measure.classifiers.clip.ClassifierError` with one line.
    """

    model: str
    labels: tuple[str, ...]
    values: Mapping[str, Mapping[str, str]]
    ignore: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.values:
            raise ClassifierError(f"no label mapping for {self.model}: give labels: {{axis: {{label: value}}}}")
        known = set(self.labels)
        named = [label for mapping in self.values.values() for label in mapping] + list(self.ignore)
        unknown = [label for label in dict.fromkeys(named) if label not in known]
        if unknown:
            raise ClassifierError(f"{self.model} has no label {unknown[0]!r} (its labels: {', '.join(self.labels)})")
        ignored_and_mapped = [label for label in self.ignore if any(label in m for m in self.values.values())]
        if ignored_and_mapped:
            raise ClassifierError(f"label {ignored_and_mapped[0]!r} of {self.model} is both mapped and ignored")
        for label in self.kept_labels:
            axes = [axis for axis, mapping in self.values.items() if label in mapping]
            if not axes:
                raise ClassifierError(
                    f"label {label!r} of {self.model} is not mapped (map it to a value or list it under ignore)"
                )
            if len(axes) != len(self.values):
                missing = next(axis for axis in self.values if axis not in axes)
                raise ClassifierError(
                    f"label {label!r} of {self.model} is mapped on {axes[0]} but not on {missing} "
                    "(map it on every axis of this model or list it under ignore)"
                )
        if not self.kept_labels:
            raise ClassifierError(f"every label of {self.model} is ignored")

    @property
    def axes(self) -> tuple[str, ...]:
        return tuple(self.values)

    @property
    def kept_labels(self) -> tuple[str, ...]:
        return tuple(label for label in self.labels if label not in self.ignore)

    def ordered_axes(self, spec: AttributeSpec) -> tuple[str, ...]:
        """This mapping's axes in the spec's axis order."""
        return tuple(name for name in spec.axis_names if name in self.values)

    def check(self, spec: AttributeSpec) -> None:
        """Refuse axes or values the spec lacks, and any cell that no label can reach."""
        if not spec.axes:
            raise ClassifierError("a label-mapped classifier needs a spec built from axes, not explicit cells")
        for axis, mapping in self.values.items():
            if axis not in spec.axis_names:
                raise ClassifierError(
                    f"labels of {self.model} are mapped on axis {axis!r}, which the spec lacks "
                    f"(axes: {', '.join(spec.axis_names)})"
                )
            allowed = spec.axis(axis).values
            for label, value in mapping.items():
                if value not in allowed:
                    raise ClassifierError(
                        f"label {label!r} of {self.model} maps to {axis}={value!r}, not a value of {axis} "
                        f"(values: {', '.join(allowed)})"
                    )
        reached = self._matrix(spec).sum(axis=0)
        if (reached == 0).any():
            axes = self.ordered_axes(spec)
            combination = next(itertools.compress(self._combinations(spec), reached == 0))
            wanted = dict(zip(axes, combination, strict=True))
            cell = next(c for c in spec.cells if all(c.value(a) == v for a, v in wanted.items()))
            named = ", ".join(f"{axis}={value}" for axis, value in wanted.items())
            raise ClassifierError(
                f"the label mapping leaves cell {cell.phrase!r} without labels: no label of {self.model} maps to "
                f"{named}"
            )

    def joint(self, label_probs: np.ndarray, spec: AttributeSpec) -> np.ndarray:
        """``(n, V_1 … V_m)`` probabilities of the value combinations of :meth:`ordered_axes` (see module)."""
        kept = [self.labels.index(label) for label in self.kept_labels]
        probs = label_probs[:, kept]
        probs = probs / probs.sum(axis=1, keepdims=True)
        shape = [len(spec.axis(axis).values) for axis in self.ordered_axes(spec)]
        return (probs @ self._matrix(spec)).reshape(len(probs), *shape)

    def _combinations(self, spec: AttributeSpec) -> list[tuple[str, ...]]:
        return list(itertools.product(*(spec.axis(axis).values for axis in self.ordered_axes(spec))))

    def _matrix(self, spec: AttributeSpec) -> np.ndarray:
        """``(L_kept, Π V)`` 0/1 matrix: entry ``[l, c]`` is 1 iff kept label l maps to combination c."""
        index = {combination: column for column, combination in enumerate(self._combinations(spec))}
        matrix = np.zeros((len(self.kept_labels), len(index)))
        for row, label in enumerate(self.kept_labels):
            combination = tuple(self.values[axis][label] for axis in self.ordered_axes(spec))
            if combination in index:
                matrix[row, index[combination]] = 1.0
        return matrix


class HFImageClassifier:
    """A transformers image-classification model: images → ``(n, L)`` label probabilities ``softmax(logits)``.

    Inference runs in batches of ``batch_size`` under ``torch.inference_mode`` in the model's dtype on its
    device; the softmax is taken in float64 on the CPU.
    """

    def __init__(self, model: torch.nn.Module, image_processor, name: str, batch_size: int = 32) -> None:
        if batch_size <= 0:
            raise ClassifierError(f"batch size must be positive, got {batch_size}")
        self.model = model.eval()
        self.image_processor = image_processor
        self.name = name
        self.batch_size = batch_size

    @classmethod
    def load(
        cls,
        path_or_id: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 32,
    ) -> HFImageClassifier:
        """Load the model (safetensors only) and its image processor from a hub id or a local folder."""
        with _quiet_transformers():
            try:
                model = AutoModelForImageClassification.from_pretrained(path_or_id, use_safetensors=True)
                image_processor = AutoImageProcessor.from_pretrained(path_or_id)
            except LOAD_ERRORS as error:
                raise ClassifierError(f"cannot load image classifier {path_or_id}: {_one_line(error)}") from None
        return cls(model.to(device=device, dtype=dtype), image_processor, str(path_or_id), batch_size)

    @property
    def labels(self) -> tuple[str, ...]:
        id2label = self.model.config.id2label
        return tuple(str(id2label[index]) for index in range(len(id2label)))

    @torch.inference_mode()
    def label_probabilities(self, images: Sequence[Image.Image]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, len(self.labels)))
        parameter = next(self.model.parameters())
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = [image.convert("RGB") for image in images[start : start + self.batch_size]]
            pixels = self.image_processor(images=batch, return_tensors="pt")["pixel_values"]
            logits = self.model(pixel_values=pixels.to(parameter.device, parameter.dtype)).logits
            chunks.append(logits.double().cpu().numpy())
        return _softmax(np.concatenate(chunks))


@dataclass(frozen=True)
class HFAxisGroup:
    """One image-classification model and its label mapping: the joint probability of the axes it covers."""

    classifier: HFImageClassifier
    mapping: LabelMapping

    def __post_init__(self) -> None:
        if self.classifier.labels != self.mapping.labels:
            raise ClassifierError(f"the labels of {self.classifier.name} differ from those its mapping was made for")

    def ordered_axes(self, spec: AttributeSpec) -> tuple[str, ...]:
        return self.mapping.ordered_axes(spec)

    def check(self, spec: AttributeSpec) -> None:
        self.mapping.check(spec)

    def joint_probabilities(self, images: Sequence[Image.Image], spec: AttributeSpec) -> np.ndarray:
        return self.mapping.joint(self.classifier.label_probabilities(images), spec)
