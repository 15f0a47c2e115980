"""The contract between the debias loop and its feedback controllers.

One controller drives every concept of a run. The loop repeats::

    while proposals := controller.propose():
        for p in proposals:
            seeds = p.seeds() or the loop's own fresh seeds
            images = generate(edit built from p.weights as p.mode says, p.concept, seeds)
            counts, n_invalid, kept = classify(images)
            controller.observe(p.concept, p.weights, counts, n_invalid, kept, p.seed_start)

A controller may name the seeds (``seed_start``: the proposal's images use seed indices
``seed_start, …, seed_start + n_images − 1`` of the concept's seed space). Naming seeds lets a controller
measure the same seeds at several weights (common random numbers: the difference between two weights is
then far less noisy than between two independent batches) and keep other seeds fresh for a certificate.
``kept`` is the number of valid images that still show the concept (None when the classifier cannot tell).
A proposal may also name any set of seed indices (``seed_indices``), and the loop then reports every image's
label in seed order (``labels``, :func:`encode_labels`): a controller that has seen the same seeds at other
weights can then ask only for the seeds whose cell it cannot infer.

``mode`` tells the loop how to turn a proposal's weights into an edit:

- ``"absolute"``: the weights are solved from the ORIGINAL model weights. The loop builds
  ``v* = W c_s + Σ_j w_j ‖W c_s‖ u_j`` from the unedited ``W`` (the result is reproducible from the
  weights alone; no state compounds).
- ``"increment"``: the official MIST procedure. The weights are applied on top of the current,
  already-edited W, and the result becomes the new current W (edits compound).

A controller is a deterministic function of its configuration (:meth:`Controller.to_dict`) and the
ordered sequence of observations: :meth:`Controller.replay` rebuilds it exactly from a log, which is how a
killed run resumes. ``propose`` never changes the state, so calling it twice gives the same answer.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mist_debias.measure.metrics import Distribution

MODES = ("absolute", "increment")


@dataclass(frozen=True)
class ConceptTarget:
    """One concept to balance: its name, the target distribution over its K cells, the tolerance ε and, when
    known, the ``coupling`` of its cells' edit directions (K×K correlations,
    :meth:`~mist_debias.core.targets.EditProblem.coupling`; the identity when not given)."""

    name: str
    target: tuple[float, ...]
    tolerance: float = 0.05
    coupling: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        target = np.asarray(self.target, dtype=np.float64)
        if target.ndim != 1 or len(target) < 2:
            raise ValueError(f"concept {self.name!r}: a target needs at least 2 cells")
        if np.any(target < 0) or abs(target.sum() - 1.0) > 1e-6:
            raise ValueError(f"concept {self.name!r}: target must be non-negative and sum to 1")
        if not 0.0 < self.tolerance < 0.5:
            raise ValueError(f"concept {self.name!r}: tolerance must lie in (0, 0.5), got {self.tolerance}")
        object.__setattr__(self, "target", tuple(float(x) for x in target))
        if self.coupling is not None:
            coupling = np.asarray(self.coupling, dtype=np.float64)
            if coupling.shape != (len(target),) * 2 or not np.all(np.isfinite(coupling)):
                raise ValueError(f"concept {self.name!r}: coupling must be a finite {len(target)}×{len(target)} matrix")
            if not np.allclose(coupling, coupling.T, atol=1e-9) or np.linalg.eigvalsh(coupling)[0] < -1e-9:
                raise ValueError(f"concept {self.name!r}: coupling must be symmetric positive semi-definite")
            object.__setattr__(self, "coupling", tuple(tuple(float(x) for x in row) for row in coupling))

    @property
    def num_cells(self) -> int:
        return len(self.target)

    @property
    def target_array(self) -> np.ndarray:
        return np.asarray(self.target, dtype=np.float64)

    def to_dict(self) -> dict:
        data = {"name": self.name, "target": list(self.target), "tolerance": self.tolerance}
        if self.coupling is not None:
            data["coupling"] = [list(row) for row in self.coupling]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ConceptTarget:
        """The inverse of :meth:`to_dict` (the coupling included)."""
        coupling = data.get("coupling")
        return cls(
            data["name"],
            tuple(data["target"]),
            data["tolerance"],
            None if coupling is None else tuple(tuple(row) for row in coupling),
        )


def encode_labels(cells, kept=None, num_cells: int | None = None) -> tuple[int, ...]:
    """One integer per image: its cell j (``0 ≤ j < K``) when it shows the concept (or nobody can tell),
    ``K + j`` when it falls in cell j but no longer shows the concept, ``−1`` when it could not be classified."""
    cells = np.asarray(cells, dtype=np.int64)
    if kept is None:
        return tuple(int(c) for c in cells)
    if num_cells is None:
        raise ValueError("num_cells is needed to encode labels with kept")
    lost = (cells >= 0) & ~np.asarray(kept, dtype=bool)
    return tuple(int(c) for c in np.where(lost, cells + num_cells, cells))


def decode_labels(labels, num_cells: int) -> tuple[np.ndarray, int, int]:
    """(per-cell counts over the valid images, images not classified, valid images still showing the concept)
    from :func:`encode_labels`' codes."""
    labels = np.asarray(labels, dtype=np.int64)
    valid = labels >= 0
    cells = labels[valid] % num_cells
    return np.bincount(cells, minlength=num_cells), int((~valid).sum()), int(np.sum(labels[valid] < num_cells))


def _named_seeds(seed_indices: tuple[int, ...] | None, seed_start: int | None, n_images: int) -> Sequence[int] | None:
    """The listed seeds, else the range of ``n_images`` from ``seed_start``, else None (none named)."""
    if seed_indices is not None:
        return seed_indices
    return None if seed_start is None else range(seed_start, seed_start + n_images)


@dataclass(frozen=True)
class Proposal:
    """Generate ``n_images`` of ``concept`` with the edit given by ``weights`` (length K) and ``mode``.

    ``seed_start``: when not None, the images use the seed indices ``seed_start … seed_start + n_images − 1``
    of the concept's seed space; ``seed_indices``: any named seed indices instead (then ``seed_start`` is their
    first); neither lets the loop pick fresh seeds.
    """

    concept: str
    weights: np.ndarray
    mode: str
    n_images: int
    seed_start: int | None = None
    seed_indices: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.seed_indices is not None:
            if len(self.seed_indices) != self.n_images or not self.seed_indices:
                raise ValueError("seed_indices must name n_images seeds")
            object.__setattr__(self, "seed_indices", tuple(int(s) for s in self.seed_indices))
            object.__setattr__(self, "seed_start", self.seed_indices[0])

    def seeds(self) -> Sequence[int] | None:
        """The named seed indices, or None."""
        return _named_seeds(self.seed_indices, self.seed_start, self.n_images)


@dataclass(frozen=True)
class Observation:
    """What the loop reports back: the classifier's hard counts for the images made at ``weights``.

    ``kept``: how many of the valid images still show the concept (None: not measured). ``seed_start``: the
    first seed index when the proposal named its seeds (None otherwise); ``seed_indices``: the seeds, when the
    proposal named them as a list; ``labels``: every image's :func:`encode_labels` code in seed order, when
    the loop reports them.
    """

    concept: str
    weights: tuple[float, ...]
    counts: tuple[int, ...]
    n_invalid: int = 0
    kept: int | None = None
    seed_start: int | None = None
    seed_indices: tuple[int, ...] | None = None
    labels: tuple[int, ...] | None = None

    def seeds(self) -> Sequence[int] | None:
        """The named seed indices, or None."""
        return _named_seeds(self.seed_indices, self.seed_start, self.n_images)

    @property
    def n_images(self) -> int:
        return int(sum(self.counts)) + self.n_invalid

    def to_dict(self) -> dict:
        data = {
            "concept": self.concept,
            "weights": list(self.weights),
            "counts": list(self.counts),
            "n_invalid": self.n_invalid,
        }
        if self.kept is not None:
            data["kept"] = self.kept
        if self.seed_start is not None:
            data["seed_start"] = self.seed_start
        if self.seed_indices is not None:
            data["seed_indices"] = list(self.seed_indices)
        if self.labels is not None:
            data["labels"] = list(self.labels)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Observation:
        kept, seed_start = data.get("kept"), data.get("seed_start")
        indices, labels = data.get("seed_indices"), data.get("labels")
        return cls(
            data["concept"],
            tuple(float(x) for x in data["weights"]),
            tuple(int(x) for x in data["counts"]),
            int(data.get("n_invalid", 0)),
            None if kept is None else int(kept),
            None if seed_start is None else int(seed_start),
            None if indices is None else tuple(int(x) for x in indices),
            None if labels is None else tuple(int(x) for x in labels),
        )


@dataclass(frozen=True)
class ConceptStatus:
    """Where one concept stands.

    ``weights``: for absolute controllers the weights to build the final edit from (the certified ones
    when converged, otherwise those whose pooled estimate is closest to target); for increment
    controllers the sum of the increments applied so far (informational: the compounded W is the edit).
    ``last``: the latest batch alone (fixed-n simultaneous Wilson intervals). ``pooled``: all images at
    ``weights`` (same kind of intervals; a controller that certifies on its own images may report those with
    the certificate's intervals instead, saying so in the distribution's ``method``).
    ``certificate_lower/upper``: the intervals at level ``1 − certificate_alpha`` on which convergence is
    decided (None when the controller decides on point estimates); ``certificate_method`` says which kind of
    interval they are.
    ``kept``/``kept_unedited``: (images still showing the concept, valid images) at ``weights`` and at the
    unedited model, when the classifier measures it.
    """

    concept: str
    finished: bool
    converged: bool
    reason: str
    mode: str
    iterations: int
    images_used: int
    weights: np.ndarray
    last: Distribution | None
    pooled: Distribution | None
    certificate_lower: tuple[float, ...] | None = None
    certificate_upper: tuple[float, ...] | None = None
    certificate_alpha: float | None = None
    certificate_method: str | None = None
    kept: tuple[int, int] | None = None
    kept_unedited: tuple[int, int] | None = None

    def to_dict(self) -> dict:
        return {
            "concept": self.concept,
            "finished": self.finished,
            "converged": self.converged,
            "reason": self.reason,
            "mode": self.mode,
            "iterations": self.iterations,
            "images_used": self.images_used,
            "weights": [float(x) for x in self.weights],
            "last": None if self.last is None else self.last.to_dict(),
            "pooled": None if self.pooled is None else self.pooled.to_dict(),
            "certificate_lower": None if self.certificate_lower is None else list(self.certificate_lower),
            "certificate_upper": None if self.certificate_upper is None else list(self.certificate_upper),
            "certificate_alpha": self.certificate_alpha,
            "certificate_method": self.certificate_method,
            "kept": None if self.kept is None else list(self.kept),
            "kept_unedited": None if self.kept_unedited is None else list(self.kept_unedited),
        }


class Controller(ABC):
    """Bookkeeping shared by all controllers: concepts, budget, the observation log and replay.

    Subclasses implement :meth:`_record` (fold one observation into the per-concept state),
    :meth:`_wanted` (the next proposal a concept would like, or None when it is finished) and
    :meth:`status`. ``budget`` caps the total number of generated images (valid or not) over all
    concepts; None means unlimited.
    """

    name: ClassVar[str]
    mode: ClassVar[str]

    def __init__(self, concepts: Sequence[ConceptTarget], budget: int | None = None) -> None:
        names = [c.name for c in concepts]
        if not names:
            raise ValueError("a controller needs at least one concept")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate concept names: {names}")
        if budget is not None and budget <= 0:
            raise ValueError(f"budget must be positive, got {budget}")
        self.concepts = {c.name: c for c in concepts}
        self.budget = budget
        self.observations: list[Observation] = []

    # ----------------------------------------------------------------- configuration and replay

    def options(self) -> dict[str, Any]:
        """The controller-specific settings: every constructor argument after ``concepts`` and ``budget``, read
        back from the attribute of the same name (a subclass stores each one under its own name)."""
        names = list(inspect.signature(type(self).__init__).parameters)[3:]
        return {name: getattr(self, name) for name in names}

    def to_dict(self) -> dict:
        """The full configuration: with the observation log it determines the controller's state."""
        return {
            "controller": self.name,
            "concepts": [c.to_dict() for c in self.concepts.values()],
            "budget": self.budget,
            **self.options(),
        }

    @classmethod
    def from_dict(cls, config: dict) -> Controller:
        options = {k: v for k, v in config.items() if k not in ("controller", "concepts", "budget")}
        concepts = [ConceptTarget.from_dict(c) for c in config["concepts"]]
        return cls(concepts, budget=config["budget"], **options)

    @classmethod
    def replay(cls, config: dict, observations: Iterable[Observation | dict]) -> Controller:
        """Rebuild a controller from its configuration and its logged observations, in order."""
        controller = cls.from_dict(config)
        for obs in observations:
            controller.observe_logged(obs)
        return controller

    # ----------------------------------------------------------------------------- the contract

    @property
    def images_used(self) -> int:
        return sum(obs.n_images for obs in self.observations)

    @property
    def budget_left(self) -> int | None:
        return None if self.budget is None else self.budget - self.images_used

    def concept_images(self, concept: str) -> int:
        return sum(obs.n_images for obs in self.observations if obs.concept == concept)

    def observe_logged(self, record: Observation | dict) -> None:
        """Record a logged observation (an :class:`Observation` or a log row holding its
        :meth:`~Observation.to_dict` keys; other keys are ignored) exactly as :meth:`observe` first recorded it."""
        obs = record if isinstance(record, Observation) else Observation.from_dict(record)
        self.observe(
            obs.concept,
            obs.weights,
            obs.counts,
            obs.n_invalid,
            obs.kept,
            obs.seed_start,
            seed_indices=obs.seed_indices,
            labels=obs.labels,
        )

    def observe(
        self,
        concept: str,
        weights,
        counts,
        n_invalid: int = 0,
        kept: int | None = None,
        seed_start: int | None = None,
        seed_indices: Sequence[int] | None = None,
        labels: Sequence[int] | None = None,
    ) -> None:
        """Record the classifier's hard ``counts`` (length K, valid images only) and the number of
        images it could not classify, for images generated at the proposal's ``weights``; ``kept`` of the
        valid images still show the concept; ``seed_start`` and ``seed_indices`` are the proposal's, when it
        named seeds; ``labels`` every image's :func:`encode_labels` code, when known (they must agree with
        ``counts``, ``n_invalid`` and ``kept``)."""
        if concept not in self.concepts:
            raise KeyError(f"unknown concept {concept!r}")
        num_cells = self.concepts[concept].num_cells
        weights = np.asarray(weights, dtype=np.float64)
        counts = np.asarray(counts)
        if weights.shape != (num_cells,) or counts.shape != (num_cells,):
            raise ValueError(f"concept {concept!r} has {num_cells} cells; got {weights.shape}, {counts.shape}")
        if np.any(counts < 0) or n_invalid < 0 or np.any(counts != np.round(counts)):
            raise ValueError("counts and n_invalid must be non-negative integers")
        if kept is not None and not 0 <= kept <= counts.sum():
            raise ValueError(f"kept must lie in [0, {int(counts.sum())}] (the valid images), got {kept}")
        n_images = int(counts.sum()) + int(n_invalid)
        if seed_indices is not None:
            seed_indices = tuple(int(s) for s in seed_indices)
            if len(seed_indices) != n_images:
                raise ValueError(f"{len(seed_indices)} seed indices for {n_images} images")
            seed_start = seed_indices[0] if seed_start is None else seed_start
        if labels is not None:
            labels = tuple(int(x) for x in labels)
            decoded_counts, decoded_invalid, decoded_kept = decode_labels(labels, num_cells)
            agrees = np.array_equal(decoded_counts, counts) and decoded_invalid == n_invalid
            if len(labels) != n_images or not agrees or (kept is not None and decoded_kept != kept):
                raise ValueError("labels disagree with counts, n_invalid or kept")
        if self.status(concept).finished:
            raise ValueError(f"concept {concept!r} is finished; it takes no more observations")
        obs = Observation(
            concept,
            tuple(float(x) for x in weights),
            tuple(int(x) for x in counts),
            int(n_invalid),
            None if kept is None else int(kept),
            None if seed_start is None else int(seed_start),
            seed_indices,
            labels,
        )
        self._record(obs)
        self.observations.append(obs)

    def observe_labels(self, proposal: Proposal, labels: Sequence[int], measures_kept: bool = True) -> None:
        """Record the images made for ``proposal`` from their labels (:func:`encode_labels`, in its seed order);
        ``measures_kept``: whether the classifier tells if an image still shows the concept."""
        counts, n_invalid, kept = decode_labels(labels, self.concepts[proposal.concept].num_cells)
        self.observe(
            proposal.concept,
            proposal.weights,
            counts,
            n_invalid,
            kept if measures_kept else None,
            proposal.seed_start,
            proposal.seed_indices,
            labels,
        )

    def propose(self) -> list[Proposal]:
        """The next batch to generate for every unfinished concept ([] when all are finished).

        Requests are served in concept order within the remaining budget; a concept that does not fit
        this round waits. Pure: does not change the controller.
        """
        left = self.budget_left
        proposals = []
        for name in self.concepts:
            wanted = self._wanted(name)
            if wanted is None:
                continue
            if left is not None:
                n = self._fit_to_budget(wanted.n_images, left)
                if n <= 0:
                    continue
                if n != wanted.n_images and wanted.seed_indices is not None:
                    continue  # a named set of seeds is measured whole or not at all
                wanted = Proposal(
                    wanted.concept, wanted.weights, wanted.mode, n, wanted.seed_start, wanted.seed_indices
                )
                left -= n
            proposals.append(wanted)
        return proposals

    def _fit_to_budget(self, wanted: int, left: int) -> int:
        """How many of ``wanted`` images to grant with ``left`` in the budget (0: none this round)."""
        return min(wanted, left)

    @abstractmethod
    def _record(self, obs: Observation) -> None: ...

    @abstractmethod
    def _wanted(self, concept: str) -> Proposal | None: ...

    @abstractmethod
    def status(self, concept: str) -> ConceptStatus: ...
