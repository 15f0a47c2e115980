"""Evaluation: prompt set × seeds × models → saved images, a tidy results table, and metrics with intervals.

The original model and every edited model generate the *same* (prompt, seed) pairs; an independent
classifier assigns each image to a cell of the attribute spec. From the table come, per concept × model,
the joint cell distribution with simultaneous 95% intervals, each axis's marginal, the deviation ratio Δ,
KL(r‖t) and (given the classifier's confusion matrix) CLEAM-corrected ratios; and, per edited model,
preservation of the concepts it did not edit:

* pixel change of each image against the original model's image of the same prompt and seed,
  ``d = mean_pixels |x_edit − x_orig| / 255`` ∈ [0, 1], summarised by its mean and the fraction of images
  with ``d > threshold``;
* whether the concept's distribution moved: ``outside_interval`` is true when some cell's edited ratio lies
  outside the original's simultaneous 95% interval (the criterion "must not move beyond its interval"), and
  ``moved`` is the verdict of a paired test. Images share their seed, so original and edited labels are
  *paired*; for cell j, among the pairs whose label changed into or out of j (``b_j`` into, ``c_j`` out of),
  no movement means ``b_j ~ Binomial(b_j + c_j, ½)`` — the exact McNemar test,
  ``p_j = min(1, 2 · P[Bin(b_j + c_j, ½) ≤ min(b_j, c_j)])``. The smallest ``p_j``, Bonferroni-adjusted over
  the K cells (no adjustment for K = 2, where both cells give the same test), below ``alpha`` means moved.

With ``clip_model`` set, every image also gets its CLIP score against its prompt
(:mod:`mist_debias.measure.clip_score`): per concept × model the mean, per edited model the mean same-seed change.
LPIPS is not computed: its backbone weights are not part of any package here.

Seeds: image i of prompt p uses ``seed + p·n + i`` (distinct seeds, so images of one concept are independent
draws, as the binomial intervals assume), or ``s_p + i`` when the prompt set fixes a seed ``s_p``.

The work is cut into generation batches of consecutive images of one model (the same cut for any number of
processes) and classification chunks; under ``torchrun``/``accelerate launch`` each process takes a share of
both (:mod:`mist_debias.measure.distributed`) and the main process merges the rows in canonical order, so the table
equals a one-process run's with the same numeric settings (per-image CPU generators; the same batches; the
same thread count — a different thread count can change a pixel by one grey level through float rounding).

Folder layout::

    EVAL_DIR/evaluation.json           the plan (model, edits, prompts, seeds, spec, classifier, sampler)
    EVAL_DIR/images/<model>/pPPPP_sSEED.png
    EVAL_DIR/results.csv, results.json the tidy table, one row per image
    EVAL_DIR/metrics.json              distributions and preservation (written last: marks completion)

Every file is written atomically; ``resume`` regenerates only batches with a missing image.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mist_debias import __version__
from mist_debias.core.atomic import atomic_file, write_text_atomic
from mist_debias.core.errors import MistError
from mist_debias.core.generate import GenerationConfig, UNetEvaluationCounter, generate_images
from mist_debias.core.prompts import PromptRecord, strip_article
from mist_debias.core.run_folder import (
    FolderKind,
    RunFolderError,
    check_run_folder,
    create_run_folder,
    folder_kind,
    mark_legacy,
    run_mode,
)
from mist_debias.core.spec import AttributeSpec
from mist_debias.measure.classifiers.base import CellClassifier
from mist_debias.measure.clip_score import CLIPScorer
from mist_debias.measure.distributed import Processes
from mist_debias.measure.evaluation_files import (
    FORMAT,
    FORMAT_VERSION,
    IMAGES_DIR,
    MANIFEST_FILE,
    METRICS_FILE,
    RESULTS_CSV,
    RESULTS_JSON,
)
from mist_debias.measure.metrics import (
    Distribution,
    cleam_correct,
    deviation_ratio,
    kl_divergence,
    paired_cell_test,
)

ORIGINAL = "original"
DEFAULT_CHANGE_THRESHOLD = 0.02
"""An image counts as changed when its mean absolute pixel difference exceeds 2% of the range (~5 levels)."""
CLASSIFY_CHUNK = 32
INTERVAL_SLACK = 1e-12
"""Rounding slack when checking a ratio against interval ends (a Wilson end at 0 may come out as 1e-17)."""
CONFUSION_ATOL = 1e-6

Progress = Callable[[str, int], None]
"""``progress(stage, images)``: called after each batch with the stage name and the images it covered."""


class EvaluationError(MistError):
    """An evaluation that cannot run as asked (bad settings, an unusable folder); one-line message."""


def concept_matches(concept: str, edited_prompt: str) -> bool:
    """Whether ``concept`` is the subject of an edit's concept prompt.

    True when the concept (leading article removed, case ignored) is the prompt or occurs in it as whole
    words: ``doctor`` matches ``"a photo of a doctor"``; ``man`` does not match ``"a photo of a woman"``.
    """
    word = strip_article(concept).lower()
    text = edited_prompt.strip().lower()
    if not word:
        return False
    return word == text or re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


@dataclass(frozen=True)
class ModelVariant:
    """One model under evaluation: the original, or the original with an edit file applied."""

    name: str
    edit_path: str | None = None
    edited_prompts: tuple[str, ...] = ()

    def edits(self, concept: str) -> bool:
        """Whether this variant's edit targets ``concept`` (see :func:`concept_matches`)."""
        return any(concept_matches(concept, prompt) for prompt in self.edited_prompts)

    def to_dict(self) -> dict:
        return {"name": self.name, "edit": self.edit_path, "edited_prompts": list(self.edited_prompts)}


def variant_names(paths: Sequence[Path]) -> list[str]:
    """Folder-safe unique names for edit files: the file stem, ``-2``, ``-3``… on repeats; never ``original``."""
    names: list[str] = []
    for path in paths:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(path).stem).strip("-.") or "edit"
        base = "edited" if base == ORIGINAL else base
        name, suffix = base, 2
        while name in names:
            name, suffix = f"{base}-{suffix}", suffix + 1
        names.append(name)
    return names


@dataclass(frozen=True)
class WorkItem:
    """One image to generate: position ``index`` in the canonical order (model, prompt, seed)."""

    index: int
    model: str
    concept: str
    prompt: str
    prompt_index: int
    seed: int

    @property
    def image(self) -> str:
        """Path of its PNG relative to the evaluation folder."""
        return image_path(self.model, self.prompt_index, self.seed)


def image_path(model: str, prompt_index: int, seed: int) -> str:
    """``images/<model>/pPPPP_sSEED.png``."""
    return f"{IMAGES_DIR}/{model}/p{prompt_index:04d}_s{seed}.png"


@dataclass(frozen=True)
class EvaluationPlan:
    """Everything that decides an evaluation's images and numbers (stored as ``evaluation.json``)."""

    model: str
    variants: tuple[ModelVariant, ...]
    prompts: tuple[PromptRecord, ...]
    n: int
    seed: int
    spec: AttributeSpec
    classifier: str
    generation: GenerationConfig
    change_threshold: float = DEFAULT_CHANGE_THRESHOLD
    alpha: float = 0.05
    confusion: tuple[tuple[float, ...], ...] | None = None
    clip_model: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "variants", tuple(self.variants))
        object.__setattr__(self, "prompts", tuple(self.prompts))
        if self.n <= 0:
            raise EvaluationError(f"--n must be positive, got {self.n}")
        if self.seed < 0:
            raise EvaluationError(f"--seed must be ≥ 0, got {self.seed}")
        if not self.prompts:
            raise EvaluationError("the prompt set is empty")
        names = [variant.name for variant in self.variants]
        if not names or names[0] != ORIGINAL or len(set(names)) != len(names):
            raise EvaluationError("models must start with the original and have distinct names")
        if not 0.0 <= self.change_threshold <= 1.0:
            raise EvaluationError(f"change threshold must be in [0, 1], got {self.change_threshold}")
        if not 0.0 < self.alpha < 1.0:
            raise EvaluationError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.confusion is not None:
            object.__setattr__(self, "confusion", tuple(tuple(float(x) for x in row) for row in self.confusion))
            check_confusion(np.asarray(self.confusion), self.spec.num_cells)

    @property
    def model_names(self) -> list[str]:
        return [variant.name for variant in self.variants]

    @property
    def concepts(self) -> list[str]:
        """Concepts in order of first appearance in the prompt set."""
        return list(dict.fromkeys(record.concept for record in self.prompts))

    def variant(self, name: str) -> ModelVariant:
        return self.variants[self.model_names.index(name)]

    def seeds(self, prompt_index: int) -> list[int]:
        """Seeds of one prompt: ``s_p + i`` with a fixed seed ``s_p``, else ``seed + p·n + i``."""
        fixed = self.prompts[prompt_index].seed
        base = fixed if fixed is not None else self.seed + prompt_index * self.n
        return [base + i for i in range(self.n)]

    def items(self) -> list[WorkItem]:
        """Every image, in canonical order: model, then prompt, then seed."""
        items = []
        for model in self.model_names:
            for p, record in enumerate(self.prompts):
                for seed in self.seeds(p):
                    items.append(WorkItem(len(items), model, record.concept, record.prompt, p, seed))
        return items

    def batches(self) -> list[list[WorkItem]]:
        """Generation batches: consecutive items of one model, at most ``generation.batch_size`` each."""
        size = self.generation.batch_size
        batches = []
        for _, group in itertools.groupby(self.items(), key=lambda item: item.model):
            items = list(group)
            batches.extend(items[start : start + size] for start in range(0, len(items), size))
        return batches

    def to_dict(self) -> dict:
        """JSON-ready description (the manifest's ``plan``)."""
        return {
            "model": self.model,
            "variants": [variant.to_dict() for variant in self.variants],
            "prompts": [{"prompt": r.prompt, "concept": r.concept, "seed": r.seed} for r in self.prompts],
            "n": self.n,
            "seed": self.seed,
            "spec": self.spec.to_dict(),
            "classifier": self.classifier,
            "generation": self.generation.to_dict(),
            "change_threshold": self.change_threshold,
            "alpha": self.alpha,
            "confusion": None if self.confusion is None else [list(row) for row in self.confusion],
            "clip_model": self.clip_model,
        }


def check_confusion(matrix: np.ndarray, num_cells: int) -> np.ndarray:
    """A K×K row-stochastic matrix ``C[i, j] = P(predicted j | true i)``, or :class:`EvaluationError`."""
    if matrix.shape != (num_cells, num_cells):
        raise EvaluationError(
            f"confusion matrix must be {num_cells}×{num_cells}, got {'×'.join(map(str, matrix.shape))}"
        )
    if not np.all(np.isfinite(matrix)) or np.any(matrix < 0):
        raise EvaluationError("confusion matrix entries must be finite and non-negative")
    if np.any(np.abs(matrix.sum(axis=1) - 1.0) > CONFUSION_ATOL):
        raise EvaluationError("each row of the confusion matrix (true cell) must sum to 1")
    return matrix


def load_confusion(path: Path, spec: AttributeSpec) -> np.ndarray:
    """Read a confusion matrix (rows: true cell, columns: predicted cell, in the spec's cell order).

    JSON: ``[[...], ...]`` or ``{"cells": [phrases], "matrix": [[...], ...]}`` (cells, when given, must be the
    spec's phrases in order). CSV: K rows of K numbers, optionally after a header row of cell phrases.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise EvaluationError(f"cannot read confusion file {path}: {error.strerror or error}") from None
    cells = None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
            if isinstance(data, dict):
                cells, data = data.get("cells"), data.get("matrix")
            matrix = np.asarray(data, dtype=np.float64)
        else:
            rows = [row for row in csv.reader(io.StringIO(text)) if row]
            if rows and not _is_number(rows[0][0]):
                cells, rows = [cell.strip() for cell in rows[0]], rows[1:]
            matrix = np.asarray([[float(x) for x in row] for row in rows], dtype=np.float64)
    except (ValueError, TypeError):
        raise EvaluationError(f"confusion file {path} is not a matrix of numbers") from None
    if cells is not None and list(cells) != spec.phrases:
        raise EvaluationError(f"confusion file {path} names cells {cells}, expected {spec.phrases}")
    return check_confusion(matrix, spec.num_cells)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------------- folder


EVALUATION_FOLDER = FolderKind(
    "evaluation",
    MANIFEST_FILE,
    settings_key="plan",
    legacy=lambda data: isinstance(data, dict) and data.get("format") == FORMAT,
)
"""An evaluation folder; one written before the kind marker is recognised by its manifest's ``format``."""


def is_evaluation_folder(folder: Path) -> bool:
    """Whether ``folder`` is an evaluation folder (by its kind marker, or an earlier version's manifest)."""
    return folder_kind(folder, [EVALUATION_FOLDER]) == EVALUATION_FOLDER.name


def check_folder(folder: Path, plan: EvaluationPlan, resume: bool, force: bool) -> bool:
    """Decide what to do with ``folder`` without writing anything; returns True when work starts afresh.

    The rules of :mod:`mist_debias.core.run_folder`: a missing folder starts afresh; an existing one needs
    ``resume`` (an evaluation folder with the same plan) or ``force`` (an evaluation folder: it is replaced).
    """
    try:
        return check_run_folder(folder, EVALUATION_FOLDER, run_mode(resume, force), plan.to_dict())
    except RunFolderError as error:
        raise EvaluationError(str(error)) from None


def start_folder(folder: Path, plan: EvaluationPlan, fresh: bool) -> None:
    """With ``fresh`` (the verdict of :func:`check_folder`), create the folder atomically with its marker and
    manifest, replacing an evaluation folder; then the image folders of every model."""
    folder = Path(folder)
    if fresh:
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__}
        text = json.dumps({**manifest, "plan": plan.to_dict()}, indent=2)
        create_run_folder(folder, EVALUATION_FOLDER, "force", {MANIFEST_FILE: text})
    else:
        mark_legacy(folder, EVALUATION_FOLDER)
    for model in plan.model_names:
        (folder / IMAGES_DIR / model).mkdir(parents=True, exist_ok=True)


def save_png(image: Image.Image, path: Path) -> None:
    """Write ``image`` as PNG at ``path`` atomically."""
    with atomic_file(path, force=True) as temp:
        image.save(temp, format="PNG")


# ------------------------------------------------------------------------------------------------ generation


@dataclass
class GenerationStats:
    """What one process generated: images, UNet evaluations and seconds."""

    images: int = 0
    skipped: int = 0
    unet_evaluations: int = 0
    seconds: float = 0.0


def generate_batches(
    pipe,
    batches: Sequence[Sequence[WorkItem]],
    edits: Mapping[str, Any],
    folder: Path,
    config: GenerationConfig,
    progress: Progress | None = None,
) -> GenerationStats:
    """Generate every batch with a missing image, with its model's edit applied, and save the missing PNGs.

    ``edits`` maps model name → :class:`~mist_debias.core.edit.Edit` (``None`` for the original). A batch whose
    images all exist is skipped; a batch with some missing is generated whole (so its images are the same as
    in an uninterrupted run) and only the missing files are written.
    """
    folder = Path(folder)
    summary = GenerationStats()
    start = time.perf_counter()
    counter = UNetEvaluationCounter(pipe.unet)
    try:
        for model, group in itertools.groupby(batches, key=lambda batch: batch[0].model):
            todo = []
            for batch in group:
                if all((folder / item.image).is_file() for item in batch):
                    summary.skipped += len(batch)
                    if progress:
                        progress("generate", len(batch))
                else:
                    todo.append(batch)
            if not todo:
                continue
            edit = edits.get(model)
            with edit.applied(pipe) if edit is not None else contextlib.nullcontext():
                for batch in todo:
                    images = generate_images(pipe, [i.prompt for i in batch], [i.seed for i in batch], config)
                    for item, image in zip(batch, images, strict=True):
                        path = folder / item.image
                        if path.is_file():
                            summary.skipped += 1
                        else:
                            save_png(image, path)
                            summary.images += 1
                    if progress:
                        progress("generate", len(batch))
    finally:
        counter.close()
    summary.unet_evaluations = counter.count
    summary.seconds = time.perf_counter() - start
    return summary


# ------------------------------------------------------------------------------------------------ classification


@dataclass(frozen=True)
class ItemResult:
    """One row of the results table."""

    item: WorkItem
    probs: tuple[float, ...]
    valid: bool
    label: int
    pixel_change: float | None = None
    clip_score: float | None = None

    def row(self, phrases: Sequence[str], edited: bool) -> dict:
        """Tidy-table row: model, concept, prompt, prompt index, seed, image, edited, predicted cell, valid,
        pixel change (vs the original's image of the same prompt and seed), CLIP score (when measured) and one
        probability per cell."""
        return {
            "model": self.item.model,
            "concept": self.item.concept,
            "prompt": self.item.prompt,
            "prompt_index": self.item.prompt_index,
            "seed": self.item.seed,
            "image": self.item.image,
            "edited": edited,
            "predicted_cell": phrases[self.label] if self.valid else None,
            "predicted_index": self.label if self.valid else None,
            "valid": self.valid,
            "pixel_change": self.pixel_change,
            "clip_score": self.clip_score,
            "probs": dict(zip(phrases, self.probs, strict=True)),
        }


def pixel_change(first: Image.Image, second: Image.Image) -> float:
    """Mean absolute pixel difference in [0, 1]: ``mean |x − y| / 255`` over all pixels and channels."""
    a = np.asarray(first.convert("RGB"), dtype=np.float64)
    b = np.asarray(second.convert("RGB"), dtype=np.float64)
    if a.shape != b.shape:
        raise EvaluationError(f"cannot compare images of sizes {a.shape} and {b.shape}")
    return float(np.mean(np.abs(a - b)) / 255.0)


def _read_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def classify_chunks(
    classifier: CellClassifier,
    spec: AttributeSpec,
    chunks: Sequence[Sequence[WorkItem]],
    folder: Path,
    progress: Progress | None = None,
    scorer: CLIPScorer | None = None,
) -> list[ItemResult]:
    """Classify the saved images chunk by chunk; edited models' images also get their pixel change, and every
    image its CLIP score against its prompt when a ``scorer`` is given."""
    folder = Path(folder)
    results = []
    for chunk in chunks:
        images = [_read_image(folder / item.image) for item in chunk]
        predictions = classifier.classify(images, spec)
        probs = np.asarray(predictions.probs, dtype=np.float64)
        if probs.shape != (len(chunk), spec.num_cells):
            raise EvaluationError(f"classifier returned probabilities of shape {probs.shape}")
        scores = scorer.score(images, [item.prompt for item in chunk]) if scorer else [None] * len(chunk)
        for row, (item, image) in enumerate(zip(chunk, images, strict=True)):
            change = None
            if item.model != ORIGINAL:
                change = pixel_change(_read_image(folder / image_path(ORIGINAL, item.prompt_index, item.seed)), image)
            results.append(
                ItemResult(
                    item=item,
                    probs=tuple(float(p) for p in probs[row]),
                    valid=bool(predictions.valid[row]),
                    label=int(predictions.labels[row]),
                    pixel_change=change,
                    clip_score=None if scores[row] is None else float(scores[row]),
                )
            )
        if progress:
            progress("classify", len(chunk))
    return results


def chunked(items: Sequence, size: int) -> list[list]:
    """Consecutive chunks of at most ``size`` items."""
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


# ------------------------------------------------------------------------------------------------ metrics


def _distribution(counts: np.ndarray, target: np.ndarray, n_invalid: int, alpha: float) -> Distribution:
    return Distribution.from_counts(np.rint(counts).astype(np.int64), target, n_invalid=n_invalid, alpha=alpha)


def distribution_metrics(results: Sequence[ItemResult], plan: EvaluationPlan) -> list[dict]:
    """Per concept × model: the joint distribution, per-axis marginals, mean probabilities, CLEAM correction.

    ``joint`` is :meth:`Distribution.to_dict` (counts, ratios, simultaneous intervals, Δ, KL);
    ``marginals[axis]`` the same for the axis's marginal counts against the marginal target; ``mean_probs``
    the classifier's mean soft probabilities over valid images; ``cleam`` (with a confusion matrix) the
    corrected joint ratios ``argmin_{p ∈ simplex} ‖Cᵀp − r‖²`` with their Δ and KL.
    """
    spec = plan.spec
    target = spec.target_array
    groups = _group(results)
    entries = []
    for concept in plan.concepts:
        for variant in plan.variants:
            rows = groups.get((variant.name, concept), [])
            valid = [r for r in rows if r.valid]
            counts = np.bincount([r.label for r in valid], minlength=spec.num_cells).astype(np.float64)
            n_invalid = len(rows) - len(valid)
            joint = _distribution(counts, target, n_invalid, plan.alpha)
            entry: dict[str, Any] = {
                "concept": concept,
                "model": variant.name,
                "edited": variant.edits(concept),
                "n_images": len(rows),
                "joint": joint.to_dict(),
                "marginals": {
                    axis.name: _distribution(
                        spec.marginalize(counts, axis.name), spec.marginal_target(axis.name), n_invalid, plan.alpha
                    ).to_dict()
                    for axis in spec.axes
                },
                "clip_score_mean": _mean_or_none([r.clip_score for r in rows]),
                "mean_probs": (
                    np.mean([r.probs for r in valid], axis=0).tolist() if valid else [None] * spec.num_cells
                ),
                "cleam": None,
            }
            if plan.confusion is not None and valid:
                corrected = cleam_correct(np.asarray(joint.ratios), np.asarray(plan.confusion))
                entry["cleam"] = {
                    "ratios": corrected.tolist(),
                    "deviation": deviation_ratio(corrected, target),
                    "kl": _finite_or_none(kl_divergence(corrected, target)),
                }
            entries.append(entry)
    return entries


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    """Mean of the values, or ``None`` when any is missing (or there are none)."""
    if not values or any(value is None for value in values):
        return None
    return float(np.mean(values))


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def preservation_metrics(results: Sequence[ItemResult], plan: EvaluationPlan) -> list[dict]:
    """Per edited model × concept: same-seed pixel change and whether the distribution moved.

    Entries for concepts the model edited are included (flag ``edited``) for comparison; preservation
    concerns the others. See the module docstring for ``outside_interval`` and the paired test ``moved``.
    """
    spec = plan.spec
    original = {r.item.index % _per_model(plan): r for r in results if r.item.model == ORIGINAL}
    groups = _group(results)
    entries = []
    for variant in plan.variants[1:]:
        for concept in plan.concepts:
            rows = groups.get((variant.name, concept), [])
            pairs = [(original[r.item.index % _per_model(plan)], r) for r in rows]
            changes = np.array([r.pixel_change for r in rows], dtype=np.float64)
            both = [(a, b) for a, b in pairs if a.valid and b.valid]
            before = np.array([a.label for a, _ in both], dtype=np.int64)
            after = np.array([b.label for _, b in both], dtype=np.int64)
            before_dist = _distribution(
                np.bincount([a.label for a, _ in pairs if a.valid], minlength=spec.num_cells),
                spec.target_array,
                0,
                plan.alpha,
            )
            after_counts = np.bincount([b.label for _, b in pairs if b.valid], minlength=spec.num_cells)
            after_ratios = after_counts / after_counts.sum() if after_counts.sum() else np.full(spec.num_cells, np.nan)
            below = after_ratios < np.asarray(before_dist.lower) - INTERVAL_SLACK
            above = after_ratios > np.asarray(before_dist.upper) + INTERVAL_SLACK
            outside = bool(np.any(below | above))
            p_values, p_adjusted = paired_cell_test(before, after, spec.num_cells)
            entries.append(
                {
                    "model": variant.name,
                    "concept": concept,
                    "edited": variant.edits(concept),
                    "n_pairs": len(pairs),
                    "n_valid_pairs": len(both),
                    "pixel_change_mean": float(changes.mean()) if len(changes) else None,
                    "pixel_change_max": float(changes.max()) if len(changes) else None,
                    "fraction_changed": float(np.mean(changes > plan.change_threshold)) if len(changes) else None,
                    "change_threshold": plan.change_threshold,
                    "label_flips": int(np.sum(before != after)),
                    "clip_score_change_mean": _mean_or_none(
                        [None if a.clip_score is None else b.clip_score - a.clip_score for a, b in pairs]
                    ),
                    "max_ratio_change": _finite_or_none(
                        float(np.max(np.abs(after_ratios - np.asarray(before_dist.ratios))))
                    ),
                    "outside_interval": outside,
                    "mcnemar_p": p_values,
                    "mcnemar_p_adjusted": p_adjusted,
                    "moved": p_adjusted < plan.alpha,
                }
            )
    return entries


def _group(results: Sequence[ItemResult]) -> dict[tuple[str, str], list[ItemResult]]:
    """Results by (model, concept), each list in canonical order."""
    groups: dict[tuple[str, str], list[ItemResult]] = {}
    for result in results:
        groups.setdefault((result.item.model, result.item.concept), []).append(result)
    return groups


def _per_model(plan: EvaluationPlan) -> int:
    return plan.n * len(plan.prompts)


# ------------------------------------------------------------------------------------------------ outputs


def write_results(folder: Path, results: Sequence[ItemResult], plan: EvaluationPlan) -> list[dict]:
    """Write ``results.csv`` (one probability column ``p[<cell>]`` per cell) and ``results.json``."""
    phrases = plan.spec.phrases
    rows = [r.row(phrases, plan.variant(r.item.model).edits(r.item.concept)) for r in results]
    write_text_atomic(Path(folder) / RESULTS_JSON, json.dumps(rows, indent=1))
    buffer = io.StringIO()
    columns = [key for key in rows[0] if key != "probs"] + [f"p[{phrase}]" for phrase in phrases]
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        flat = [row[key] for key in columns[: -len(phrases)]] + [row["probs"][phrase] for phrase in phrases]
        writer.writerow(["" if value is None else value for value in flat])
    write_text_atomic(Path(folder) / RESULTS_CSV, buffer.getvalue())
    return rows


@dataclass
class EvaluationOutcome:
    """What :func:`run_evaluation` returns on the main process (``None`` fields on the others)."""

    folder: Path
    rows: list[dict] | None = None
    metrics: dict | None = None
    generated: GenerationStats = field(default_factory=GenerationStats)


def run_evaluation(
    plan: EvaluationPlan,
    folder: Path,
    pipe,
    edits: Mapping[str, Any],
    classifier: CellClassifier,
    processes: Processes | None = None,
    fresh: bool = True,
    progress: Progress | None = None,
    scorer: CLIPScorer | None = None,
) -> EvaluationOutcome:
    """Generate, classify and measure; every process calls this with the same plan.

    ``fresh`` comes from :func:`check_folder` (called on every process before anything is written). Each
    process generates and classifies its share; the main process writes the table and ``metrics.json``.
    """
    processes = processes or Processes()
    folder = Path(folder)
    if processes.is_main:
        start_folder(folder, plan, fresh)
    processes.barrier()
    started = time.perf_counter()
    generated = generate_batches(
        pipe, processes.share(plan.batches()), edits, folder, plan.generation, progress=progress
    )
    processes.barrier()
    classify_started = time.perf_counter()
    chunks = processes.share(chunked(plan.items(), CLASSIFY_CHUNK))
    mine = classify_chunks(classifier, plan.spec, chunks, folder, progress=progress, scorer=scorer)
    classify_seconds = time.perf_counter() - classify_started
    results = processes.gather(mine)
    per_process = processes.gather(
        [{"process": processes.index, **generated.__dict__, "classify_seconds": classify_seconds}]
    )
    outcome = EvaluationOutcome(folder=folder, generated=generated)
    if processes.is_main:
        results = sorted(results, key=lambda r: r.item.index)
        if [r.item.index for r in results] != list(range(len(plan.items()))):
            raise EvaluationError("the processes' results do not cover every image exactly once")
        outcome.rows = write_results(folder, results, plan)
        outcome.metrics = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "models": plan.model_names,
            "concepts": plan.concepts,
            "cells": plan.spec.phrases,
            "axes": [{"name": axis.name, "values": list(axis.values)} for axis in plan.spec.axes],
            "target": list(plan.spec.target),
            "alpha": plan.alpha,
            "distributions": distribution_metrics(results, plan),
            "preservation": preservation_metrics(results, plan),
            "run": {
                "processes": processes.count,
                "wall_time_s": time.perf_counter() - started,
                "per_process": per_process,
            },
        }
        write_text_atomic(folder / METRICS_FILE, json.dumps(outcome.metrics, indent=2, allow_nan=False))
    processes.barrier()
    return outcome
