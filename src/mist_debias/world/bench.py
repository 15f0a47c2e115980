"""The world benchmark: MIST, UCE and TIME against the exact oracle on the synthetic world.

For each planted concept (a single-attribute one such as the doctor over gender, and an intersectional one
such as the CEO over gender × age) every method of :data:`BENCH_METHODS` gets its own debias run folder
``OUT/<concept>/<method>/`` (what ``mist debias`` writes, so ``mist report`` renders each), all driven by the
world's exact oracle with the same sampler, seed, tolerance and image budget:

* ``original`` — no edit (the reference);
* ``mist`` — MIST (first-EOS keys), the default (panel) controller, the default preserve set (``""`` and every
  other world profession, all positions);
* ``mist-official-paper`` — the published loop as published: official controller (``n`` images per
  iteration, increments ``0.1·(t − r)``, compounding), preserve ``""`` only;
* ``mist-official`` — the official controller with the default preserve set;
* ``uce`` — UCE's key (the last word of the concept prompt) and targets ``W c + Σ_j w_j W c_j``;
* ``time`` — TIME's keys (all tokens of the concept prompt) and targets (λ = 0.1).

UCE and TIME publish no feedback loop: their attribute weights are found by the panel controller on their
own key/target construction (same preserve set as ``mist``), so the comparison is between what each
construction can reach under one search, not between search procedures.

Measurement (after the loop, never seen by it). Every model — the original and each final edit — generates
the same images: image ``i`` of world profession ``p`` uses seed

    s(p, i) = image_seeds(seed, 0, [BENCH_SEED_OFFSET + index(p) · SEEDS_PER_PROMPT + i]),

seed indices of the first concept's seed space (:func:`~mist_debias.loop.debias.image_seeds`) that the loop (its
images from index 0, validation from 5·10⁶) never draws, so the edited and the original images are *paired*
by seed. Every method's run uses the same run seed, so their searches, certificates and measurements share
seeds too: the methods are compared on common random numbers, and one run seed is one replicate for all of
them (other run seeds give independent replicates). From the oracle's decoding of these images:

* the concept: its cell distribution with simultaneous 95% (Wilson/Goodman) intervals, Δ and KL
  (:class:`~mist_debias.measure.metrics.Distribution`), the share of decoded images that keep the profession;
* preservation, for every world profession the run did not edit: its split over each axis (gender, race,
  age) before and after with simultaneous 95% intervals, flagged as *moved* when an edited ratio lies outside
  the original's interval; the share of decoded images that keep the right profession; and the same-seed
  pixel change ``d = mean_pixels |x_edit − x_orig| / 255`` (:func:`~mist_debias.measure.evaluate.pixel_change`).

Images and UNet evaluations used and wall time are the loop's own (from its log); measuring costs the same
for every method and is reported apart. The original model's images are stored once
(``OUT/reference/images.safetensors``). Resumable per run: a run folder with ``summary.json`` and
``measurement.json`` is reused, a run folder with a log but no summary is resumed from its log.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from safetensors.torch import load_file, save_file

from mist_debias import __version__
from mist_debias.core.atomic import atomic_file, write_text_atomic
from mist_debias.core.edit import Edit, fingerprint
from mist_debias.core.errors import MistError
from mist_debias.core.generate import GenerationConfig, generate_images
from mist_debias.core.layers import find_cross_attention_projections
from mist_debias.core.pipeline import default_device, load_pipeline
from mist_debias.core.prompts import concept_prompt
from mist_debias.core.run_folder import (
    FolderKind,
    Mode,
    RunFolderError,
    check_run_folder,
    create_run_folder,
    folder_kind,
    mark_legacy,
    write_json,
)
from mist_debias.core.spec import AttributeSpec, Axis
from mist_debias.loop.config import (
    MAX_SEED,
    AttributesConfig,
    ClassifierConfig,
    ConceptConfig,
    GenerationSettings,
    RunConfig,
)
from mist_debias.loop.debias import RunFolder, image_seeds
from mist_debias.loop.runner import ORACLE, prepare_run
from mist_debias.measure.evaluate import pixel_change
from mist_debias.measure.metrics import Distribution
from mist_debias.profiles.world import WORLD
from mist_debias.world.bias import PROFESSIONS
from mist_debias.world.bundled import WORLD_ETA, WORLD_GUIDANCE, bundled_world_path
from mist_debias.world.oracle import WorldOracle
from mist_debias.world.render import AGES, GENDERS, RACES

BENCH_AXES: dict[str, tuple[str, ...]] = {"gender": GENDERS, "race": RACES, "age": AGES}
BENCH_CONCEPTS: dict[str, tuple[str, ...]] = {
    "doctor": ("gender",),
    "nurse": ("gender",),
    "CEO": ("gender", "age"),
    "CEO-race": ("gender", "race"),
}
"""Benchmark concepts → the axes they are debiased over. ``CEO-race`` is the CEO over gender × race (6 cells)."""
DEFAULT_CONCEPTS: tuple[str, ...] = ("doctor", "CEO")


@dataclass(frozen=True)
class BenchMethod:
    """One row kind of the benchmark: ``overrides`` of the run config (``None``: no edit at all)."""

    name: str
    description: str
    overrides: dict[str, Any] | None


BENCH_METHODS: dict[str, BenchMethod] = {
    method.name: method
    for method in (
        BenchMethod("original", "no edit", None),
        BenchMethod(
            "mist",
            "MIST, panel controller, default preserve",
            {"edit.method": "mist", "controller.name": "panel", "edit.preserve": "default"},
        ),
        BenchMethod(
            "mist-official-paper",
            "MIST, official controller (step 0.1), preserve '' only",
            {"edit.method": "mist", "controller.name": "official", "edit.preserve": "paper"},
        ),
        BenchMethod(
            "mist-official",
            "MIST, official controller (step 0.1), default preserve",
            {"edit.method": "mist", "controller.name": "official", "edit.preserve": "default"},
        ),
        BenchMethod(
            "uce",
            "UCE (last-word key), panel controller, default preserve",
            {"edit.method": "uce", "edit.keys": "last-word", "controller.name": "panel", "edit.preserve": "default"},
        ),
        BenchMethod(
            "time",
            "TIME (all tokens), panel controller, default preserve",
            {"edit.method": "time", "controller.name": "panel", "edit.preserve": "default"},
        ),
    )
}
OFFICIAL_STEP = 0.1
BENCH_SEED_OFFSET = 8_000_000
SEEDS_PER_PROMPT = 100_000
SETTINGS_FILE = "bench_settings.json"
MEASUREMENT_FILE = "measurement.json"
REFERENCE_FILE = Path("reference") / "images.safetensors"
TABLE_FILES = ("bench.json", "bench.csv", "bench.md")
INTERVAL_SLACK = 1e-12
"""Rounding slack when checking a ratio against interval ends (a Wilson end at 1 may come out as 1 − 1e-16)."""


class BenchError(MistError):
    """Benchmark settings or an output folder that cannot be used; the message is one line."""


@dataclass(frozen=True)
class BenchSettings:
    """Everything a benchmark needs besides its output folder (validated on construction).

    ``budget`` caps the images of each debias run; ``validate`` is the number of images of each concept
    measured after the loop, ``preserve_images`` the number per unedited profession (default: ``validate``);
    ``official_images`` is the official controller's batch per iteration. ``model`` ``None`` is the bundled world.
    """

    model: str | None = None
    concepts: tuple[str, ...] = DEFAULT_CONCEPTS
    methods: tuple[str, ...] = tuple(BENCH_METHODS)
    budget: int = 2048
    seed: int = 0
    validate: int = 200
    preserve_images: int | None = None
    tolerance: float = 0.05
    steps: int = 20
    guidance: float = WORLD_GUIDANCE
    eta: float = WORLD_ETA
    batch_size: int = 64
    official_images: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "concepts", tuple(self.concepts))
        object.__setattr__(self, "methods", tuple(self.methods))
        for name in self.concepts:
            if name not in BENCH_CONCEPTS:
                raise BenchError(f"unknown concept {name!r} (choose from {', '.join(BENCH_CONCEPTS)})")
        for name in self.methods:
            if name not in BENCH_METHODS:
                raise BenchError(f"unknown method {name!r} (choose from {', '.join(BENCH_METHODS)})")
        if not self.concepts or not self.methods:
            raise BenchError("give at least one concept and one method")
        for label, values in (("concept", self.concepts), ("method", self.methods)):
            if len(set(values)) != len(values):
                raise BenchError(f"a {label} is listed twice")
        for label in ("budget", "validate", "steps", "batch_size", "official_images"):
            if getattr(self, label) <= 0:
                raise BenchError(f"{label} must be positive, got {getattr(self, label)}")
        if self.preserve_images is not None and self.preserve_images <= 0:
            raise BenchError(f"preserve_images must be positive, got {self.preserve_images}")
        if max(self.validate, self.preserve_count) > SEEDS_PER_PROMPT:
            raise BenchError(f"at most {SEEDS_PER_PROMPT} images per prompt")
        if not 0 <= self.seed <= MAX_SEED:
            raise BenchError(f"seed must be in [0, {MAX_SEED}], got {self.seed}")
        if not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise BenchError(f"guidance must be a finite number ≥ 0, got {self.guidance}")
        if not (math.isfinite(self.eta) and self.eta >= 0):
            raise BenchError(f"eta must be a finite number ≥ 0, got {self.eta}")
        if not 0 < self.tolerance < 0.5:
            raise BenchError(f"tolerance must be in (0, 0.5), got {self.tolerance}")

    @property
    def preserve_count(self) -> int:
        return self.validate if self.preserve_images is None else self.preserve_images

    @property
    def model_path(self) -> Path:
        return Path(self.model).expanduser() if self.model else bundled_world_path()

    def to_dict(self) -> dict:
        return {**asdict(self), "concepts": list(self.concepts), "methods": list(self.methods)}


def concept_profession(concept: str) -> str:
    """The world profession of a benchmark concept (``CEO-race`` → ``CEO``)."""
    return concept.split("-")[0]


def concept_spec(concept: str) -> AttributesConfig:
    """The attributes a benchmark concept is debiased over (uniform target)."""
    return AttributesConfig(axes=tuple(Axis(axis, BENCH_AXES[axis]) for axis in BENCH_CONCEPTS[concept]))


def run_config(settings: BenchSettings, concept: str, method: BenchMethod) -> RunConfig:
    """The debias run config of one edited (concept, method) row; every method shares sampler, seed, budget."""
    profession = concept_profession(concept)
    bundled = settings.model_path.resolve() == WORLD.pipeline.resolve()
    base = RunConfig(
        model=None if bundled else str(settings.model_path),
        concepts=(ConceptConfig(profession, attributes=concept_spec(concept)),),
        tolerance=settings.tolerance,
        budget=settings.budget,
        classifier=ClassifierConfig(drive=ORACLE),
        generation=GenerationSettings(
            steps=settings.steps,
            guidance=settings.guidance,
            eta=settings.eta,
            batch_size=settings.batch_size,
            dtype="float32",
        ),
        seed=settings.seed,
    )
    overrides = dict(method.overrides or {})
    if overrides.get("controller.name") == "official":
        overrides["controller.n_images"] = settings.official_images
        overrides["controller.step"] = OFFICIAL_STEP
    if not bundled and overrides.get("edit.preserve") == "default":
        # The runner's default set for the bundled world is "" plus the world's other professions; any other
        # world folder (a retrained or copied world) gets exactly that set, not the built-in profession list.
        others = [concept_prompt(p, base.prompt_template) for p in PROFESSIONS if p != profession]
        overrides["edit.preserve"] = "none"
        overrides["edit.preserve_prompts"] = ["", *others]
    return base.with_overrides(overrides)


def bench_seeds(settings: BenchSettings, profession: str, count: int) -> list[int]:
    """Seeds of the measurement images of ``profession`` (see the module docstring)."""
    start = BENCH_SEED_OFFSET + PROFESSIONS.index(profession) * SEEDS_PER_PROMPT
    return image_seeds(settings.seed, 0, range(start, start + count))


def reference_counts(settings: BenchSettings) -> dict[str, int]:
    """Images per world profession the original model must provide: concepts need ``validate``, the
    professions a run leaves unedited need ``preserve_count`` (a profession can be both)."""
    edited = {concept_profession(c) for c in settings.concepts}
    counts = {}
    for profession in PROFESSIONS:
        wanted = [settings.validate] if profession in edited else []
        if edited - {profession}:
            wanted.append(settings.preserve_count)
        counts[profession] = max(wanted)
    return counts


# ------------------------------------------------------------------------------------------ generation


class ImageSource:
    """Generates the measurement images of one model (the pipeline as it is now, edits applied by the caller)."""

    def __init__(self, pipe: DiffusionPipeline, settings: BenchSettings) -> None:
        self.pipe = pipe
        self.settings = settings
        self.config = GenerationConfig(
            steps=settings.steps, guidance=settings.guidance, batch_size=settings.batch_size, eta=settings.eta
        )

    def images(self, profession: str, count: int) -> np.ndarray:
        """``count`` images of the profession's prompt as an (n, H, W, 3) uint8 array, seeds :func:`bench_seeds`."""
        prompt = concept_prompt(profession)
        seeds = bench_seeds(self.settings, profession, count)
        images = generate_images(self.pipe, [prompt] * count, seeds, self.config)
        return np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])


def load_reference(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    return {name: tensor.numpy() for name, tensor in load_file(str(path)).items()}


def save_reference(path: Path, images: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, force=True) as temp:
        save_file({name: torch.from_numpy(array) for name, array in images.items()}, str(temp))


# ----------------------------------------------------------------------------------------- measuring


def _pixel_changes(before: np.ndarray, after: np.ndarray) -> list[float]:
    return [pixel_change(Image.fromarray(a), Image.fromarray(b)) for a, b in zip(before, after, strict=True)]


def _profession_kept(decoded, profession: str) -> float | None:
    valid = [item.attributes for item in decoded if item.attributes is not None]
    return sum(a.profession == profession for a in valid) / len(valid) if valid else None


def axis_split(decoded, axis: str) -> Distribution:
    """The distribution of the decoded images over the values of ``axis`` (simultaneous 95% intervals)."""
    values = BENCH_AXES[axis]
    valid = [item.attributes for item in decoded if item.attributes is not None]
    counts = [sum(getattr(a, axis) == value for a in valid) for value in values]
    uniform = [1.0 / len(values)] * len(values)
    return Distribution.from_counts(counts, uniform, n_invalid=len(decoded) - len(valid))


def measure_concept(
    oracle: WorldOracle, spec: AttributeSpec, profession: str, images: np.ndarray, reference: np.ndarray
) -> dict[str, Any]:
    """The concept's oracle distribution, profession kept and same-seed pixel change against the original."""
    pil = [Image.fromarray(image) for image in images]
    predictions = oracle.classify(pil, spec)
    distribution = Distribution.from_counts(
        predictions.counts(), spec.target, n_invalid=int((~predictions.valid).sum())
    )
    return {
        "distribution": distribution.to_dict(),
        "profession_kept": _profession_kept(oracle.decode(images), profession),
        "pixel_change": float(np.mean(_pixel_changes(reference[: len(images)], images))),
    }


def measure_preservation(
    oracle: WorldOracle, images: dict[str, np.ndarray], reference: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Per unedited profession, on the same seeds before and after the edit: the split over every axis
    (gender, race, age) with simultaneous 95% intervals, *moved* when some value's edited ratio lies outside
    the original's interval and its largest shift; the share of decoded images that keep the profession;
    the same-seed pixel change. Then the worst case over professions."""
    per_profession = {}
    for profession, after_images in images.items():
        before_images = reference[profession][: len(after_images)]
        decoded_before, decoded_after = oracle.decode(before_images), oracle.decode(after_images)
        axes = {}
        for axis in BENCH_AXES:
            before, after = axis_split(decoded_before, axis), axis_split(decoded_after, axis)
            shift = moved = None
            if before.n and after.n:
                differences = np.subtract(after.ratios, before.ratios)
                shift = float(differences[np.argmax(np.abs(differences))])
                moved = any(
                    not lo - INTERVAL_SLACK <= r <= hi + INTERVAL_SLACK
                    for r, lo, hi in zip(after.ratios, before.lower, before.upper, strict=True)
                )
            axes[axis] = {"before": before.to_dict(), "after": after.to_dict(), "shift": shift, "moved": moved}
        per_profession[profession] = {
            "values": {axis: list(BENCH_AXES[axis]) for axis in BENCH_AXES},
            "axes": axes,
            "woman_before": axes["gender"]["before"]["ratios"][GENDERS.index("woman")],
            "woman_after": axes["gender"]["after"]["ratios"][GENDERS.index("woman")],
            "moved": sorted(axis for axis, entry in axes.items() if entry["moved"]),
            "profession_kept_before": _profession_kept(decoded_before, profession),
            "profession_kept_after": _profession_kept(decoded_after, profession),
            "pixel_change": float(np.mean(_pixel_changes(before_images, after_images))),
        }
    kept = [p["profession_kept_after"] for p in per_profession.values() if p["profession_kept_after"] is not None]
    return {
        "professions": per_profession,
        "max_shift": {
            axis: max(
                (
                    abs(p["axes"][axis]["shift"])
                    for p in per_profession.values()
                    if p["axes"][axis]["shift"] is not None
                ),
                default=None,
            )
            for axis in BENCH_AXES
        },
        "moved": sorted(f"{name}:{axis}" for name, p in per_profession.items() for axis in p["moved"]),
        "mean_pixel_change": float(np.mean([p["pixel_change"] for p in per_profession.values()])),
        "min_profession_kept": min(kept) if kept else None,
    }


# ---------------------------------------------------------------------------------------------- runs


@dataclass
class BenchContext:
    """What every row of one benchmark shares: settings, folder, the original pipeline, oracle, reference."""

    settings: BenchSettings
    out: Path
    device: torch.device
    oracle: WorldOracle = field(default_factory=WorldOracle)
    pipe: DiffusionPipeline | None = None
    reference: dict[str, np.ndarray] = field(default_factory=dict)
    log: Callable[[str], None] = lambda message: None

    def original_pipe(self) -> DiffusionPipeline:
        if self.pipe is None:
            self.pipe = load_pipeline(self.settings.model_path, device=self.device, torch_dtype=torch.float32)
        return self.pipe

    def ensure_reference(self) -> dict[str, np.ndarray]:
        """The original model's measurement images of every world profession, generated once and stored."""
        path = self.out / REFERENCE_FILE
        self.reference = load_reference(path)
        wanted = reference_counts(self.settings)
        missing = {p: n for p, n in wanted.items() if p not in self.reference or len(self.reference[p]) < n}
        if missing:
            source = ImageSource(self.original_pipe(), self.settings)
            for profession, count in missing.items():
                self.log(f"original model: {count} images of {profession}")
                self.reference[profession] = source.images(profession, count)
                save_reference(path, self.reference)
        return self.reference


def measure_model(
    context: BenchContext, images: Callable[[str, int], np.ndarray], concept: str, spec: AttributeSpec
) -> dict:
    """Measure one model for one concept (concept + preservation); ``images(profession, n)`` gives its
    measurement images (an :class:`ImageSource` of the edited pipeline, or the stored original images)."""
    settings = context.settings
    profession = concept_profession(concept)
    started = time.perf_counter()
    concept_images = images(profession, settings.validate)
    result = measure_concept(context.oracle, spec, profession, concept_images, context.reference[profession])
    unedited = {p: images(p, settings.preserve_count) for p in PROFESSIONS if p != profession}
    result["preservation"] = measure_preservation(context.oracle, unedited, context.reference)
    result["measure_wall_time_s"] = round(time.perf_counter() - started, 3)
    return result


def _original_summary(concept: str, spec: AttributeSpec, measured: dict) -> dict:
    """A run summary (the format of ``mist debias``) for the unedited model, so ``mist report`` renders it."""
    profession = concept_profession(concept)
    return {
        "concepts": [
            {
                "name": profession,
                "prompt": concept_prompt(profession),
                "cells": spec.phrases,
                "target": list(spec.target),
                "before": measured["distribution"],
                "after": None,
                "after_fresh_seeds": measured["distribution"],
                "converged": None,
                "reason": "no edit",
                "images_used": 0,
                "iterations": 0,
                "weights": [0.0] * spec.num_cells,
                "axes": [{"name": axis.name, "values": list(axis.values)} for axis in spec.axes],
            }
        ],
        "images_total": 0,
        "unet_evaluations": 0,
        "wall_time_s": 0.0,
        "preserved_concepts": [],
        "controller": None,
        "library_version": __version__,
    }


def bench_row(context: BenchContext, concept: str, method_name: str) -> dict:
    """Run (or reuse) one (concept, method) run folder and return its measurement."""
    folder = RunFolder(context.out / concept / method_name)
    measurement_path = folder.root / MEASUREMENT_FILE
    if measurement_path.is_file():
        context.log(f"{concept} / {method_name}: reusing {folder.root}")
        return json.loads(measurement_path.read_text(encoding="utf-8"))
    method = BENCH_METHODS[method_name]
    spec = concept_spec(concept).spec()
    context.log(f"{concept} / {method_name}: {method.description}")
    if method.overrides is None:
        folder.root.mkdir(parents=True, exist_ok=True)
        measured = measure_model(context, lambda p, n: context.reference[p][:n], concept, spec)
        loop = {"images": 0, "unet_evaluations": 0, "wall_time_s": 0.0, "converged": None, "reason": "no edit"}
        write_json(folder.summary, _original_summary(concept, spec, measured))
    else:
        config = run_config(context.settings, concept, method)
        run, _ = prepare_run(config, folder.root, resume=folder.is_run(), device=str(context.device), profile=WORLD)
        measured: dict = {}

        def measure(edit: Edit) -> dict[str, Distribution]:
            with edit.applied(run.pipe):
                measured.update(measure_model(context, ImageSource(run.pipe, context.settings).images, concept, spec))
            return {run.order[0]: _distribution_from_dict(measured["distribution"])}

        try:
            run.run(on_round=lambda done: context.log(f"  {done.controller.images_used} images"))
            summary = run.finish(measure=measure)
        finally:
            run.close()
        status = summary["concepts"][0]
        loop = {
            "images": summary["images_total"],
            "unet_evaluations": summary["unet_evaluations"],
            "wall_time_s": summary["wall_time_s"],
            "converged": status["converged"],
            "reason": status["reason"],
            "weights": status["weights"],
            "preserved_prompts": len(summary["preserved_concepts"]),
        }
    measurement = {
        "concept": concept,
        "profession": concept_profession(concept),
        "method": method_name,
        "description": method.description,
        "cells": spec.phrases,
        "loop": loop,
        **measured,
    }
    write_json(measurement_path, measurement)  # last: marks the row as done
    return measurement


def _distribution_from_dict(data: dict) -> Distribution:
    return Distribution.from_counts(data["counts"], data["target"], n_invalid=data["n_invalid"], alpha=data["alpha"])


# --------------------------------------------------------------------------------------------- table


def table_rows(measurements: Sequence[dict]) -> list[dict]:
    """One flat row per (concept, method): the numbers of bench.csv and bench.md."""
    rows = []
    for m in measurements:
        d, p, loop = m["distribution"], m["preservation"], m["loop"]
        rows.append(
            {
                "concept": m["concept"],
                "method": m["method"],
                "cells": m["cells"],
                "ratios": d["ratios"],
                "lower": d["lower"],
                "upper": d["upper"],
                "n": d["n"],
                "n_invalid": d["n_invalid"],
                "deviation": d["deviation"],
                "kl": d["kl"],
                "converged": loop["converged"],
                "reason": loop["reason"],
                "images": loop["images"],
                "unet_evaluations": loop["unet_evaluations"],
                "wall_time_s": loop["wall_time_s"],
                "profession_kept": m["profession_kept"],
                "concept_pixel_change": m["pixel_change"],
                "preserve_max_gender_shift": p["max_shift"]["gender"],
                "preserve_max_race_shift": p["max_shift"]["race"],
                "preserve_max_age_shift": p["max_shift"]["age"],
                "preserve_moved": p["moved"],
                "preserve_professions": len(p["professions"]),
                "preserve_pixel_change": p["mean_pixel_change"],
                "preserve_min_profession_kept": p["min_profession_kept"],
            }
        )
    return rows


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _distribution_text(row: dict) -> str:
    parts = []
    for cell, r, lo, hi in zip(row["cells"], row["ratios"], row["lower"], row["upper"], strict=True):
        parts.append(f"{cell} {_fmt(r, 2)} [{_fmt(lo, 2)}, {_fmt(hi, 2)}]")
    return "; ".join(parts)


def markdown_table(rows: Sequence[dict]) -> str:
    """The benchmark as a markdown table (ratios with simultaneous 95% intervals; shifts in points)."""
    header = [
        "concept",
        "method",
        "oracle distribution [95%]",
        "Δ",
        "status",
        "images",
        "UNet evals",
        "wall s",
        "kept",
        "max shift gender/race/age (pts)",
        "moved",
        "pixel Δ unedited",
        "kept unedited",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        shifts = [row[f"preserve_max_{axis}_shift"] for axis in BENCH_AXES]
        status = row["reason"] if row["converged"] is None else ("converged" if row["converged"] else row["reason"])
        cells = [
            row["concept"],
            row["method"],
            _distribution_text(row),
            _fmt(row["deviation"]),
            status,
            str(row["images"]),
            str(row["unet_evaluations"]),
            _fmt(row["wall_time_s"], 1),
            _fmt(row["profession_kept"]),
            "/".join(_fmt(None if shift is None else 100 * shift, 1) for shift in shifts),
            f"{len({m.split(':')[0] for m in row['preserve_moved']})}/{row['preserve_professions']}"
            + (f" ({', '.join(row['preserve_moved'])})" if row["preserve_moved"] else ""),
            _fmt(row["preserve_pixel_change"], 4),
            _fmt(row["preserve_min_profession_kept"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[dict]) -> str:
    """The flat rows as CSV (lists joined with ``;``)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ";".join(_fmt(x, 6) for x in v) if isinstance(v, list) else v for k, v in row.items()})
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- entry


BENCH_FOLDER = FolderKind(
    "bench", SETTINGS_FILE, legacy=lambda data: isinstance(data, dict) and {"concepts", "methods"} <= set(data)
)
"""A benchmark folder; one written before the kind marker is recognised by its settings file."""


def bench_mode(out: Path, force: bool) -> Mode:
    """``force`` replaces a benchmark folder; without it an existing benchmark folder is resumed."""
    if force:
        return "force"
    return "resume" if folder_kind(out, [BENCH_FOLDER]) == BENCH_FOLDER.name else "fresh"


def check_out_dir(out: Path, settings: BenchSettings, force: bool) -> bool:
    """Refuse a folder made with other settings or holding something else (the rules of
    :mod:`mist_debias.core.run_folder`); True when the benchmark starts afresh."""
    try:
        return check_run_folder(out, BENCH_FOLDER, bench_mode(out, force), settings.to_dict())
    except RunFolderError as error:
        raise BenchError(str(error)) from None


def describe_sampler(scheduler) -> str:
    """The scheduler's class name, with its algorithm where it has several (``DPMSolverMultistepScheduler``)."""
    algorithm = scheduler.config.get("algorithm_type")
    return f"{type(scheduler).__name__} ({algorithm})" if algorithm else type(scheduler).__name__


def run_bench(
    settings: BenchSettings,
    out: Path,
    force: bool = False,
    device: str | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Run (or resume) the whole benchmark into ``out``; returns the table rows (also written to
    ``bench.json``, ``bench.csv`` and ``bench.md``). Bad settings raise :class:`BenchError` before anything is
    written; an existing ``out`` is resumed when its settings match, replaced with ``force``."""
    out = Path(out)
    if not (settings.model_path / "model_index.json").is_file():
        raise BenchError(f"{settings.model_path} is not a diffusers pipeline folder (no model_index.json)")
    fresh = check_out_dir(out, settings, force)
    target_device = torch.device(device) if device else default_device()
    context = BenchContext(settings=settings, out=out, device=target_device, log=log or (lambda message: None))
    started = time.perf_counter()
    context.original_pipe()  # a model that does not load fails here, before anything is written
    if fresh:
        settings_text = json.dumps(settings.to_dict(), indent=2) + "\n"
        create_run_folder(out, BENCH_FOLDER, bench_mode(out, force), {SETTINGS_FILE: settings_text})
    else:
        mark_legacy(out, BENCH_FOLDER)
    context.ensure_reference()
    measurements = [bench_row(context, c, m) for c in settings.concepts for m in settings.methods]
    rows = table_rows(measurements)
    payload = {
        "settings": {**settings.to_dict(), "sampler": describe_sampler(context.original_pipe().scheduler)},
        "model_fingerprint": fingerprint(find_cross_attention_projections(context.original_pipe().unet)),
        "methods": {name: BENCH_METHODS[name].description for name in settings.methods},
        "seeds": {"offset": BENCH_SEED_OFFSET, "per_prompt": SEEDS_PER_PROMPT},
        "rows": rows,
        "measurements": measurements,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "library_version": __version__,
    }
    write_json(out / TABLE_FILES[0], payload)
    write_text_atomic(out / TABLE_FILES[1], csv_table(rows))
    write_text_atomic(out / TABLE_FILES[2], markdown_table(rows))
    return rows
