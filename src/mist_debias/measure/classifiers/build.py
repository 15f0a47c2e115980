"""Build a real-photograph classifier from a run config's plain dict (one for driving, one for grading).

Two types, chosen by ``type``::

    # any transformers image-classification model per axis (or one model for several), behind a face gate
    {type: hf, model: path-or-id, labels: {gender: {Male: man, Female: woman}}}
    {type: hf,
     models: [{model: fairface-gender, labels: {gender: {Male: man, Female: woman}}},
              {model: fairface-race, labels: {race: {White: White, Black: Black, East Asian: Asian,
                                                      Southeast Asian: Asian}},
               ignore: [Indian, Latino_Hispanic, Middle Eastern]}],
     face_gate: {crop: true, margin: 0.25, min_face: 0.05, scale_factor: 1.1, min_neighbors: 5},
     batch_size: 32}
    # CLIP zero-shot, optionally behind the face gate
    {type: clip, model: openai/clip-vit-base-patch32, mode: per-axis, templates: ["a photo of {a} {phrase}"],
     face_gate: false}

``face_gate`` is ``true`` (defaults), ``false`` or the gate's settings; it defaults to on for ``hf`` (face models
need a face) and off for ``clip``. See :mod:`~mist_debias.measure.classifiers.hf` for the label mapping and
:mod:`~mist_debias.measure.classifiers.combined` for how models combine into joint cells.

Everything that can be checked without weights is checked first (keys, types, the label mapping against each
model's config and against every attribute spec, the face detector), so a bad config fails in one line before
any model is loaded or any image generated; each model is then loaded once, however many axes it serves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from mist_debias.core.spec import AttributeSpec
from mist_debias.measure.classifiers.base import CellClassifier
from mist_debias.measure.classifiers.clip import (
    CLASSIFY_MODES,
    DEFAULT_CLIP_MODEL,
    DEFAULT_TEMPLATES,
    ClassifierError,
    CLIPCellClassifier,
)
from mist_debias.measure.classifiers.combined import ProductCellClassifier, check_axis_groups
from mist_debias.measure.classifiers.face_gate import FaceGatedClassifier, HaarFaceDetector
from mist_debias.measure.classifiers.hf import HFAxisGroup, HFImageClassifier, LabelMapping, read_labels

CLASSIFIER_TYPES = ("hf", "clip")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FaceGateSpec(_Strict):
    """Settings of :class:`~mist_debias.measure.classifiers.face_gate.HaarFaceDetector` and the crop."""

    crop: bool = True
    margin: float = Field(0.25, ge=0)
    min_face: float = Field(0.05, ge=0, lt=1)
    scale_factor: float = Field(1.1, gt=1)
    min_neighbors: int = Field(5, ge=0)


class _GatedSpec(_Strict):
    """A classifier spec with a ``face_gate``: ``true`` (the default settings), ``false`` (none) or the settings."""

    @field_validator("face_gate", mode="before", check_fields=False)
    @classmethod
    def _gate_switch(cls, value: Any) -> Any:
        if value is True:
            return {}
        return None if value is False else value


class HFModelSpec(_Strict):
    """One image-classification model and the mapping of its labels: ``labels[axis][label] = value``."""

    model: str
    labels: dict[str, dict[str, str]]
    ignore: tuple[str, ...] = ()


class HFClassifierSpec(_GatedSpec):
    """``type: hf``: ``model`` + ``labels`` (+ ``ignore``) for one model, or ``models`` for several."""

    type: Literal["hf"]
    model: str | None = None
    labels: dict[str, dict[str, str]] | None = None
    ignore: tuple[str, ...] = ()
    models: tuple[HFModelSpec, ...] = ()
    batch_size: PositiveInt = 32
    face_gate: FaceGateSpec | None = FaceGateSpec()

    @model_validator(mode="after")
    def _one_form(self) -> HFClassifierSpec:
        single = self.model is not None or self.labels is not None or bool(self.ignore)
        if single and self.models:
            raise ValueError("give either model + labels or models, not both")
        if not single and not self.models:
            raise ValueError("give model + labels, or models")
        if single and (self.model is None or self.labels is None):
            raise ValueError("model and labels go together")
        return self

    def model_specs(self) -> tuple[HFModelSpec, ...]:
        """The models, entries naming the same model merged (so each is loaded and run once)."""
        entries = self.models or (HFModelSpec(model=self.model, labels=self.labels, ignore=self.ignore),)
        merged: dict[str, HFModelSpec] = {}
        for entry in entries:
            previous = merged.get(entry.model)
            if previous is None:
                merged[entry.model] = entry
                continue
            both = sorted(set(previous.labels) & set(entry.labels))
            if both:
                raise ClassifierError(f"axis {both[0]!r} is mapped twice for {entry.model}")
            if set(previous.ignore) != set(entry.ignore):
                raise ClassifierError(f"the entries of {entry.model} ignore different labels")
            merged[entry.model] = HFModelSpec(
                model=entry.model, labels={**previous.labels, **entry.labels}, ignore=previous.ignore
            )
        return tuple(merged.values())


class CLIPClassifierSpec(_GatedSpec):
    """``type: clip``: CLIP zero-shot (:class:`~mist_debias.measure.classifiers.clip.CLIPCellClassifier`)."""

    type: Literal["clip"]
    model: str = DEFAULT_CLIP_MODEL
    mode: Literal[CLASSIFY_MODES] = "joint"
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    batch_size: PositiveInt = 32
    face_gate: FaceGateSpec | None = None


ClassifierSpec = Annotated[HFClassifierSpec | CLIPClassifierSpec, Field(discriminator="type")]


def parse_classifier_spec(data: Mapping[str, Any], where: str = "classifier") -> HFClassifierSpec | CLIPClassifierSpec:
    """Validate a plain dict; :class:`~mist_debias.measure.classifiers.clip.ClassifierError` names the key."""
    if isinstance(data, HFClassifierSpec | CLIPClassifierSpec):
        return data
    if not isinstance(data, Mapping):
        raise ClassifierError(f"{where} must be a mapping with a type ({', '.join(CLASSIFIER_TYPES)})")
    kind = data.get("type")
    if kind not in CLASSIFIER_TYPES:
        raise ClassifierError(f"{where}.type must be one of {', '.join(CLASSIFIER_TYPES)}, got {kind!r}")
    model = HFClassifierSpec if kind == "hf" else CLIPClassifierSpec
    try:
        return model.model_validate(dict(data))
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(part) for part in (where, *first["loc"]))
        message = first["msg"].removeprefix("Value error, ")
        raise ClassifierError(f"{location}: {message}") from None


def build_classifier(
    spec: Mapping[str, Any] | HFClassifierSpec | CLIPClassifierSpec,
    attribute_specs: AttributeSpec | Sequence[AttributeSpec],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    where: str = "classifier",
) -> CellClassifier:
    """The classifier that ``spec`` describes, checked against every attribute spec it will classify.

    Raises :class:`~mist_debias.measure.classifiers.clip.ClassifierError` (one line) on any bad input, before
    loading a model's weights whenever the problem can be seen without them.
    """
    config = parse_classifier_spec(spec, where)
    specs = (attribute_specs,) if isinstance(attribute_specs, AttributeSpec) else tuple(attribute_specs)
    gate = config.face_gate
    detector = None if gate is None else _detector(gate)
    if isinstance(config, CLIPClassifierSpec):
        if config.mode == "per-axis" and any(not attribute_spec.axes for attribute_spec in specs):
            raise ClassifierError(f"{where}.mode per-axis needs attributes built from axes, not explicit cells")
        classifier = CLIPCellClassifier.load(
            config.model,
            device=device,
            dtype=dtype,
            mode=config.mode,
            templates=config.templates,
            batch_size=config.batch_size,
        )
    else:
        mappings = [
            LabelMapping(entry.model, read_labels(entry.model), entry.labels, entry.ignore)
            for entry in config.model_specs()
        ]
        for attribute_spec in specs:
            check_axis_groups(mappings, attribute_spec)
        groups = [
            HFAxisGroup(HFImageClassifier.load(mapping.model, device, dtype, config.batch_size), mapping)
            for mapping in mappings
        ]
        classifier = ProductCellClassifier(groups)
    if detector is None:
        return classifier
    return FaceGatedClassifier(classifier, detector, crop=gate.crop, margin=gate.margin)


def _detector(gate: FaceGateSpec) -> HaarFaceDetector:
    return HaarFaceDetector(scale_factor=gate.scale_factor, min_neighbors=gate.min_neighbors, min_face=gate.min_face)
