"""The debias loop: controller proposals → closed-form edits → images → classifier → observations.

One :class:`~mist_debias.core.targets.EditProblem` holds every concept of the run (one shared factor ``R``). Each
*round* the controller proposes, per unfinished concept, attribute weights, a mode and a number of images:

- ``absolute``: the edit is solved from the ORIGINAL weights ``W₀`` with each concept's current weights (the
  proposal's, or the concept's last reported weights when it has no proposal this round);
- ``increment`` (official MIST): the proposals are solved from the current compounded ``W = W₀ + L R`` with
  zero weights for the other concepts, and the result is added to ``L``.

The edit is applied, each proposal's concept prompt is generated on fresh seeds, classified, and reported back.
After every round the run folder (:class:`RunFolder`) gets the log, the edit of the rounds so far and their
summary, each replaced atomically: a run killed at any moment and resumed replays the logged observations into
a fresh controller (controllers are deterministic functions of their observations), rebuilds the compounded
edit from the logged increments, and continues with the same seeds, so it ends with the same edit as an
uninterrupted run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline

from mist_debias import __version__
from mist_debias.core.edit import Edit, fingerprint
from mist_debias.core.errors import MistError
from mist_debias.core.generate import GenerationConfig, UNetEvaluationCounter, generate_images
from mist_debias.core.layers import Projection, find_cross_attention_projections
from mist_debias.core.run_folder import FolderKind, folder_kind, read_json, read_jsonl, write_json, write_jsonl
from mist_debias.core.solve import LowRankUpdate
from mist_debias.core.spec import AttributeSpec, Axis
from mist_debias.core.targets import ConceptPrompts, EditProblem
from mist_debias.loop.control import CONTROLLERS, ConceptStatus, ConceptTarget, Controller, Proposal
from mist_debias.loop.control.base import encode_labels
from mist_debias.loop.other_axes import axis_shifts, unedited_axes
from mist_debias.measure.classifiers.base import CellClassifier, classify_concept
from mist_debias.measure.metrics import Distribution, wilson_interval

SEEDS_PER_CONCEPT = 10_000_000
VALIDATION_SEED_OFFSET = 5_000_000
SEED_MODULUS = 2**32
"""torch's CPU generator keeps the low 32 bits of a seed: image seeds are taken modulo 2³²."""
RUN_SEED_STRIDE = 2_654_435_769
"""⌊2³²/φ⌋ (odd): run seeds translate the seed layout along a golden-ratio (Weyl) sequence modulo 2³²."""


def image_seeds(run_seed: int, concept_index: int, indices: Iterable[int]) -> list[int]:
    """Image seeds of a concept's seed indices: ``(run_seed · S + concept_index · 10⁷ + i) mod 2³²``, S = ⌊2³²/φ⌋.

    Within a run each concept owns 10⁷ consecutive seeds (the loop's from index 0, the validation's from
    :data:`VALIDATION_SEED_OFFSET`). Another run seed translates the whole layout by ``Δs · S mod 2³²``; by the
    golden ratio's three-distance spacing that translation is at least 2.1·10⁷ seeds from 0 for ``|Δs| ≤ 100``
    (2.4·10⁸ for ``|Δs| ≤ 10``), so runs of up to two concepts whose seeds differ by at most 100 share no image
    seed and are independent replicates. Run seed 0 is the layout itself.
    """
    base = run_seed * RUN_SEED_STRIDE + concept_index * SEEDS_PER_CONCEPT
    return [(base + index) % SEED_MODULUS for index in indices]


class RunError(MistError):
    """A run folder that cannot be used (not a run, or made for another model or spec)."""


@dataclass(frozen=True)
class DebiasConcept:
    """One concept of a run: its name, attribute spec, and the edit prompts (concept + one per cell).

    The concept prompt is also what the loop generates to measure the concept.
    """

    name: str
    spec: AttributeSpec
    prompts: ConceptPrompts


DEBIAS_FOLDER = FolderKind(
    "debias",
    "config.json",
    settings_key="run",
    legacy=lambda data: isinstance(data, dict) and isinstance(data.get("run"), dict) and "model_fingerprint" in data,
)
"""A debias run folder; one written before the kind marker is recognised by its ``config.json`` (the run config
under ``run``, and the base model's fingerprint)."""


class RunFolder:
    """The files of a run: ``run.json`` (kind marker), ``config.json``, ``log.jsonl``, ``edit.safetensors``,
    ``summary.json`` (see :mod:`mist_debias.core.run_folder`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.config = self.root / DEBIAS_FOLDER.settings_file
        self.log = self.root / "log.jsonl"
        self.edit = self.root / "edit.safetensors"
        self.summary = self.root / "summary.json"

    def is_run(self) -> bool:
        return folder_kind(self.root, [DEBIAS_FOLDER]) == DEBIAS_FOLDER.name

    def read_config(self) -> dict[str, Any]:
        config = read_json(self.config)
        if not isinstance(config, dict):
            raise RunError(f"{self.config} is not a run config")
        return config

    def read_log(self) -> list[dict[str, Any]]:
        return read_jsonl(self.log) if self.log.is_file() else []

    def write_log(self, entries: Sequence[dict[str, Any]]) -> None:
        write_jsonl(self.log, entries)

    def write_result(self, edit: Edit, summary: dict[str, Any]) -> None:
        """Replace the edit and the summary (each atomically)."""
        edit.save(self.edit, force=True)
        write_json(self.summary, summary)


def build_controller(
    name: str,
    concepts: Sequence[DebiasConcept],
    tolerance: float,
    budget: int | None,
    options,
    couplings: Sequence[np.ndarray] | None = None,
):
    """A controller of ``name`` for the run's concepts (with their cells' edit couplings, when given,
    :meth:`~mist_debias.core.targets.EditProblem.coupling`); bad options, or a budget smaller than the first
    round of images, raise :class:`MistError`."""
    couplings = couplings if couplings is not None else [None] * len(concepts)
    targets = [
        ConceptTarget(
            c.name, tuple(c.spec.target), tolerance, None if coupling is None else tuple(map(tuple, coupling))
        )
        for c, coupling in zip(concepts, couplings, strict=True)
    ]
    try:
        controller = CONTROLLERS[name](targets, budget=budget, **dict(options))
        unlimited = None if budget is None else CONTROLLERS[name](targets, **dict(options))
    except (TypeError, ValueError) as error:
        raise MistError(f"controller {name!r}: {error}") from None
    if unlimited is not None:
        first_round = sum(p.n_images for p in unlimited.propose())
        if budget < first_round:
            raise MistError(
                f"budget {budget} cannot hold the first round of images ({first_round}: the unedited model,"
                " measured for every concept)"
            )
    return controller


def kept_share(kept: int, n: int, alpha: float = 0.05) -> dict[str, float | int]:
    """The share of ``n`` classified images that still show the concept, with its Wilson interval."""
    lower, upper = wilson_interval(kept, n, alpha)
    return {
        "kept": kept,
        "n": n,
        "share": kept / n if n else float("nan"),
        "lower": float(lower),
        "upper": float(upper),
    }


@dataclass
class Validation:
    """The final edit measured on fresh seeds: per concept its distribution, and how the edit moved the axes the
    concept was not balanced over; ``graded_by`` says which classifier graded (``grader``: an independent one,
    ``driver``: the one that drove the loop, ``benchmark``: the benchmark's own measurement)."""

    distributions: dict[str, Distribution] = field(default_factory=dict)
    other_axes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    kept: dict[str, tuple[int, int]] = field(default_factory=dict)
    graded_by: str = "driver"


class DebiasRun:
    """Drives one controller over the concepts of a run and keeps the run folder up to date."""

    def __init__(
        self,
        pipe: DiffusionPipeline,
        concepts: Sequence[DebiasConcept],
        controller: Controller,
        classifier: CellClassifier,
        generation: GenerationConfig,
        problem: EditProblem,
        folder: RunFolder,
        seed: int = 0,
        edit_info: dict[str, Any] | None = None,
        grader: CellClassifier | None = None,
        observable_axes: Sequence[Axis] = (),
    ) -> None:
        self.pipe = pipe
        self.concepts = {c.name: c for c in concepts}
        self.order = [c.name for c in concepts]
        self.controller = controller
        self.classifier = classifier
        self.grader = grader
        self.observable_axes = tuple(observable_axes)
        self.generation = generation
        self.problem = problem
        self.folder = folder
        self.seed = seed
        self.edit_info = edit_info or {}
        self.projections: list[Projection] = find_cross_attention_projections(pipe.unet)
        self.original = {p.name: p.module.weight.detach().cpu().to(torch.float64) for p in self.projections}
        self.base_fingerprint = fingerprint(self.projections)
        self.log: list[dict[str, Any]] = []
        self.compounded: LowRankUpdate | None = None
        self.counter = UNetEvaluationCounter(pipe.unet)
        self.unet_evaluations = 0
        self.wall_time = 0.0

    # ------------------------------------------------------------------------------------------ state

    def _images_of(self, concept: str) -> int:
        return sum(entry["n_images"] for entry in self.log if entry["concept"] == concept)

    def _seeds(self, concept: str, count: int, offset: int = 0) -> list[int]:
        start = offset + self._images_of(concept)
        return image_seeds(self.seed, self.order.index(concept), range(start, start + count))

    def _proposal_seeds(self, proposal: Proposal) -> list[int]:
        """The seeds a proposal names (indices into its concept's seed space), else fresh ones."""
        named = proposal.seeds()
        if named is None:
            return self._seeds(proposal.concept, proposal.n_images)
        return image_seeds(self.seed, self.order.index(proposal.concept), named)

    def _weights(self, proposals: dict[str, Proposal]) -> list[list[float]]:
        """Per-concept weights of this round's edit (absolute mode)."""
        weights = []
        for name in self.order:
            if name in proposals:
                weights.append([float(w) for w in proposals[name].weights])
            elif self.controller.concept_images(name):
                weights.append([float(w) for w in self.controller.status(name).weights])
            else:
                weights.append([0.0] * self.concepts[name].spec.num_cells)
        return weights

    def _round_update(self, proposals: dict[str, Proposal]) -> LowRankUpdate:
        """The update ``W − W₀ = L R`` under which this round's images are generated."""
        modes = {p.mode for p in proposals.values()}
        if modes == {"absolute"}:
            return self.problem.solve(self.original, self._weights(proposals))
        increments = [
            [float(w) for w in proposals[name].weights] if name in proposals else [0.0] * c.spec.num_cells
            for name, c in self.concepts.items()
        ]
        current = self.original
        if self.compounded is not None:
            current = {name: w + self.compounded.delta(name) for name, w in self.original.items()}
        step = self.problem.solve(current, increments)
        return step if self.compounded is None else self.compounded + step

    def _edit(self, update: LowRankUpdate) -> Edit:
        return Edit(update.right, dict(update.left), self.base_fingerprint, self.edit_info)

    # --------------------------------------------------------------------------------------- resume

    def resume(self, entries: Sequence[dict[str, Any]]) -> None:
        """Replay logged rounds: observations into the controller, increments into the compounded edit."""
        rounds: dict[int, list[dict[str, Any]]] = {}
        for entry in entries:
            rounds.setdefault(entry["round"], []).append(entry)
        for round_entries in rounds.values():
            proposals = {
                e["concept"]: Proposal(e["concept"], np.asarray(e["weights"]), e["mode"], e["n_images"])
                for e in round_entries
            }
            if {p.mode for p in proposals.values()} == {"increment"}:
                self.compounded = self._round_update(proposals)
            for entry in round_entries:
                self.controller.observe_logged(entry)
                self.log.append(entry)
        if self.log:
            self.unet_evaluations = self.log[-1]["unet_evaluations"]
            self.wall_time = self.log[-1]["wall_time_s"]

    # ----------------------------------------------------------------------------------------- loop

    def _measure(self, concept: str, seeds: list[int]) -> tuple[np.ndarray, int]:
        counts, n_invalid, _, _ = self._measure_kept(concept, seeds)
        return counts, n_invalid

    def _measure_kept(self, concept: str, seeds: list[int]) -> tuple[np.ndarray, int, int | None, tuple[int, ...]]:
        """Counts per cell, images not classified, valid images still showing the concept (None when the
        classifier does not tell), and every image's label (:func:`~mist_debias.loop.control.base.encode_labels`)."""
        prompt = self.concepts[concept].prompts.prompt
        spec = self.concepts[concept].spec
        images = generate_images(self.pipe, [prompt] * len(seeds), seeds, self.generation)
        predictions = classify_concept(self.classifier, images, spec, concept)
        labels = encode_labels(predictions.labels, predictions.kept, spec.num_cells)
        return predictions.counts(), int((~predictions.valid).sum()), predictions.kept_count(), labels

    def run(self, on_round: Callable[[DebiasRun], None] | None = None) -> None:
        """Run rounds until the controller has nothing left to propose (then call :meth:`finish`)."""
        round_index = 1 + max((entry["round"] for entry in self.log), default=-1)
        while proposals := self.controller.propose():
            start = time.perf_counter()
            by_concept = {p.concept: p for p in proposals}
            update = self._round_update(by_concept)
            entries = []
            with self._edit(update).applied(self.pipe):
                for proposal in proposals:
                    self.counter.count = 0
                    seeds = self._proposal_seeds(proposal)
                    counts, n_invalid, kept, labels = self._measure_kept(proposal.concept, seeds)
                    self.unet_evaluations += self.counter.count
                    entries.append((proposal, seeds, counts, n_invalid, kept, labels))
            if {p.mode for p in proposals} == {"increment"}:
                self.compounded = update
            self.wall_time += time.perf_counter() - start
            for proposal, seeds, counts, n_invalid, kept, labels in entries:
                self.controller.observe_labels(proposal, labels, measures_kept=kept is not None)
                entry = self._entry(round_index, proposal, seeds, counts, n_invalid)
                entry.update(seed_start=proposal.seed_start, kept=kept, labels=list(labels))
                if proposal.seed_indices is not None:
                    entry["seed_indices"] = list(proposal.seed_indices)
                self.log.append(entry)
            self.folder.write_log(self.log)
            self.folder.write_result(self.final_edit(), self.summary())
            round_index += 1
            if on_round:
                on_round(self)

    def _entry(self, round_index: int, proposal: Proposal, seeds, counts, n_invalid: int) -> dict[str, Any]:
        spec = self.concepts[proposal.concept].spec
        batch = Distribution.from_counts(counts, spec.target, n_invalid=n_invalid)
        return {
            "round": round_index,
            "iteration": sum(1 for e in self.log if e["concept"] == proposal.concept),
            "concept": proposal.concept,
            "mode": proposal.mode,
            "weights": [float(w) for w in proposal.weights],
            "counts": [int(c) for c in counts],
            "n_invalid": int(n_invalid),
            "n_images": int(proposal.n_images),
            "seeds": [seeds[0], seeds[-1]],
            "ratios": list(batch.ratios),
            "lower": list(batch.lower),
            "upper": list(batch.upper),
            "images_total": self.controller.images_used,
            "unet_evaluations": self.unet_evaluations,
            "wall_time_s": round(self.wall_time, 3),
        }

    # --------------------------------------------------------------------------------------- finish

    def final_update(self) -> LowRankUpdate:
        """The run's result: compounded increments, or every concept's reported weights from ``W₀``."""
        if self.controller.mode == "increment" and self.compounded is not None:
            return self.compounded
        weights = [[float(w) for w in self.controller.status(name).weights] for name in self.order]
        return self.problem.solve(self.original, weights)

    def final_edit(self) -> Edit:
        info = dict(self.edit_info)
        info["concepts"] = [
            {
                "name": name,
                "prompt": self.concepts[name].prompts.prompt,
                "attributes": list(self.concepts[name].prompts.attributes),
                "weights": [float(w) for w in self.controller.status(name).weights],
                "spec": self.concepts[name].spec.to_dict(),
            }
            for name in self.order
        ]
        info["controller"] = self.controller.to_dict()
        update = self.final_update()
        return Edit(update.right, dict(update.left), self.base_fingerprint, info)

    def validate(self, n: int, edit: Edit | None = None) -> Validation:
        """Every concept under the final edit on ``n`` fresh seeds (never used by the loop), graded by the run's
        grader (an independent classifier) or, without one, by the classifier that drove the loop; and, where the
        grader reads axes a concept was not balanced over (:attr:`observable_axes`), how the edit moved them on
        the same seeds (:func:`~mist_debias.loop.other_axes.axis_shifts`)."""
        grader = self.grader or self.classifier
        validation = Validation(graded_by="grader" if self.grader is not None else "driver")
        for name in self.order:
            spec = self.concepts[name].spec
            prompts = [self.concepts[name].prompts.prompt] * n
            seeds = self._seeds(name, n, offset=VALIDATION_SEED_OFFSET)
            with (edit or self.final_edit()).applied(self.pipe):
                edited = generate_images(self.pipe, prompts, seeds, self.generation)
            predictions = classify_concept(grader, edited, spec, name)
            validation.distributions[name] = Distribution.from_counts(
                predictions.counts(), spec.target, n_invalid=int((~predictions.valid).sum())
            )
            if predictions.kept is not None:
                validation.kept[name] = (predictions.kept_count(), int(predictions.valid.sum()))
            others = unedited_axes(spec, self.observable_axes)
            if others:
                original = generate_images(self.pipe, prompts, seeds, self.generation)
                validation.other_axes[name] = [s.to_dict() for s in axis_shifts(grader, original, edited, others)]
        return validation

    def summary(self, validation: Validation | None = None) -> dict[str, Any]:
        concepts = []
        for name in self.order:
            status: ConceptStatus = self.controller.status(name)
            spec = self.concepts[name].spec
            first = next((e for e in self.log if e["concept"] == name), None)
            before = None
            if first is not None and not any(first["weights"]):
                before = Distribution.from_counts(first["counts"], spec.target, n_invalid=first["n_invalid"])
            record = {
                "name": name,
                "prompt": self.concepts[name].prompts.prompt,
                "cells": spec.phrases,
                "target": list(spec.target),
                "before": None if before is None else before.to_dict(),
                "after": None if status.pooled is None else status.pooled.to_dict(),
                "converged": status.converged,
                "reason": status.reason,
                "images_used": status.images_used,
                "iterations": status.iterations,
                "weights": [float(w) for w in status.weights],
                "status": status.to_dict(),
            }
            if validation is not None and name in validation.distributions:
                record["after_fresh_seeds"] = validation.distributions[name].to_dict()
                record["graded_by"] = validation.graded_by
            if validation is not None and name in validation.other_axes:
                record["other_axes"] = validation.other_axes[name]
            kept = {}
            if first is not None and not any(first["weights"]) and first.get("kept") is not None:
                kept["before"] = kept_share(first["kept"], first["n_images"] - first["n_invalid"])
            if validation is not None and name in validation.kept:
                kept["after_fresh_seeds"] = kept_share(*validation.kept[name])
            if kept:
                record["kept"] = kept
            if spec.axes:
                record["axes"] = [{"name": axis.name, "values": list(axis.values)} for axis in spec.axes]
            concepts.append(record)
        return {
            "concepts": concepts,
            "images_total": self.controller.images_used,
            "unet_evaluations": self.unet_evaluations,
            "wall_time_s": round(self.wall_time, 3),
            "preserved_concepts": list(self.problem.preserve_prompts),
            "controller": self.controller.to_dict(),
            "library_version": __version__,
        }

    def finish(
        self, validate: int = 0, measure: Callable[[Edit], dict[str, Distribution]] | None = None
    ) -> dict[str, Any]:
        """Write the final edit and the summary; return the summary.

        The summary's ``after_fresh_seeds`` is the final edit measured on fresh seeds: ``validate`` images per
        concept by the run's grader (:meth:`validate`), or ``measure(edit)`` when given (the benchmark
        measures with its own seeds and oracle).
        """
        edit = self.final_edit()
        validation = None
        if measure is not None:
            validation = Validation(measure(edit), graded_by="benchmark")
        elif validate > 0:
            validation = self.validate(validate, edit)
        summary = self.summary(validation)
        self.folder.write_result(edit, summary)
        return summary

    def close(self) -> None:
        self.counter.close()
