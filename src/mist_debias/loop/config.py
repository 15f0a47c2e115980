"""Run configuration files: many concepts, their attribute specs, controller, classifiers and settings.

A run is described by a YAML (``.yaml``/``.yml``), TOML (``.toml``) or JSON (``.json``) file, chosen by
extension, e.g.::

    model: CompVis/stable-diffusion-v1-4
    seed: 0
    tolerance: 0.05
    budget: 20000
    attributes:                      # shared by every concept without its own
      axes: {gender: [man, woman], race: [White, Black, Asian, Indian], age: [young, old]}
      target: uniform                # or [p1, ...] per cell, or {gender: [0.5, 0.5]} per axis
    concepts:
      - doctor
      - name: nurse
        attributes: {cells: [man, woman], target: [0.5, 0.5]}
    controller: {name: adaptive}
    classifier: {drive: openai/clip-vit-base-patch32, evaluate: null, mode: joint}
    generation: {steps: 20, guidance: 7.5, negative_prompt: null, batch_size: 16, dtype: auto}
    edit: {method: mist, keys: eos, lam: 0.5, edit_scale: 1.0, preserve_scale: 0.2, preserve: default}

Every section and key is optional (defaults below). The file is validated by pydantic models: unknown keys
and wrong types are errors, reported as one line naming the key (``run.yaml: generation.guidanse: unknown
key``). :meth:`RunConfig.to_dict` gives a JSON-ready dict that :meth:`RunConfig.from_dict` turns back into an
equal config (the run folder stores it; ``--resume`` compares it with the current one).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from mist_debias.core.atomic import atomic_file
from mist_debias.core.choices import ClassifyMode, ControllerName, DtypeName, KeySet, Method, MistForm, PreserveMode
from mist_debias.core.errors import MistError, one_line
from mist_debias.core.generate import GenerationConfig
from mist_debias.core.prompts import DEFAULT_EDIT_TEMPLATE, edit_prompts, preservation_prompts
from mist_debias.core.run_folder import flatten_settings
from mist_debias.core.solve import EditHyperparameters
from mist_debias.core.spec import AttributeSpec, Axis, SpecError, parse_axis, parse_probabilities, parse_targets
from mist_debias.core.targets import DEFAULT_KEYS, ConceptPrompts
from mist_debias.measure.classifiers.clip import DEFAULT_TEMPLATES

MAX_CONCEPTS = 100
"""Concepts one run may debias (each owns 10⁷ of the 2³² image seeds)."""
MAX_SEED = 2**32 - 1
"""Largest run seed (run seeds translate the image seeds modulo 2³², so larger ones would repeat smaller ones)."""

CONFIG_SUFFIXES = (".yaml", ".yml", ".toml", ".json")

Strings = Annotated[tuple[str, ...], Field(strict=False)]
"""A list of strings in the file, a tuple in the config."""


class ConfigError(MistError):
    """A run configuration that cannot be used; the message is one line naming the offending key."""


class _Section(BaseModel):
    """A config section: immutable, unknown keys rejected, no silent type conversion (a list becomes a tuple)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class AttributesConfig(_Section):
    """Cells and target of a concept: axes (product) or explicit cells, and a target.

    ``target`` is one value per cell, ``marginals`` one distribution per axis (the joint is their product);
    with neither the target is uniform. ``phrases`` overrides cell phrases by :func:`~mist_debias.core.spec.cell_key`
    (``"woman,Asian,young"``). In a file, ``axes`` is ``{name: [values]}``, ``["name=v1,v2"]`` or
    ``[{name:, values:}]``, and ``target`` is ``uniform``, a per-cell list or a per-axis mapping (the marginals).
    """

    axes: Annotated[tuple[Axis, ...], Field(strict=False)] = ()
    cells: Strings = ()
    target: tuple[float, ...] | None = None
    marginals: dict[str, tuple[float, ...]] = Field(default_factory=dict)
    phrases: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_file(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        data["axes"] = _axes(data.get("axes"))
        target = data.get("target")
        if isinstance(target, Mapping):
            data["target"], data["marginals"] = None, {str(k): _probabilities(v) for k, v in target.items()}
        elif target is not None:
            data["target"] = None if target == "uniform" else _probabilities(target)
        if isinstance(data.get("marginals"), Mapping):
            data["marginals"] = {str(k): _probabilities(v) for k, v in data["marginals"].items()}
        return data

    @model_validator(mode="after")
    def _valid_spec(self) -> AttributesConfig:
        self.spec()
        return self

    def spec(self) -> AttributeSpec:
        """The :class:`~mist_debias.core.spec.AttributeSpec` this describes (raises :class:`SpecError`)."""
        if bool(self.axes) == bool(self.cells):
            raise SpecError("give attribute axes or explicit cells, exactly one of the two")
        if self.cells:
            if self.marginals or self.phrases:
                raise SpecError("per-axis targets and phrase overrides need axes, not explicit cells")
            return AttributeSpec.from_phrases(self.cells, target=self.target)
        return AttributeSpec.from_axes(
            self.axes, target=self.target, marginals=self.marginals or None, phrases=self.phrases or None
        )

    @classmethod
    def from_cli(
        cls, axes: Sequence[str] = (), cells: Sequence[str] = (), targets: Sequence[str] = ()
    ) -> AttributesConfig:
        """From ``--axis NAME=v1,...``, ``--cell TEXT`` and ``--target p1,...``/``AXIS=p1,...`` strings."""
        target, marginals = parse_targets(targets)
        return _validated(
            cls,
            {
                "axes": [parse_axis(text) for text in axes],
                "cells": list(cells),
                "target": target,
                "marginals": marginals,
            },
        )

    def to_dict(self) -> dict:
        data: dict[str, Any] = {}
        if self.axes:
            data["axes"] = {axis.name: list(axis.values) for axis in self.axes}
        else:
            data["cells"] = list(self.cells)
        if self.marginals:
            data["target"] = {name: list(values) for name, values in self.marginals.items()}
        else:
            data["target"] = "uniform" if self.target is None else list(self.target)
        if self.phrases:
            data["phrases"] = dict(self.phrases)
        return data


class ConceptConfig(_Section):
    """One concept to debias: its name (``doctor``), optional edit prompt and optional own attributes.

    ``prompt`` replaces the concept prompt built from the run's ``prompt_template``; the attribute prompts
    still come from that template (see :func:`~mist_debias.core.prompts.edit_prompts`). In a file a concept
    is a name or a mapping.
    """

    name: str
    prompt: str | None = None
    attributes: AttributesConfig | None = None

    def __init__(self, name: str | None = None, /, **data: Any) -> None:
        super().__init__(**({"name": name} if name is not None else {}), **data)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _not_empty(self) -> ConceptConfig:
        if not self.name.strip():
            raise ValueError("a concept has an empty name")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError(f"concept {self.name!r} has an empty prompt")
        return self

    def to_dict(self) -> dict:
        return self.model_dump(exclude_none=True, exclude={"attributes"}) | (
            {} if self.attributes is None else {"attributes": self.attributes.to_dict()}
        )


class ControllerConfig(_Section):
    """The feedback controller and its own options (checked by the controller). In a file: a name, or a
    mapping of ``name`` and the options."""

    name: ControllerName = "panel"
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_file(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if isinstance(data, Mapping) and "options" not in data:
            options = {key: value for key, value in data.items() if key != "name"}
            return {"name": data.get("name", cls.model_fields["name"].default), "options": options}
        return data

    def to_dict(self) -> dict:
        return {"name": self.name, **self.options}


ClassifierChoice = str | dict[str, Any] | None
"""A classifier in a run config: ``None`` (the model's default), ``"oracle"`` (the model profile's own), a CLIP id
or folder, or a mapping for :func:`~mist_debias.measure.classifiers.build.build_classifier` (``type: hf`` or
``type: clip``: image-classification models with a label mapping, CLIP zero-shot, a face gate)."""


class ClassifierConfig(_Section):
    """Which classifier drives the loop and which grades it, and the CLIP zero-shot settings of a plain id.

    ``drive``: see :data:`ClassifierChoice`; ``None`` picks the model profile's classifier (the synthetic world's
    oracle) or :data:`~mist_debias.measure.classifiers.clip.DEFAULT_CLIP_MODEL`. ``evaluate``: an independent
    classifier that grades ``--validate`` and the summary's fresh-seed numbers, ``None`` to grade with ``drive``.
    """

    drive: ClassifierChoice = None
    evaluate: ClassifierChoice = None
    templates: Annotated[Strings, Field(min_length=1)] = DEFAULT_TEMPLATES
    mode: ClassifyMode = "joint"
    batch_size: Annotated[int, Field(gt=0)] = 32

    @model_validator(mode="after")
    def _templates_have_phrase(self) -> ClassifierConfig:
        for template in self.templates:
            if "{phrase}" not in template:
                raise ValueError(f"template {template!r} has no {{phrase}}")
        return self

    @field_validator("drive", "evaluate")
    @classmethod
    def _valid_classifier_spec(cls, choice: ClassifierChoice, info: ValidationInfo) -> ClassifierChoice:
        if isinstance(choice, dict):
            from mist_debias.measure.classifiers.build import parse_classifier_spec
            from mist_debias.measure.classifiers.clip import ClassifierError

            try:
                parse_classifier_spec(choice, where=info.field_name)
            except ClassifierError as error:
                where = info.field_name
                raise ValueError(str(error).removeprefix(f"{where}: ").removeprefix(f"{where}.")) from None
        return choice


class _GenerationExtras(_Section):
    """What the loop's sampler settings add to :class:`~mist_debias.core.generate.GenerationConfig`:
    the weights' ``dtype`` (``auto``: float16 on CUDA, float32 elsewhere) and a diffusers scheduler class."""

    dtype: Literal["auto", DtypeName] = "auto"
    scheduler: str | None = None

    @model_validator(mode="after")
    def _valid_sampler(self) -> _GenerationExtras:
        self.generation_config()  # GenerationConfig checks its own fields
        return self

    def generation_config(self) -> GenerationConfig:
        """The sampler settings as :class:`~mist_debias.core.generate.GenerationConfig`."""
        return GenerationConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(GenerationConfig)})


def _sampler_fields() -> dict[str, Any]:
    """:class:`~mist_debias.core.generate.GenerationConfig`'s fields as pydantic field definitions."""
    hints = typing.get_type_hints(GenerationConfig)
    return {f.name: (hints[f.name], f.default) for f in dataclasses.fields(GenerationConfig)}


GenerationSettings = create_model(
    "GenerationSettings", __base__=_GenerationExtras, __module__=__name__, **_sampler_fields()
)
"""Sampler settings of the loop's images: the fields of :class:`~mist_debias.core.generate.GenerationConfig`
(one schema for both) plus ``dtype`` and ``scheduler``."""


class EditSettings(_Section):
    """Closed-form edit settings.

    ``keys`` and ``lam`` default by method (``eos``/0.5 for MIST). ``preserve``: ``default`` keeps ``""`` and
    every unedited concept of the run and of the built-in professions (all positions), ``paper`` keeps ``""``
    only (the official setting), ``none`` nothing; ``preserve_prompts`` are added to either.
    """

    method: Method = "mist"
    keys: KeySet | None = None
    lam: float | None = None
    edit_scale: float = 1.0
    preserve_scale: float = 0.2
    preserve: PreserveMode = "default"
    preserve_prompts: Strings = ()
    mist_form: MistForm = "paper"

    @model_validator(mode="after")
    def _valid_hyperparameters(self) -> EditSettings:
        self.hyperparameters()
        return self

    @property
    def resolved_keys(self) -> str:
        return self.keys or DEFAULT_KEYS[self.method]

    def hyperparameters(self) -> EditHyperparameters:
        """λ, η_e, η_p as :class:`~mist_debias.core.solve.EditHyperparameters`."""
        hparams = EditHyperparameters(lam=self.lam, edit_scale=self.edit_scale, preserve_scale=self.preserve_scale)
        return hparams.for_method(self.method)


class RunConfig(_Section):
    """Everything a debias run needs besides its output folder.

    ``tolerance`` ∈ (0, 0.5) is the largest allowed ``|r_j − t_j|``; ``budget`` caps the images of the whole
    run (``None``: no cap beyond the controller's own). ``model`` ``None`` means the bundled synthetic model.
    """

    model: Annotated[str, Field(min_length=1)] | None = None
    concepts: Annotated[tuple[ConceptConfig, ...], Field(strict=False)] = ()
    attributes: AttributesConfig | None = None
    prompt_template: str = DEFAULT_EDIT_TEMPLATE
    controller: ControllerConfig = Field(default_factory=ControllerConfig)
    tolerance: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    budget: Annotated[int, Field(gt=0)] | None = None
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)  # type: ignore[valid-type]
    edit: EditSettings = Field(default_factory=EditSettings)
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 0

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if "{concept}" not in self.prompt_template:
            raise ValueError(f"prompt_template {self.prompt_template!r} has no {{concept}}")
        if len(self.concepts) > MAX_CONCEPTS:
            raise ValueError(f"at most {MAX_CONCEPTS} concepts per run, got {len(self.concepts)}")
        names = [concept.name.strip().lower() for concept in self.concepts]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"concept(s) listed twice: {', '.join(repeated)}")
        return self

    def check_complete(self) -> None:
        """Raise :class:`ConfigError` unless the run has concepts and every concept has attributes."""
        if not self.concepts:
            raise ConfigError("no concepts to debias (give --concept or a concepts list)")
        for concept in self.concepts:
            self.spec(concept)

    def spec(self, concept: ConceptConfig) -> AttributeSpec:
        """The attribute spec of ``concept``: its own, else the shared default."""
        attributes = concept.attributes or self.attributes
        if attributes is None:
            raise ConfigError(f"concept {concept.name!r} has no attributes (give --axis/--cell or attributes)")
        return attributes.spec()

    def concept_prompts(self) -> list[ConceptPrompts]:
        """Edit prompts per concept (see :func:`~mist_debias.core.prompts.edit_prompts`), in concept order."""
        self.check_complete()
        result = []
        for concept in self.concepts:
            prompts = edit_prompts(concept.name, self.spec(concept), self.prompt_template)
            result.append(ConceptPrompts(prompt=concept.prompt or prompts.concept, attributes=prompts.attributes))
        return result

    def preserve_prompts(self) -> list[str]:
        """The preserve set of the edit (see :class:`EditSettings`), without repeats."""
        edited = [concept.name for concept in self.concepts]
        prompts = preservation_prompts(edited, self.edit.preserve, template=self.prompt_template)
        return list(dict.fromkeys([*prompts, *self.edit.preserve_prompts]))

    def to_dict(self) -> dict:
        """JSON-ready dict; ``RunConfig.from_dict(config.to_dict()) == config``."""
        return {
            "model": self.model,
            "concepts": [concept.to_dict() for concept in self.concepts],
            "attributes": None if self.attributes is None else self.attributes.to_dict(),
            "prompt_template": self.prompt_template,
            "controller": self.controller.to_dict(),
            "tolerance": self.tolerance,
            "budget": self.budget,
            "classifier": self.classifier.model_dump(mode="json"),
            "generation": self.generation.model_dump(mode="json"),
            "edit": self.edit.model_dump(mode="json"),
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        """Build and validate a config from a parsed file or :meth:`to_dict` output."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"the config: expected a mapping, got {type(data).__name__}")
        return _validated(cls, data)

    def with_overrides(self, overrides: Mapping[str, Any]) -> RunConfig:
        """A copy with dotted-key overrides applied, e.g. ``{"tolerance": 0.03, "generation.steps": 30}``.

        ``None`` values are skipped (a flag that was not given). ``concepts`` takes a list of names: concepts
        already configured keep their prompt and attributes, new ones use the shared attributes.
        ``attributes`` takes an :class:`AttributesConfig` (e.g. :meth:`AttributesConfig.from_cli`).
        """
        data = self.to_dict()
        for key, value in overrides.items():
            if value is None:
                continue
            if key == "concepts":
                known = {concept["name"].lower(): concept for concept in data["concepts"]}
                data["concepts"] = [known.get(str(name).lower(), {"name": str(name)}) for name in value]
            elif key == "attributes":
                data["attributes"] = value.to_dict() if isinstance(value, AttributesConfig) else value
            else:
                _set_dotted(data, key, value)
        return RunConfig.from_dict(data)

    def differences(self, other: RunConfig, ignore: Sequence[str] = ()) -> list[str]:
        """Dotted keys whose values differ between the two configs (``ignore``: keys or key prefixes)."""
        mine, theirs = flatten_settings(self.to_dict()), flatten_settings(other.to_dict())
        return [
            key
            for key in sorted(set(mine) | set(theirs))
            if mine.get(key) != theirs.get(key) and not any(key == p or key.startswith(p + ".") for p in ignore)
        ]


def load_config(path: Path) -> RunConfig:
    """Read and validate a run config file (format by extension: .yaml/.yml, .toml, .json)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES:
        raise ConfigError(f"{path}: unsupported config extension {suffix!r} (use {', '.join(CONFIG_SUFFIXES)})")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror or error}") from None
    try:
        if suffix == ".toml":
            data = _toml_loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise ConfigError(f"{path} is not valid {suffix[1:].upper()}: {one_line(error)}") from None
    try:
        return RunConfig.from_dict({} if data is None else data)
    except ConfigError as error:
        raise ConfigError(f"{path.name}: {error}") from None


def save_config(config: RunConfig, path: Path) -> None:
    """Write ``config.to_dict()`` as JSON atomically (replacing an existing file)."""
    with atomic_file(Path(path), force=True) as temp:
        temp.write_text(json.dumps(config.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _validated(model: type[BaseModel], data: Any) -> Any:
    """``model.model_validate(data)``, the first error as a one-line :class:`ConfigError` naming its key."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise _config_error(error) from None


def _config_error(error: ValidationError) -> ConfigError:
    """``generation.guidanse: unknown key``, ``tolerance: should be less than 0.5, got 0.7``."""
    first = error.errors(include_url=False)[0]
    where = ""
    for part in first["loc"]:
        if isinstance(part, int):
            where += f"[{part}]"
        elif "[" not in part and part not in ("function-after", "function-before"):  # skip pydantic's schema tags
            where += f".{part}" if where else part
    kind = first["type"]
    if kind == "extra_forbidden":
        text = "unknown key"
    elif kind == "missing":
        text = "missing"
    elif kind in ("value_error", "assertion_error"):
        text = one_line(first["ctx"]["error"])
    else:
        message = first["msg"].removeprefix("Input ").replace("a valid tuple", "a list")
        message = message.replace("a valid dictionary", "a mapping")
        text = f"{message}, got {first['input']!r}"
    return ConfigError(f"{where}: {text}" if where else text)


def _toml_loads(text: str) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError("reading TOML on Python 3.10 needs the 'tomli' package") from None
    return tomllib.loads(text)


def _axes(value: Any) -> Any:
    """Axes from ``{name: [values]}``, ``["name=v1,v2"]`` or ``[{name:, values:}]`` (anything else as is)."""
    if isinstance(value, Mapping):
        return tuple(Axis(str(name), _string_list(values)) for name, values in value.items())
    if isinstance(value, Sequence) and not isinstance(value, str):
        axes = []
        for item in value:
            if isinstance(item, str):
                axes.append(parse_axis(item))
            elif isinstance(item, Mapping):
                unknown = sorted(set(item) - {"name", "values"})
                if unknown:
                    raise ValueError(f"unknown key {unknown[0]!r} in an axis")
                axes.append(Axis(str(item.get("name", "")), _string_list(item.get("values"))))
            else:
                axes.append(item)
        return tuple(axes)
    return () if value is None else value


def _string_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return tuple(value)


def _probabilities(value: Any) -> tuple[float, ...]:
    """A list of probabilities: numbers, or strings of decimals and fractions (``"1/3"``, ``"0.2,0.8"``)."""
    if isinstance(value, str):
        return parse_probabilities(value)
    if not isinstance(value, Sequence) or not value:
        raise ValueError(f"expected a list of probabilities, got {value!r}")
    result: list[float] = []
    for item in value:
        if isinstance(item, str):
            result.extend(parse_probabilities(item))
        elif isinstance(item, int | float) and not isinstance(item, bool):
            result.append(float(item))
        else:
            raise ValueError(f"{item!r} is not a probability")
    return tuple(result)


def _set_dotted(data: dict, key: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``key = "a.b"`` (sections must exist)."""
    *parents, last = key.split(".")
    target = data
    for part in parents:
        if not isinstance(target.get(part), dict):
            raise ConfigError(f"unknown config key {key!r}")
        target = target[part]
    if last not in target and not (parents and parents[0] == "controller"):
        raise ConfigError(f"unknown config key {key!r}")
    target[last] = value
