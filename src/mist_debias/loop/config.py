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

Every section and key is optional (defaults below); unknown keys are errors, so typos do not pass silently.
:meth:`RunConfig.to_dict` gives a JSON-ready dict that :meth:`RunConfig.from_dict` turns back into an equal
config (the run folder stores it; ``--resume`` compares it with :meth:`RunConfig.differences`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mist_debias.core.atomic import atomic_file
from mist_debias.core.errors import MistError, one_line
from mist_debias.core.generate import GenerationConfig
from mist_debias.core.prompts import DEFAULT_EDIT_TEMPLATE, PRESERVE_MODES, edit_prompts, preservation_prompts
from mist_debias.core.solve import EditHyperparameters
from mist_debias.core.spec import AttributeSpec, Axis, SpecError, parse_axis, parse_probabilities, parse_targets
from mist_debias.core.targets import DEFAULT_KEYS, KEY_SETS, METHODS, ConceptPrompts
from mist_debias.measure.classifiers.clip import CLASSIFY_MODES, DEFAULT_TEMPLATES

CONTROLLERS = ("panel", "adaptive", "official")
DTYPES = ("auto", "float32", "float16", "bfloat16")
MIST_FORMS = ("paper", "running")
DEFAULT_LAM = {"mist": 0.5, "uce": 0.5, "time": 0.1}
CONFIG_SUFFIXES = (".yaml", ".yml", ".toml", ".json")


class ConfigError(MistError):
    """A run configuration that cannot be used; the message is one line naming the offending key."""


@dataclass(frozen=True)
class AttributesConfig:
    """Cells and target of a concept: axes (product) or explicit cells, and a target.

    ``target`` is one value per cell, ``marginals`` one distribution per axis (the joint is their product);
    with neither the target is uniform. ``phrases`` overrides cell phrases by :func:`~mist_debias.core.spec.cell_key`
    (``"woman,Asian,young"``). Validated on construction (raises :class:`~mist_debias.core.spec.SpecError`).
    """

    axes: tuple[Axis, ...] = ()
    cells: tuple[str, ...] = ()
    target: tuple[float, ...] | None = None
    marginals: dict[str, tuple[float, ...]] = field(default_factory=dict)
    phrases: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", tuple(self.axes))
        object.__setattr__(self, "cells", tuple(self.cells))
        if self.target is not None:
            object.__setattr__(self, "target", tuple(self.target))
        object.__setattr__(self, "marginals", {name: tuple(p) for name, p in self.marginals.items()})
        self.spec()

    def spec(self) -> AttributeSpec:
        """The :class:`~mist_debias.core.spec.AttributeSpec` this describes."""
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
        return cls(
            axes=tuple(parse_axis(text) for text in axes),
            cells=tuple(cells),
            target=target,
            marginals=marginals,
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

    @classmethod
    def from_dict(cls, data: Any, where: str = "attributes") -> AttributesConfig:
        data = _mapping(data, where)
        _check_keys(data, ("axes", "cells", "target", "phrases"), where)
        target, marginals = _target(data.get("target"), f"{where}.target")
        return cls(
            axes=_axes(data.get("axes"), f"{where}.axes"),
            cells=_strings(data.get("cells", ()), f"{where}.cells"),
            target=target,
            marginals=marginals,
            phrases=_string_map(data.get("phrases", {}), f"{where}.phrases"),
        )


@dataclass(frozen=True)
class ConceptConfig:
    """One concept to debias: its name (``doctor``), optional edit prompt and optional own attributes.

    ``prompt`` replaces the concept prompt built from the run's ``prompt_template``; the attribute prompts
    still come from that template (see :func:`~mist_debias.core.prompts.edit_prompts`).
    """

    name: str
    prompt: str | None = None
    attributes: AttributesConfig | None = None

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ConfigError("a concept has an empty name")
        if self.prompt is not None and not self.prompt.strip():
            raise ConfigError(f"concept {self.name!r} has an empty prompt")

    def to_dict(self) -> dict:
        data: dict[str, Any] = {"name": self.name}
        if self.prompt is not None:
            data["prompt"] = self.prompt
        if self.attributes is not None:
            data["attributes"] = self.attributes.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ConceptConfig:
        if isinstance(data, str):
            return cls(name=data)
        data = _mapping(data, where)
        _check_keys(data, ("name", "prompt", "attributes"), where)
        if "name" not in data:
            raise ConfigError(f"{where}: missing 'name'")
        name = _convert(data["name"], str, f"{where}.name")
        attributes = data.get("attributes")
        return cls(
            name=name,
            prompt=_convert(data.get("prompt"), str | None, f"{where}.prompt"),
            attributes=None
            if attributes is None
            else _spec_context(f"{where}.attributes", AttributesConfig.from_dict, attributes, f"{where}.attributes"),
        )


@dataclass(frozen=True)
class ControllerConfig:
    """The feedback controller (``panel``, ``adaptive`` or ``official``) and its options (checked by the controller)."""

    name: str = "panel"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in CONTROLLERS:
            raise ConfigError(f"unknown controller {self.name!r} (choose from {', '.join(CONTROLLERS)})")

    def to_dict(self) -> dict:
        return {"name": self.name, **self.options}

    @classmethod
    def from_dict(cls, data: Any, where: str = "controller") -> ControllerConfig:
        if isinstance(data, str):
            return cls(name=data)
        data = dict(_mapping(data, where))
        name = _convert(data.pop("name", "panel"), str, f"{where}.name")
        return cls(name=name, options=data)


@dataclass(frozen=True)
class ClassifierConfig:
    """Which classifier drives the loop and which evaluates it, and the CLIP zero-shot settings.

    ``drive``: a CLIP id or folder, or ``None`` for the model's default (the synthetic world's oracle for the
    bundled model, :data:`~mist_debias.measure.classifiers.clip.DEFAULT_CLIP_MODEL` otherwise). ``evaluate``: an
    independent classifier for the final numbers, ``None`` to grade with ``drive``.
    """

    drive: str | None = None
    evaluate: str | None = None
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    mode: str = "joint"
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.mode not in CLASSIFY_MODES:
            raise ConfigError(f"unknown classifier mode {self.mode!r} (choose from {', '.join(CLASSIFY_MODES)})")
        if not self.templates:
            raise ConfigError("classifier.templates must not be empty")
        for template in self.templates:
            if "{phrase}" not in template:
                raise ConfigError(f"classifier template {template!r} has no {{phrase}}")
        _positive("classifier.batch_size", self.batch_size)


@dataclass(frozen=True)
class GenerationSettings:
    """Sampler settings of the loop's images; ``dtype`` ``auto`` is float16 on CUDA and float32 elsewhere,
    ``eta`` is DDIM's η (see :class:`~mist_debias.core.generate.GenerationConfig`)."""

    steps: int = 20
    guidance: float = 7.5
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    batch_size: int = 16
    dtype: str = "auto"
    scheduler: str | None = None
    eta: float = 0.0

    def __post_init__(self) -> None:
        _positive("generation.steps", self.steps)
        _positive("generation.batch_size", self.batch_size)
        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise ConfigError(f"generation.guidance must be a finite number ≥ 0, got {self.guidance}")
        if not math.isfinite(self.eta) or self.eta < 0:
            raise ConfigError(f"generation.eta must be a finite number ≥ 0, got {self.eta}")
        for name in ("height", "width"):
            side = getattr(self, name)
            if side is not None and (side <= 0 or side % 8):
                raise ConfigError(f"generation.{name} must be a positive multiple of 8, got {side}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown generation.dtype {self.dtype!r} (choose from {', '.join(DTYPES)})")

    def generation_config(self) -> GenerationConfig:
        """The sampler settings as :class:`~mist_debias.core.generate.GenerationConfig`."""
        return GenerationConfig(
            steps=self.steps,
            guidance=self.guidance,
            height=self.height,
            width=self.width,
            negative_prompt=self.negative_prompt,
            batch_size=self.batch_size,
            eta=self.eta,
        )


@dataclass(frozen=True)
class EditSettings:
    """Closed-form edit settings.

    ``keys`` and ``lam`` default by method (``eos``/0.5 for MIST). ``preserve``: ``default`` keeps ``""`` and
    every unedited concept of the run and of the built-in professions (all positions), ``paper`` keeps ``""``
    only (the official setting), ``none`` nothing; ``preserve_prompts`` are added to either.
    """

    method: str = "mist"
    keys: str | None = None
    lam: float | None = None
    edit_scale: float = 1.0
    preserve_scale: float = 0.2
    preserve: str = "default"
    preserve_prompts: tuple[str, ...] = ()
    mist_form: str = "paper"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown edit.method {self.method!r} (choose from {', '.join(METHODS)})")
        if self.keys is not None and self.keys not in KEY_SETS:
            raise ConfigError(f"unknown edit.keys {self.keys!r} (choose from {', '.join(KEY_SETS)})")
        if self.preserve not in PRESERVE_MODES:
            raise ConfigError(f"unknown edit.preserve {self.preserve!r} (choose from {', '.join(PRESERVE_MODES)})")
        if self.mist_form not in MIST_FORMS:
            raise ConfigError(f"unknown edit.mist_form {self.mist_form!r} (choose from {', '.join(MIST_FORMS)})")
        try:
            self.hyperparameters()
        except MistError as error:
            raise ConfigError(f"edit.{error}") from None

    @property
    def resolved_keys(self) -> str:
        return self.keys or DEFAULT_KEYS[self.method]

    def hyperparameters(self) -> EditHyperparameters:
        """λ, η_e, η_p as :class:`~mist_debias.core.solve.EditHyperparameters`."""
        lam = DEFAULT_LAM[self.method] if self.lam is None else self.lam
        return EditHyperparameters(lam=lam, edit_scale=self.edit_scale, preserve_scale=self.preserve_scale)


@dataclass(frozen=True)
class RunConfig:
    """Everything a debias run needs besides its output folder.

    ``tolerance`` ∈ (0, 0.5) is the largest allowed ``|r_j − t_j|``; ``budget`` caps the images of the whole
    run (``None``: no cap beyond the controller's own). ``model`` ``None`` means the bundled synthetic model.
    """

    model: str | None = None
    concepts: tuple[ConceptConfig, ...] = ()
    attributes: AttributesConfig | None = None
    prompt_template: str = DEFAULT_EDIT_TEMPLATE
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    tolerance: float = 0.05
    budget: int | None = None
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    edit: EditSettings = field(default_factory=EditSettings)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model is not None and not self.model.strip():
            raise ConfigError("model must not be empty")
        if not (math.isfinite(self.tolerance) and 0 < self.tolerance < 0.5):
            raise ConfigError(f"tolerance must be in (0, 0.5), got {self.tolerance}")
        if self.budget is not None and self.budget <= 0:
            raise ConfigError(f"budget must be > 0 images, got {self.budget}")
        if self.seed < 0:
            raise ConfigError(f"seed must be ≥ 0, got {self.seed}")
        if "{concept}" not in self.prompt_template:
            raise ConfigError(f"prompt_template {self.prompt_template!r} has no {{concept}}")
        names = [concept.name.strip().lower() for concept in self.concepts]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ConfigError(f"concept(s) listed twice: {', '.join(repeated)}")

    def check_complete(self) -> None:
        """Raise :class:`ConfigError` unless the run has concepts and every concept has attributes."""
        if not self.concepts:
            raise ConfigError("no concepts to debias (give --concept or a concepts list)")
        for concept in self.concepts:
            if concept.attributes is None and self.attributes is None:
                raise ConfigError(f"concept {concept.name!r} has no attributes (give --axis/--cell or attributes)")

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
            "classifier": _flat_dict(self.classifier),
            "generation": _flat_dict(self.generation),
            "edit": _flat_dict(self.edit),
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Any) -> RunConfig:
        """Build and validate a config from a parsed file or :meth:`to_dict` output."""
        data = _mapping(data, "the config")
        _check_keys(data, [f.name for f in dataclasses.fields(cls)], "the config")
        concepts = data.get("concepts") or ()
        if isinstance(concepts, str) or not isinstance(concepts, Sequence):
            raise ConfigError("concepts: expected a list of names or mappings")
        attributes = data.get("attributes")
        kwargs: dict[str, Any] = {
            "concepts": tuple(
                ConceptConfig.from_dict(item, f"concepts[{index}]") for index, item in enumerate(concepts)
            ),
            "attributes": None
            if attributes is None
            else _spec_context("attributes", AttributesConfig.from_dict, attributes, "attributes"),
        }
        if "controller" in data:
            kwargs["controller"] = ControllerConfig.from_dict(data["controller"])
        for name, section in (("classifier", ClassifierConfig), ("generation", GenerationSettings)):
            if name in data:
                kwargs[name] = _flat_from_dict(section, data[name], name)
        if "edit" in data:
            kwargs["edit"] = _flat_from_dict(EditSettings, data["edit"], "edit")
        for name in ("model", "prompt_template", "tolerance", "budget", "seed"):
            if name in data:
                kwargs[name] = _convert(data[name], _hints(cls)[name], name)
        return cls(**kwargs)

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
        mine, theirs = _flatten(self.to_dict()), _flatten(other.to_dict())
        keys = sorted(set(mine) | set(theirs))
        return [
            key
            for key in keys
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
    except MistError as error:
        raise ConfigError(f"{path}: {error}") from None


def save_config(config: RunConfig, path: Path) -> None:
    """Write ``config.to_dict()`` as JSON atomically (replacing an existing file)."""
    with atomic_file(Path(path), force=True) as temp:
        temp.write_text(json.dumps(config.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _toml_loads(text: str) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError("reading TOML on Python 3.10 needs the 'tomli' package") from None
    return tomllib.loads(text)


def _spec_context(where: str, build, *args):
    """Call ``build(*args)``, turning a :class:`SpecError` into a :class:`ConfigError` that names ``where``."""
    try:
        return build(*args)
    except SpecError as error:
        raise ConfigError(f"{where}: {error}") from None


def _mapping(data: Any, where: str) -> Mapping:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    return data


def _check_keys(data: Mapping, allowed: Sequence[str], where: str) -> None:
    unknown = [str(key) for key in data if key not in allowed]
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in {where} (allowed: {', '.join(allowed)})")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _flat_dict(section: Any) -> dict:
    return {
        f.name: list(value) if isinstance(value := getattr(section, f.name), tuple) else value
        for f in dataclasses.fields(section)
    }


def _flat_from_dict(cls: type, data: Any, where: str) -> Any:
    """A section dataclass of scalars and string tuples from a mapping, converting by type hint."""
    data = _mapping(data, where)
    hints = _hints(cls)
    _check_keys(data, list(hints), where)
    return cls(**{key: _convert(value, hints[key], f"{where}.{key}") for key, value in data.items()})


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a simple type hint (int, float, str, bool, tuple[str, ...], X | None)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [arg for arg in args if arg is not type(None)]
        args = typing.get_args(hint)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    if typing.get_origin(hint) is tuple:
        return _strings(value, where)
    expected = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))
    raise ConfigError(f"{where}: expected {expected}, got {value!r}")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    return tuple(value)


def _string_map(value: Any, where: str) -> dict[str, str]:
    value = _mapping(value, where)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(f"{where}: expected a mapping of strings to strings")
    return dict(value)


def _axes(value: Any, where: str) -> tuple[Axis, ...]:
    """Axes from ``{name: [values]}``, ``["name=v1,v2"]`` or ``[{name:, values:}]``."""
    if value is None:
        return ()
    try:
        if isinstance(value, Mapping):
            return tuple(Axis(str(name), _strings(values, f"{where}.{name}")) for name, values in value.items())
        if isinstance(value, Sequence) and not isinstance(value, str):
            axes = []
            for item in value:
                if isinstance(item, str):
                    axes.append(parse_axis(item))
                else:
                    item = _mapping(item, where)
                    _check_keys(item, ("name", "values"), where)
                    axes.append(Axis(str(item.get("name", "")), _strings(item.get("values"), where)))
            return tuple(axes)
    except SpecError as error:
        raise ConfigError(f"{where}: {error}") from None
    raise ConfigError(f"{where}: expected a mapping of axis names to value lists")


def _probabilities(value: Any, where: str) -> tuple[float, ...]:
    if isinstance(value, str):
        return _spec_context(where, parse_probabilities, value)
    if not isinstance(value, Sequence) or not value:
        raise ConfigError(f"{where}: expected a list of probabilities, got {value!r}")
    result = []
    for item in value:
        if isinstance(item, str):
            result.extend(_spec_context(where, parse_probabilities, item))
        elif isinstance(item, int | float) and not isinstance(item, bool):
            result.append(float(item))
        else:
            raise ConfigError(f"{where}: {item!r} is not a probability")
    return tuple(result)


def _target(value: Any, where: str) -> tuple[tuple[float, ...] | None, dict[str, tuple[float, ...]]]:
    """``uniform``/absent, a per-cell list, or a per-axis mapping of marginals."""
    if value is None or value == "uniform":
        return None, {}
    if isinstance(value, Mapping):
        return None, {str(name): _probabilities(p, f"{where}.{name}") for name, p in value.items()}
    return _probabilities(value, where), {}


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts → ``{"a.b": value}`` (lists are kept whole)."""
    if isinstance(data, Mapping) and data:
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: data}


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


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")
