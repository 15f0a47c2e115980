"""The panel controller: search on common seeds, certify on fresh seeds with few, pre-sized looks.

Weights are absolute (mode ``"absolute"``) and the controller names the seeds of every batch, because on the
world the same seed at nearby weights gives strongly paired images (each seed's cell flips at its own
threshold weight; a difference between two weights is 3–4× less noisy on common seeds than on two
independent batches). Seeds live in two disjoint ranges of the concept's seed space:

- **the panel**, seed indices ``0, 1, …``, cut into blocks ``[0, b), [b, 2b), [2b, 4b), [4b, 8b), …``
  (b = ``block_size`` · ⌈K/4⌉). Two weights measured on a common block are compared on the same seeds
  (common random numbers); a block never seen before brings new seeds, i.e. new information on the level;
- **fresh seeds** from ``FRESH_SEED_START`` on, each used once, for certificates.

Each concept runs this loop:

1. **Measure the unedited model** (w = 0, panel block 0), then **probe** along ``t − r̂₀`` with
   ``max_j |w_j| = initial_step``.
2. **Model** the ratios as ``softmax(a + s·w + E Qᵀ w)`` (:mod:`mist_debias.loop.control.response`), fitted to
   every batch, each panel block with its own random offset (its seeds' sampling error is common to every
   weight it was measured at): the response's shape comes from the paired differences, the population's
   level from the distinct seeds.
3. **Aim.** The next weight solves the model for the target, stepped from the *centre* (the searched weight
   closest to the target, compared on common panel blocks, among weights whose images decode and keep the
   concept) inside a trust region judged on common seeds (the ratio of the change measured to the change
   the model predicted; steps into undecodable or concept-losing weights halve it). With two cells the aim
   also stays inside the bracket of weights whose 99.5% interval excludes the target, and once a look surely
   missed (its fresh images' 95% interval excludes the target) it aims where the measured response crosses
   the target on a chord next to that look (isotonic regression of the measured ratios, interpolated
   linearly) instead of the fit: a response steeper near balance than logit-linear, as the world's doctor,
   fools the fit but not the chord. Before any look it takes the log-odds chord only when the two panel
   weights around the crossing changed the ratio surely more than the fit says (the fit is too shallow
   there); a chord step the model calls far too small is stretched (:meth:`PanelController._interpolate`).
   The aim never goes beyond the smallest edit known to lose the concept.
4. **Look or search.** When the aim was not cut short by the trust region or the bracket, the controller
   predicts how likely a look of n fresh images there certifies (:func:`~mist_debias.loop.control.certify.plan_look`,
   from the prediction and the sampling error of the distinct seeds measured near it) and takes the n with
   the fewest expected images per certificate. It looks when that chance is at least ``look_chance`` and
   one more panel block at the aim would not make the look cheaper by more than the block costs (a
   one-step look-ahead). Otherwise it searches: block 0 at the aim when the model can resolve the step,
   else the next new block at the aim (the panel grows where the search has settled), with every block that
   is cheap there (below). When the budget no longer holds that search, what is left goes to a look at the
   aim, when a look of that size could certify.
5. **Certify** (:mod:`mist_debias.loop.control.certify`): every cell's one-sided Clopper–Pearson bounds at the
   look's α inside ``[t_j − ε, t_j + ε]`` (an intersection–union equivalence test) and the concept not
   surely lost there. A failed look may be followed by the next look at the same weight, pooling its fresh
   images, at cumulative sizes ``n₁ · 2^k`` fixed at the first look there, tested with exact group-sequential
   boundaries, when that is the cheaper way to a certificate; otherwise its images join the model and the
   search goes on.

Seeds measured before are not generated again where their cell can be inferred
(:mod:`~mist_debias.loop.control.infer`): a seed that fell in cell j at several searched weights does so
at every convex combination of them, so a panel block at a weight between searched ones costs only the
seeds whose cell may differ; a block of which at most 80% must be generated joins every search there. An
aim the model predicts less than one panel image away from a searched weight (every ratio within 1/N for a
panel of N seeds), or within 0.5% of it, is that weight.
Inferred cells only feed the search; certificates use fresh seeds, each generated.

Honesty: the i-th certification weight of a concept may spend ``β_i = α s (1 − s)^(i−1)`` over its looks
(:func:`~mist_debias.loop.control.certify.look_alpha`, Σ_i β_i ≤ α). Each weight's looks form a fixed
group-sequential design: its weight and its cumulative sizes were fixed before any of its images were drawn,
on seeds nothing else used. By the union bound over weights, P(a false certificate) ≤ α per concept.
Nothing else ever certifies.

A run that cannot balance the cells without losing the concept ends with reason ``"concept_lost"``. When the
model finds a direction of the ratios that no weight moves and misses the target by more than the tolerance
even at its best weight, the search, once at that weight, measures more panel seeds there instead of chasing
the model's optimum, and the run ends ``"out_of_reach"`` when the images generated there put the deviation
surely beyond the tolerance (the target asks for something the edit cannot do). An
unconverged run reports the weight with the most evidence near the target: of the weights measured (panel
and looks pooled per weight, where images decode and keep the concept) with at least a quarter of the images
of the best-measured one, the one whose simultaneous intervals bound ``max_j |r_j − t_j|`` most tightly.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
from scipy import special
from scipy.optimize import isotonic_regression

from mist_debias.loop.control.base import (
    ConceptStatus,
    ConceptTarget,
    Controller,
    Observation,
    Proposal,
    decode_labels,
)
from mist_debias.loop.control.certify import (
    CERTIFICATE_INTERVAL,
    CERTIFICATE_METHOD,
    SEQUENTIAL_INTERVAL,
    SITE_FIRST_LOOK_SHARE,
    certifies_sequentially,
    look_alpha,
    look_success,
    plan_look,
)
from mist_debias.loop.control.infer import UNKNOWN, infer_labels
from mist_debias.loop.control.kept import surely_lost
from mist_debias.loop.control.response import LogitLinearResponse, fit_response, push_direction, zero_sum_basis
from mist_debias.measure.metrics import Distribution, simultaneous_intervals, wilson_interval

FRESH_SEED_START = 1_000_000
_EVIDENCE_SHARE = 0.25  # an unconverged run reports a weight with ≥ this share of the best-measured one's images
_CHEAP_SHARE = 0.8  # a panel block is completed at a searched weight when at most this share must be generated
_SNAP_SHARE = 0.005  # an aim within this share of a searched weight's size is that weight
_BRACKET_ALPHA = 0.005  # a weight ends the bracket only when its 99.5% interval excludes the target
_CHORD_REACH = 0.35  # before a look misses, a chord's ends lie within this of the target share
_CHORD_IMAGES = 128  # ... and each holds at least this many panel images
_CHORD_Z = 3.0  # ... and their measured change exceeds the model's by this many standard errors
_CHORD_GAIN = 4.0  # a chord may claim a response at most this many times steeper than the model's


def _same_weights(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.max(np.abs(a - b)) <= 1e-12 * (1.0 + float(np.max(np.abs(a)))))


def _position(weights: np.ndarray, direction: np.ndarray) -> float:
    """Two cells: ``x = w·d`` along the edit direction, rounded so that one weight is one position."""
    return round(float(weights @ direction), 12)


def _along(measured: Sequence[tuple[np.ndarray, _Batch]], direction: np.ndarray) -> dict[float, np.ndarray]:
    """Two cells: the counts of every measured weight, pooled per position along the edit direction."""
    pooled: dict[float, np.ndarray] = {}
    for weights, batch in measured:
        x = _position(weights, direction)
        pooled[x] = pooled.get(x, np.zeros(2)) + batch.counts
    return pooled


class _Chord(NamedTuple):
    """Where a chord crosses the target (``x`` along the edit direction), from which of its two ends (``anchor``)
    and the isotonic regression's level there (``level``)."""

    x: float
    anchor: float
    level: float


def _crossing(
    pooled: dict[float, np.ndarray],
    target: float,
    ends: set[float] | None = None,
    logit: bool = False,
    reach: float = 1.0,
) -> _Chord | None:
    """Where the isotonic regression of the first cell's ratio over ``x`` (pooled two-cell counts per x) crosses
    ``target``, interpolated linearly (in log-odds with ``logit``, which is exact for a logit-linear response)
    between the first pair of neighbours around it with one of them in ``ends`` (any pair when None); anchored
    at the end nearer the target. None if there is no such pair, or if either end's level is more than
    ``reach`` from the target."""
    if len(pooled) < 2:
        return None
    x = np.array(sorted(pooled))
    counts = np.array([pooled[v] for v in x])
    n = counts.sum(axis=1)
    ratio = counts[:, 0] / n
    increasing = float(np.sum(n * (x - np.average(x, weights=n)) * ratio)) >= 0.0
    level = isotonic_regression(ratio, weights=n, increasing=increasing).x
    gap = level - target
    if logit:
        clipped = np.clip(level, 0.5 / n, 1.0 - 0.5 / n)
        gap = special.logit(clipped) - special.logit(target)
    for i in range(len(x) - 1):
        a, b = gap[i], gap[i + 1]
        if a * b <= 0.0 and a != b and (ends is None or x[i] in ends or x[i + 1] in ends):
            if max(abs(level[i] - target), abs(level[i + 1] - target)) > reach:
                return None
            anchor = min((k for k in (i, i + 1) if ends is None or x[k] in ends), key=lambda k: abs(gap[k]))
            return _Chord(float(x[i] + (x[i + 1] - x[i]) * a / (a - b)), float(x[anchor]), float(level[anchor]))
    return None


@dataclass
class _Batch:
    counts: np.ndarray
    n_invalid: int
    kept: int | None

    @property
    def n(self) -> int:
        return int(self.counts.sum())


def _batch(labels: Sequence[int], num_cells: int, kept_known: bool) -> _Batch:
    counts, n_invalid, kept = decode_labels(labels, num_cells)
    return _Batch(counts, n_invalid, kept if kept_known else None)


def _pool(batches: Sequence[_Batch]) -> _Batch:
    counts = np.sum([b.counts for b in batches], axis=0)
    kept = None if any(b.kept is None for b in batches) else sum(b.kept for b in batches)
    return _Batch(counts, sum(b.n_invalid for b in batches), kept)


@dataclass
class _Point:
    """A searched weight, the panel blocks complete there (by block index), and the label of every panel seed
    known there (measured or inferred; seeds of observations that carried no labels are absent)."""

    weights: np.ndarray
    blocks: dict[int, _Batch] = field(default_factory=dict)
    labels: dict[int, int] = field(default_factory=dict)
    generated: set[int] = field(default_factory=set)
    kept_known: bool = True

    def pooled(self, indices=None) -> _Batch:
        chosen = sorted(self.blocks) if indices is None else sorted(indices)
        return _pool([self.blocks[i] for i in chosen])

    def measured(self) -> _Batch:
        """The images generated here (inferred labels left out; all blocks where labels are not known)."""
        if not self.generated:
            return self.pooled()
        return _batch([self.labels[seed] for seed in sorted(self.generated)], len(self.weights), self.kept_known)


@dataclass
class _Site:
    """A certification weight: fresh images pooled over looks whose cumulative sizes ``first · 2^k`` were
    fixed at its first look; ``alphas[k]`` is what its look k spent."""

    weights: np.ndarray
    first: int
    batches: list[_Batch] = field(default_factory=list)
    alphas: list[float] = field(default_factory=list)
    passed: bool = False
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None

    @property
    def pooled(self) -> _Batch:
        return _pool(self.batches)

    def planned(self, look: int) -> int:
        """Cumulative images at this site's look ``look`` (0-based)."""
        return self.first * 2**look


@dataclass
class _State:
    points: list[_Point] = field(default_factory=list)
    sites: list[_Site] = field(default_factory=list)
    radius: float | None = None
    fresh_used: int = 0
    iterations: int = 0
    certified: int | None = None
    last: _Batch | None = None
    last_kind: str = ""


@dataclass(frozen=True)
class _Plan:
    """The next batch: weights, images, first seed index (or the seeds, when not a contiguous range), and what
    it is for (or why nothing is left)."""

    weights: np.ndarray
    n_images: int
    seed_start: int
    kind: str
    seed_indices: tuple[int, ...] | None = None


class PanelController(Controller):
    """Common-seed search and certificates on fresh seeds (see the module docstring).

    Parameters: ``alpha`` — false-certificate level per concept; ``first_look_share`` — the share of α the
    first certification weight may spend (weight i: ``α s (1 − s)^(i−1)``); ``look_chance`` — the least
    predicted chance of success for which a look is made; ``block_size`` — panel block 0 holds
    ``block_size · ⌈K/4⌉`` seeds; ``max_blocks`` — panel blocks in all; ``min_look``/``max_look``/
    ``batch_multiple`` — look sizes; ``initial_step`` — the probe's largest |w_j|; ``growth`` — trust-region
    factor; ``max_abs_weight`` — weights never exceed it; ``max_iterations`` — batches per concept;
    ``cross_penalty`` — ridge on the model's cross-effects; ``kept_floor`` — a weight is lost when its share
    kept is surely below this share
    of the unedited one.
    """

    name = "panel"
    mode = "absolute"

    def __init__(
        self,
        concepts: Sequence[ConceptTarget],
        budget: int | None = None,
        alpha: float = 0.05,
        first_look_share: float = 0.85,
        look_chance: float = 0.3,
        block_size: int = 64,
        max_blocks: int = 6,
        min_look: int = 64,
        max_look: int = 4096,
        batch_multiple: int = 16,
        initial_step: float = 0.5,
        growth: float = 4.0,
        max_abs_weight: float = 100.0,
        max_iterations: int = 200,
        cross_penalty: float = 1.0,
        kept_floor: float = 0.95,
    ) -> None:
        super().__init__(concepts, budget)
        if not 0.0 < alpha < 1.0 or not 0.0 < first_look_share <= 1.0 or not 0.0 < look_chance < 1.0:
            raise ValueError("alpha and look_chance must lie in (0, 1), first_look_share in (0, 1]")
        if min(block_size, max_blocks, min_look, batch_multiple, max_iterations) <= 0 or max_look < min_look:
            raise ValueError("block, look and batch sizes and max_iterations must be positive, max_look ≥ min_look")
        if min(initial_step, growth - 1.0, max_abs_weight) <= 0 or not 0.0 < kept_floor <= 1.0:
            raise ValueError("initial_step and max_abs_weight must be > 0, growth > 1, kept_floor in (0, 1]")
        self.alpha = float(alpha)
        self.first_look_share = float(first_look_share)
        self.look_chance = float(look_chance)
        self.block_size = int(block_size)
        self.max_blocks = int(max_blocks)
        self.min_look = int(min_look)
        self.max_look = int(max_look)
        self.batch_multiple = int(batch_multiple)
        self.initial_step = float(initial_step)
        self.growth = float(growth)
        self.max_abs_weight = float(max_abs_weight)
        self.max_iterations = int(max_iterations)
        self.cross_penalty = float(cross_penalty)
        self.kept_floor = float(kept_floor)
        self._states = {name: _State() for name in self.concepts}
        self._plans: dict[str, tuple[int, _Plan]] = {}

    # ------------------------------------------------------------------------------- the panel

    def _block(self, concept: str, index: int) -> tuple[int, int]:
        """(first seed index, size) of panel block ``index``: sizes b, b, 2b, 4b, …"""
        base = self.block_size * math.ceil(self.concepts[concept].num_cells / 4)
        if index == 0:
            return 0, base
        return base * 2 ** (index - 1), base * 2 ** (index - 1)

    def _block_index(self, concept: str, seed_start: int, n_images: int) -> int:
        for index in range(self.max_blocks):
            if self._block(concept, index) == (seed_start, n_images):
                return index
        raise ValueError(f"concept {concept!r}: seeds {seed_start}+{n_images} are not a panel block")

    @staticmethod
    def _blocks_used(state: _State) -> int:
        return 1 + max((i for p in state.points for i in p.blocks), default=-1)

    def _block_seeds(self, concept: str, index: int) -> range:
        start, size = self._block(concept, index)
        return range(start, start + size)

    def _inferred(self, state: _State, seeds: Sequence[int], weights: np.ndarray, num_cells: int) -> np.ndarray:
        """Labels of panel ``seeds`` at ``weights`` inferred from the searched weights (:mod:`.infer`)."""
        labelled = [point for point in state.points if point.labels]
        if not labelled:
            return np.full(len(seeds), UNKNOWN, dtype=np.int64)
        points = np.stack([point.weights for point in labelled])
        labels = np.array([[point.labels.get(seed, UNKNOWN) for seed in seeds] for point in labelled])
        return infer_labels(points, labels, weights, num_cells)

    # ------------------------------------------------------------------------------ judgements

    def _unedited(self, state: _State) -> _Batch | None:
        return state.points[0].pooled() if state.points else None

    def _degraded(self, state: _State, batch: _Batch) -> bool:
        """Images decode less than half as often as unedited ones: the edit is breaking the images."""
        unedited = self._unedited(state)
        total, unedited_total = batch.n + batch.n_invalid, unedited.n + unedited.n_invalid
        if total == 0 or unedited_total == 0:
            return False
        return batch.n / total < 0.5 * unedited.n / unedited_total

    def _lost(self, state: _State, batch: _Batch) -> bool:
        unedited = self._unedited(state)
        if batch.kept is None or unedited is None or unedited.kept is None:
            return False
        return surely_lost(batch.kept, batch.n, unedited.kept, unedited.n, self.alpha, self.kept_floor)

    def _usable(self, state: _State, batch: _Batch) -> bool:
        return batch.n > 0 and not self._degraded(state, batch) and not self._lost(state, batch)

    def _deviation(self, concept: str, batch: _Batch) -> float:
        return float(np.max(np.abs(batch.counts / max(batch.n, 1) - self.concepts[concept].target_array)))

    def _deviation_bounds(self, concept: str, batch: _Batch) -> tuple[float, float]:
        """(least, largest) ``max_j |r_j − t_j|`` allowed by simultaneous Wilson intervals at level 1 − α."""
        t = self.concepts[concept].target_array
        if batch.n == 0:
            return 0.0, 1.0
        lower, upper = simultaneous_intervals(batch.counts, self.alpha)
        least = float(np.max(np.maximum(np.maximum(lower - t, t - upper), 0.0)))
        return least, float(np.max(np.maximum(upper - t, t - lower)))

    def _better(self, concept: str, a: _Point, b: _Point) -> bool:
        """True when ``b`` is closer to the target than ``a`` on their common panel blocks (the same seeds),
        or on all their images when they share none."""
        common = set(a.blocks) & set(b.blocks)
        if not common:
            return self._deviation(concept, b.pooled()) < self._deviation(concept, a.pooled())
        dev_a = self._deviation(concept, a.pooled(common))
        dev_b = self._deviation(concept, b.pooled(common))
        return dev_b < dev_a or (dev_b == dev_a and len(b.blocks) > len(a.blocks))

    def _centre(self, concept: str) -> int:
        state = self._states[concept]
        usable = [i for i, p in enumerate(state.points) if self._usable(state, p.pooled())]
        best = usable[0] if usable else 0
        for i in usable[1:]:
            if self._better(concept, state.points[best], state.points[i]):
                best = i
        return best

    def _measured(self, state: _State, generated: bool = False) -> list[tuple[np.ndarray, _Batch]]:
        """Every measured weight with all its images (panel or fresh): the panel's complete blocks, inferred labels
        included, or with ``generated`` only the images generated there (what a report may rest on)."""
        points = [(p.weights, p.measured() if generated else p.pooled()) for p in state.points]
        return points + [(s.weights, s.pooled) for s in state.sites]

    def _lost_magnitude(self, state: _State) -> float:
        """The smallest ``max_j |w_j|`` measured where the concept is surely lost (inf if none)."""
        lost = [float(np.max(np.abs(w))) for w, b in self._measured(state) if self._lost(state, b)]
        return min(lost, default=math.inf)

    # ------------------------------------------------------------------------------- the model

    def _fit(self, concept: str) -> LogitLinearResponse | None:
        """The response model; each panel block measured at several weights shares one offset (its seeds)."""
        state = self._states[concept]
        if len(state.points) + len(state.sites) < 2:
            return None
        weights, counts, groups = [], [], []
        for point in state.points:
            for index, block in point.blocks.items():
                weights.append(point.weights)
                counts.append(block.counts)
                groups.append(index)
        for site in state.sites:
            weights.append(site.weights)
            counts.append(site.pooled.counts)
            groups.append(-1)
        return fit_response(
            np.stack(weights),
            np.stack(counts),
            cross_penalty=self.cross_penalty,
            groups=np.asarray(groups),
            coupling=self.concepts[concept].coupling,
        )

    def _bracket(self, concept: str, weights: np.ndarray) -> np.ndarray:
        """Two cells: keep the aim inside the bracket of weights whose Wilson interval (all images there, at
        level 1 − 0.005: many weights are measured) excludes the target — below on the low side, above on the
        high side (as the adaptive controller)."""
        state = self._states[concept]
        t = self.concepts[concept].target_array[0]
        direction = zero_sum_basis(2)[:, 0]
        low = high = None
        for w, batch in self._measured(state):
            if not self._usable(state, batch):
                continue
            lower, upper = wilson_interval(batch.counts[0], batch.n, _BRACKET_ALPHA)
            x = float(w @ direction)
            if upper < t:
                low = x if low is None else max(low, x)
            elif lower > t:
                high = x if high is None else min(high, x)
        x = float(weights @ direction)
        if low is not None and high is not None and not low < x < high:
            x = 0.5 * (low + high) if low < high else x
        elif low is not None and high is None and x <= low:
            x = 2.0 * low - x
        elif high is not None and low is None and x >= high:
            x = 2.0 * high - x
        return x * direction

    def _interpolate(self, concept: str, model: LogitLinearResponse) -> np.ndarray | None:
        """Two cells: the weight where the measured response crosses the target, read off a chord, when the
        measurements say the model is wrong there (None: aim with the model).

        The first cell's ratio is monotone along the edit direction ``x = w·d``. Measured ratios, weighted by their
        images, are made monotone (isotonic regression, pool adjacent violators; the direction from the weighted
        slope's sign) and the crossing is interpolated between its two neighbours (Stylianou & Flournoy 2002).
        Near balance a response can be far steeper than a logit-linear fit through distant weights says (the
        world's doctor is about twice as steep), and the fit's aims then overshoot. The chord is used

        - once a look surely missed (its fresh images' 1 − α Wilson interval excludes the target): first on the
          looks' fresh images alone (unbiased, so the chord between looks on either side of the target is the
          secant of the true response), else on every usable weight (panel and fresh) between a missed look and
          its neighbour, interpolated linearly;
        - before that, in log-odds over every usable weight, when the two weights around the crossing are near
          the target and the model is surely too shallow between them (:meth:`_steeper`). Panel levels share
          their seeds' sampling error, so a chord between panel weights is not taken on its word alone.

        Either way the step from the chord's anchor is stretched so that the model predicts at least a
        ``1/_CHORD_GAIN`` share of the change the chord wants (:meth:`_stretch`): a chord through a noisy
        neighbour close by can claim a response far steeper than it is, and would creep toward the target by
        small steps, each a look."""
        state = self._states[concept]
        t = self.concepts[concept].target_array[0]
        direction = zero_sum_basis(2)[:, 0]
        looks = [(site.weights, site.pooled) for site in state.sites if not site.passed]
        looks = [(w, batch) for w, batch in looks if self._usable(state, batch)]
        measured = [(w, batch) for w, batch in self._measured(state) if self._usable(state, batch)]
        missed = set()
        for w, batch in looks:
            lower, upper = wilson_interval(batch.counts[0], batch.n, self.alpha)
            if upper < t or lower > t:
                missed.add(_position(w, direction))
        if missed:
            fresh = _along(looks, direction)
            chord = _crossing(fresh, t, set(fresh)) or _crossing(_along(measured, direction), t, missed)
        else:
            chord = _crossing(_along(measured, direction), t, logit=True, reach=_CHORD_REACH)
            if chord is not None and not self._steeper(concept, model, chord):
                chord = None
        return None if chord is None else self._stretch(concept, model, chord) * direction

    def _steeper(self, concept: str, model: LogitLinearResponse, chord: _Chord) -> bool:
        """The panel weights at the chord's anchor and at its neighbour across the crossing (each with at least
        ``_CHORD_IMAGES`` images) changed the ratio by more than the model predicts between them, by more than
        ``_CHORD_Z`` standard errors of the difference (taken as independent: their common seeds only make it
        more precise)."""
        state = self._states[concept]
        direction = zero_sum_basis(2)[:, 0]
        points = {_position(p.weights, direction): p for p in state.points if self._usable(state, p.pooled())}
        positions = sorted(points)
        neighbour = None
        for low, high in itertools.pairwise(positions):
            if low <= chord.x <= high:
                neighbour = high if low == chord.anchor else low
        if neighbour is None or chord.anchor not in points:
            return False
        ends = (points[chord.anchor], points[neighbour])
        batches = [end.pooled() for end in ends]
        if min(batch.n for batch in batches) < _CHORD_IMAGES:
            return False
        ratios = [batch.counts[0] / batch.n for batch in batches]
        error = math.sqrt(sum(max(r * (1.0 - r), 0.25 / b.n) / b.n for r, b in zip(ratios, batches, strict=True)))
        predicted = abs(model.ratios(ends[1].weights)[0] - model.ratios(ends[0].weights)[0])
        return abs(ratios[1] - ratios[0]) - predicted > _CHORD_Z * error

    def _stretch(self, concept: str, model: LogitLinearResponse, chord: _Chord) -> float:
        """The chord's crossing, its step from the anchor stretched until the model predicts at least
        ``1/_CHORD_GAIN`` of the change the chord wants there (``|t − level|``)."""
        wanted = abs(self.concepts[concept].target_array[0] - chord.level)
        direction = zero_sum_basis(2)[:, 0]
        predicted = abs(model.ratios(chord.x * direction)[0] - model.ratios(chord.anchor * direction)[0])
        if 0.0 < predicted * _CHORD_GAIN < wanted:
            return chord.anchor + (chord.x - chord.anchor) * wanted / (predicted * _CHORD_GAIN)
        return chord.x

    def _aim(self, concept: str, model: LogitLinearResponse, solution: np.ndarray) -> tuple[np.ndarray, bool, bool]:
        """(aimed weights, limited by the trust region or bracket, limited by the concept-lost edge), stepping
        from the centre toward the model's ``solution`` for the target."""
        spec = self.concepts[concept]
        state = self._states[concept]
        centre = state.points[self._centre(concept)]
        step = solution - centre.weights
        limited = state.radius is not None and float(np.linalg.norm(step)) > state.radius
        if limited:
            step *= state.radius / np.linalg.norm(step)
        weights = centre.weights + step
        if np.max(np.abs(weights)) > self.max_abs_weight:
            weights *= self.max_abs_weight / np.max(np.abs(weights))
            limited = True
        if spec.num_cells == 2:
            bracketed = self._bracket(concept, weights)
            if not _same_weights(bracketed, weights):
                weights, limited = bracketed, True
        edge = self._lost_magnitude(state)
        lost_limited = bool(np.max(np.abs(weights)) >= edge)
        if lost_limited:
            weights = weights * (0.9 * edge / np.max(np.abs(weights)))
        # An aim predicted less than one panel image from a searched weight, or within 0.5% of it, is that weight
        # (its seeds are known there).
        predicted = model.ratios(weights)
        gaps = [float(np.max(np.abs(model.ratios(p.weights) - predicted))) for p in state.points]
        moves = [
            float(np.max(np.abs(p.weights - weights)) / max(np.max(np.abs(p.weights)), 1e-12)) for p in state.points
        ]
        panel = sum(self._block(concept, i)[1] for i in range(self._blocks_used(state)))
        nearest = int(np.argmin(gaps))
        if gaps[nearest] < 1.0 / panel or min(moves) < _SNAP_SHARE:
            weights = state.points[nearest if gaps[nearest] < 1.0 / panel else int(np.argmin(moves))].weights.copy()
        return weights, limited, lost_limited

    def _out_of_reach(self, concept: str, model: LogitLinearResponse, best: np.ndarray) -> bool:
        """The model says the target is out of the edit's reach: some direction of the ratios does not move
        with the weights (:meth:`LogitLinearResponse.reach`) and even its ``best`` weight misses the target by
        more than the tolerance (every cell's predicted miss less two standard errors) — e.g. a dependence
        between two axes that an edit moving each axis cannot change."""
        spec = self.concepts[concept]
        if model.gain <= 0.0 or model.reach() == spec.num_cells - 1:
            return False
        miss = np.abs(model.ratios(best) - spec.target_array) - 2.0 * model.ratio_errors(best)
        return bool(np.max(miss) > spec.tolerance)

    def _spread(self, concept: str, model: LogitLinearResponse, predicted: np.ndarray, extra: int = 0) -> np.ndarray:
        """How far the true ratios at the aim may lie from ``predicted`` (sizes looks only; a certificate never
        depends on it): the sampling error of the distinct seeds measured near the aim (panel seeds counted once,
        at weights predicted within 2ε of the aim), plus a quarter of the model's extrapolation from the nearest
        such weight. ``extra``: as if that many more seeds had been measured at the aim."""
        state = self._states[concept]
        eps = self.concepts[concept].tolerance
        seeds: set[int] = set()
        fresh, distance = 0, math.inf
        for point in state.points:
            gap = float(np.max(np.abs(model.ratios(point.weights) - predicted)))
            if gap <= 2.0 * eps and self._usable(state, point.pooled()):
                seeds.update(point.blocks)
                distance = min(distance, gap)
        for site in state.sites:
            gap = float(np.max(np.abs(model.ratios(site.weights) - predicted)))
            if gap <= 2.0 * eps and self._usable(state, site.pooled):
                fresh += site.pooled.n
                distance = min(distance, gap)
        near = fresh + extra + sum(self._block(concept, index)[1] for index in seeds)
        if extra:
            distance = 0.0
        if near == 0:
            return np.full(len(predicted), 0.5)
        variance = np.maximum(predicted * (1.0 - predicted), 1e-4)
        return np.sqrt(variance / near + (0.25 * distance) ** 2)

    def _alpha(self, state: _State, reopen: bool | None = None) -> float:
        """α of the concept's next look: at the open site (its next pooled look) when it would reopen it, else
        the first look of a new site. Site i may spend ``β_i = α s (1 − s)^(i−1)`` in all (Σ_i β_i ≤ α), its
        look k ``β_i f (1 − f)^(k−1)`` with ``f`` = :data:`SITE_FIRST_LOOK_SHARE` (Σ_k ≤ β_i)."""
        if reopen is None:
            reopen = state.last_kind == "look" and bool(state.sites) and not state.sites[-1].passed
        site_index = len(state.sites) if reopen else len(state.sites) + 1
        look = len(state.sites[-1].batches) + 1 if reopen else 1
        budget = look_alpha(self.alpha, self.first_look_share, site_index)
        return look_alpha(budget, SITE_FIRST_LOOK_SHARE, look)

    # ------------------------------------------------------------------------------- planning

    def _plan(self, concept: str) -> _Plan:
        version = len(self.observations)
        cached = self._plans.get(concept)
        if cached is not None and cached[0] == version:
            return cached[1]
        plan = self._make_plan(concept)
        self._plans[concept] = (version, plan)
        return plan

    def _look(self, concept: str, weights: np.ndarray, n_images: int) -> _Plan:
        return _Plan(weights, n_images, FRESH_SEED_START + self._states[concept].fresh_used, "look")

    def _continue_site(self, concept: str) -> tuple[float, _Plan | None, float]:
        """Expected images per certificate when the open site takes its next planned look, that look, and its
        chance of success (inf, None, 0 when there is no open site).

        The site's pooled fresh ratios ``r̂`` (n images) are unbiased; after ``Δ`` more the pooled estimate is
        ``N(r̂, (Δ/(n + Δ))² v (1/n + 1/Δ))`` and the look passes when it lies ``z √(v / (n + Δ))`` inside.
        """
        spec = self.concepts[concept]
        state = self._states[concept]
        if not state.sites or state.sites[-1].passed or state.last_kind != "look":
            return math.inf, None, 0.0
        site = state.sites[-1]
        pooled = site.pooled
        n = pooled.n + pooled.n_invalid
        extra = site.planned(len(site.batches)) - n
        left = self.budget_left
        if pooled.n == 0 or extra <= 0 or (left is not None and extra > left) or self._lost(state, pooled):
            return math.inf, None, 0.0
        ratios = pooled.counts / pooled.n
        valid = pooled.n / n
        variance = np.maximum(ratios * (1.0 - ratios), 1e-4)
        shrink = extra / (n + extra)
        spread = shrink * np.sqrt(variance * (1.0 / pooled.n + 1.0 / (valid * extra)))
        # Planning only: the pooled look's boundary is about that of one look at the site's cumulative α.
        alpha = sum(site.alphas) + self._alpha(state, reopen=True)
        chance = look_success([pooled.n + valid * extra], ratios, spread, spec.target_array, spec.tolerance, alpha)[0]
        if chance <= 0:
            return math.inf, None, 0.0
        return extra / chance, self._look(concept, site.weights, extra), float(chance)

    def _search(self, concept: str, weights: np.ndarray, grow: bool) -> _Plan:
        """Measure the panel at ``weights``: block 0 (or, with ``grow`` or when block 0 is done there, the next new
        block), and with it every other block used so far of which at most 80% of the seeds must be generated
        (the rest inferred, :mod:`~mist_debias.loop.control.infer`). Only seeds whose labels cannot be inferred
        are generated; when that leaves nothing, the block with the fewest seeds to generate joins (the next new
        block at the latest)."""
        state = self._states[concept]
        num_cells = self.concepts[concept].num_cells
        point = next((p for p in state.points if _same_weights(p.weights, weights)), None)
        done = set() if point is None else set(point.blocks)
        used = self._blocks_used(state)
        primary = used if grow or 0 in done else 0
        candidates = {
            index: [seed for seed in self._block_seeds(concept, index) if point is None or seed not in point.labels]
            for index in range(min(used + 1, self.max_blocks))
            if index not in done
        }
        seeds = [seed for block in candidates.values() for seed in block]
        missing = {
            seed
            for seed, label in zip(seeds, self._inferred(state, seeds, weights, num_cells), strict=True)
            if label == UNKNOWN
        }
        unknown = {index: [seed for seed in block if seed in missing] for index, block in candidates.items()}
        chosen = [i for i in unknown if i == primary or len(unknown[i]) <= _CHEAP_SHARE * self._block(concept, i)[1]]
        while not any(unknown[i] for i in chosen):
            rest = [i for i in unknown if i not in chosen]
            if not rest:
                return _Plan(weights, 0, 0, "stuck")
            chosen.append(min(rest, key=lambda i: (len(unknown[i]), i)))
        wanted = sorted(seed for i in chosen for seed in unknown[i])
        return _Plan(weights, len(wanted), wanted[0], "search", tuple(wanted))

    def _make_plan(self, concept: str) -> _Plan:
        spec = self.concepts[concept]
        state = self._states[concept]
        t, eps = spec.target_array, spec.tolerance
        if not state.points:
            return self._search(concept, np.zeros(spec.num_cells), grow=False)
        model = self._fit(concept)
        if model is None:
            unedited = state.points[0].pooled()
            direction = push_direction(t - unedited.counts / max(unedited.n, 1), spec.coupling)
            if np.max(np.abs(direction)) < 1e-12:
                direction = zero_sum_basis(spec.num_cells)[:, 0]
            return self._search(concept, self.initial_step * direction / np.max(np.abs(direction)), grow=False)

        best = model.solve(t)
        interpolated = self._interpolate(concept, model) if spec.num_cells == 2 else None
        weights, limited, lost_limited = self._aim(concept, model, best if interpolated is None else interpolated)
        centre = state.points[self._centre(concept)]
        if (
            self._out_of_reach(concept, model, best)
            and np.max(np.abs(model.ratios(centre.weights) - model.ratios(best))) <= 0.5 * eps
        ):
            # Out of reach, and the search is there: gather evidence at the best weight searched until its
            # generated images put the deviation surely beyond the tolerance (or the panel is spent).
            measured = centre.measured()
            if self._usable(state, measured) and self._deviation_bounds(concept, measured)[0] > eps:
                return _Plan(centre.weights, 0, 0, "out_of_reach")
            weights, limited = centre.weights.copy(), False
        predicted = model.ratios(weights)
        if interpolated is not None and _same_weights(weights, interpolated):
            predicted = t.copy()
        spread = self._spread(concept, model, predicted)
        usable = [w for w, b in self._measured(state) if self._usable(state, b)] or [state.points[0].weights]
        distance = min(float(np.max(np.abs(predicted - model.ratios(w)))) for w in usable)
        left = self.budget_left
        continue_cost, continue_plan, extra_chance = self._continue_site(concept)
        look_plan = None
        if not limited:
            sizes = np.arange(self.min_look, self.max_look + 1, self.batch_multiple)
            if left is not None:
                sizes = sizes[sizes <= left]
            if len(sizes):
                alpha = self._alpha(state, reopen=False)
                n_images, chance = plan_look(predicted, spread, t, eps, alpha, sizes)
                cost = n_images / chance if chance > 0 else math.inf
                if continue_plan is not None and continue_cost <= cost:
                    return continue_plan
                # One step ahead: would the next panel block at the aim make the look cheaper by more than it costs?
                block = self._block(concept, min(self._blocks_used(state), self.max_blocks - 1))[1]
                sharper = self._spread(concept, model, predicted, extra=block)
                later_n, later_chance = plan_look(predicted, sharper, t, eps, alpha, sizes)
                later = block + (later_n / later_chance if later_chance > 0 else math.inf)
                if chance >= self.look_chance and cost <= later:
                    return self._look(concept, weights, n_images)
                if chance > 0:
                    look_plan = self._look(concept, weights, n_images)
        if continue_plan is not None and extra_chance >= self.look_chance:
            return continue_plan
        if look_plan is None:  # limited: a look here only if the panel is spent
            sizes = np.arange(self.min_look, self.max_look + 1, self.batch_multiple)
            sizes = sizes if left is None else sizes[sizes <= left]
            if len(sizes):
                n_images, chance = plan_look(predicted, spread, t, eps, self._alpha(state, reopen=False), sizes)
                look_plan = self._look(concept, weights, n_images) if chance > 0 else None
        if lost_limited and self._deviation_bounds(concept, centre.pooled())[0] > eps:
            return _Plan(weights, 0, 0, "concept_lost")
        # Closer than the panel can resolve: new seeds (the next panel block) at the aim, not the same ones.
        resolved = limited or distance > float(np.max(spread))
        plan = self._search(concept, weights, grow=not resolved)
        if plan.kind == "stuck" and look_plan is not None:
            return look_plan  # the panel is spent: the look is the best search left
        if plan.kind == "stuck" and lost_limited:
            return _Plan(weights, 0, 0, "concept_lost")
        if left is not None and plan.n_images > left:
            # The search no longer fits: what is left goes to a look at the aim, the one way left to a certificate
            # (and fresh evidence at the weight the run reports).
            return look_plan if look_plan is not None else _Plan(weights, 0, 0, "budget")
        return plan

    # ------------------------------------------------------------------------------ the contract

    def _record(self, obs: Observation) -> None:
        spec = self.concepts[obs.concept]
        state = self._states[obs.concept]
        plan = self._plan(obs.concept)
        seed_start = plan.seed_start if obs.seed_start is None else obs.seed_start
        weights = np.asarray(obs.weights, dtype=np.float64)
        batch = _Batch(np.asarray(obs.counts, dtype=np.int64), obs.n_invalid, obs.kept)
        if seed_start >= FRESH_SEED_START:
            if seed_start != FRESH_SEED_START + state.fresh_used:
                raise ValueError(f"concept {obs.concept!r}: fresh seeds must start at the first unused one")
            site = state.sites[-1] if state.sites else None
            reopen = (
                site is not None
                and state.last_kind == "look"
                and not site.passed
                and _same_weights(site.weights, weights)
                and site.pooled.n + site.pooled.n_invalid + obs.n_images == site.planned(len(site.batches))
            )
            alpha = self._alpha(state, reopen=reopen)
            if not reopen:
                site = _Site(weights.copy(), obs.n_images)
                state.sites.append(site)
            site.batches.append(batch)
            site.alphas.append(alpha)
            pooled = site.pooled
            passed, site.lower, site.upper = certifies_sequentially(
                [b.counts for b in site.batches], spec.target_array, spec.tolerance, site.alphas
            )
            site.passed = passed and not self._lost(state, pooled)
            state.fresh_used += obs.n_images
            if site.passed:
                state.certified = len(state.sites) - 1
            state.last_kind = "look"
        else:
            found = next((i for i, p in enumerate(state.points) if _same_weights(p.weights, weights)), None)
            point = _Point(weights.copy()) if found is None else state.points[found]
            if obs.labels is None:
                completed = {self._block_index(obs.concept, seed_start, obs.n_images): batch}
            else:
                completed = self._label(obs.concept, point, obs.seeds(), obs.labels, obs.kept is not None)
            if not completed or any(index in point.blocks for index in completed):
                raise ValueError(f"concept {obs.concept!r}: these panel seeds were already measured here")
            centre = state.points[self._centre(obs.concept)] if found is None and state.points else None
            model = self._fit(obs.concept) if centre is not None else None
            if found is None:
                state.points.append(point)
                found = len(state.points) - 1
            point.blocks.update(completed)
            if centre is not None:
                self._update_radius(obs.concept, centre, state.points[found], model)
            state.last_kind = "search"
        state.iterations += 1
        state.last = batch

    def _label(
        self, concept: str, point: _Point, seeds: Sequence[int], labels: Sequence[int], kept_known: bool
    ) -> dict[int, _Batch]:
        """Add measured ``labels`` of panel ``seeds`` at ``point`` (and every label inferable there) and return
        the panel blocks this completes, with their counts."""
        state = self._states[concept]
        num_cells = self.concepts[concept].num_cells
        if any(seed in point.labels for seed in seeds):
            return {}
        blocks = {i for i in range(self.max_blocks) if set(self._block_seeds(concept, i)) & set(seeds)}
        if not blocks:
            raise ValueError(f"concept {concept!r}: seed {seeds[0]} is not on the panel")
        completed = {}
        measured = dict(zip((int(s) for s in seeds), (int(x) for x in labels), strict=True))
        for index in sorted(blocks):
            if index in point.blocks:
                continue
            missing = [
                seed for seed in self._block_seeds(concept, index) if seed not in measured and seed not in point.labels
            ]
            inferred = self._inferred(state, missing, point.weights, num_cells)
            if np.any(inferred == UNKNOWN):
                return {}
            measured.update(zip(missing, (int(x) for x in inferred), strict=True))
            codes = [measured.get(seed, point.labels.get(seed)) for seed in self._block_seeds(concept, index)]
            completed[index] = _batch(codes, num_cells, kept_known)
        point.labels.update(measured)
        point.generated.update(int(seed) for seed in seeds)
        point.kept_known = point.kept_known and kept_known
        return completed

    def _update_radius(self, concept: str, centre: _Point, point: _Point, model: LogitLinearResponse | None) -> None:
        """Trust-region update after the first batch at a new weight stepped from ``centre``.

        The step is judged by the change it made on common seeds against the change the model predicted
        (the trust-region ratio ``ρ = ⟨Δ_measured, Δ_predicted⟩ / ‖Δ_predicted‖²``): a difference on common
        seeds is precise even where the panel's own level is not. A step that moved the ratios less than a
        quarter of the prediction or more than four times it, or reached weights where images stop decoding
        or the concept is lost, halves the radius; one that reached the region's edge and did what the model
        said multiplies it by ``growth``. Changes smaller than two images of the common panel decide nothing.
        """
        state = self._states[concept]
        length = float(np.linalg.norm(point.weights - centre.weights))
        if state.radius is None or model is None:
            state.radius = self.growth * length
            return
        if not self._usable(state, point.pooled()):
            state.radius = 0.5 * length
            return
        common = set(point.blocks) & set(centre.blocks)
        if not common:
            return
        before, after = centre.pooled(common), point.pooled(common)
        measured = after.counts / max(after.n, 1) - before.counts / max(before.n, 1)
        predicted = model.ratios(point.weights) - model.ratios(centre.weights)
        size = float(predicted @ predicted)
        if np.sqrt(size) < 2.0 / max(min(before.n, after.n), 1):
            return
        ratio = float(measured @ predicted) / size
        if not 0.25 <= ratio <= 4.0:
            state.radius = 0.5 * length
        elif length >= state.radius * (1.0 - 1e-9):
            state.radius *= self.growth

    def belief(self, concept: str, weights) -> tuple[np.ndarray, np.ndarray] | None:
        """What the controller believes of the ratios at ``weights`` from what it has measured so far: the fitted
        response's ratios, and how far the truth may lie from them (the spread that sizes looks). None before
        there is a fit."""
        model = self._fit(concept)
        if model is None:
            return None
        predicted = model.ratios(np.asarray(weights, dtype=np.float64))
        return predicted, self._spread(concept, model, predicted)

    def _fit_to_budget(self, wanted: int, left: int) -> int:
        return wanted if wanted <= left else 0

    def _reason(self, concept: str) -> str:
        state = self._states[concept]
        if state.certified is not None:
            return "converged"
        if state.iterations >= self.max_iterations:
            return "max_iterations"
        left = self.budget_left
        if left is not None and left < self.batch_multiple:
            return "budget"
        kind = self._plan(concept).kind
        return kind if kind in ("budget", "stuck", "concept_lost", "out_of_reach") else "running"

    def _wanted(self, concept: str) -> Proposal | None:
        if self._reason(concept) != "running":
            return None
        plan = self._plan(concept)
        return Proposal(concept, plan.weights.copy(), self.mode, plan.n_images, plan.seed_start, plan.seed_indices)

    def _best(self, concept: str) -> tuple[np.ndarray, _Batch] | None:
        """The reported weight: the certified site, else, among measured weights (panel and fresh images pooled)
        with at least a quarter of the images of the best-measured one, the one whose simultaneous intervals
        bound the deviation from the target most tightly (never a lucky small batch)."""
        state = self._states[concept]
        if state.certified is not None:
            site = state.sites[state.certified]
            return site.weights, site.pooled
        groups: list[tuple[np.ndarray, list[_Batch]]] = []
        for weights, batch in self._measured(state, generated=True):
            group = next((g for g in groups if _same_weights(g[0], weights)), None)
            if group is None:
                groups.append((weights, [batch]))
            else:
                group[1].append(batch)
        pooled = [(weights, _pool(batches)) for weights, batches in groups]
        usable = [(w, b) for w, b in pooled if self._usable(state, b)] or pooled
        if not usable:
            return None
        # Evidence first: only weights with at least a quarter of the most images any weight has.
        most = max(b.n for _, b in usable)
        supported = [(w, b) for w, b in usable if b.n >= _EVIDENCE_SHARE * most]
        return min(supported, key=lambda item: self._deviation_bounds(concept, item[1])[1])

    def status(self, concept: str) -> ConceptStatus:
        spec = self.concepts[concept]
        state = self._states[concept]
        reason = self._reason(concept)
        best = self._best(concept)
        last = pooled = None
        if state.last is not None:
            last = Distribution.from_counts(state.last.counts, spec.target, state.last.n_invalid)
        site = None if state.certified is None else state.sites[state.certified]
        if best is not None:
            pooled = Distribution.from_counts(best[1].counts, spec.target, best[1].n_invalid)
        if site is not None:
            # What the run reports is the certificate itself: the same images, the intervals that decided it.
            pooled = replace(
                pooled,
                lower=tuple(float(x) for x in site.lower),
                upper=tuple(float(x) for x in site.upper),
                alpha=2.0 * sum(site.alphas),
                method=CERTIFICATE_INTERVAL if len(site.batches) == 1 else SEQUENTIAL_INTERVAL,
            )
        unedited = self._unedited(state)
        return ConceptStatus(
            concept=concept,
            finished=reason != "running",
            converged=site is not None,
            reason=reason,
            mode=self.mode,
            iterations=state.iterations,
            images_used=self.concept_images(concept),
            weights=np.zeros(spec.num_cells) if best is None else best[0].copy(),
            last=last,
            pooled=pooled,
            certificate_lower=None if site is None else tuple(float(x) for x in site.lower),
            certificate_upper=None if site is None else tuple(float(x) for x in site.upper),
            certificate_alpha=None if site is None else sum(site.alphas),
            certificate_method=None if site is None else CERTIFICATE_METHOD,
            kept=None if best is None or best[1].kept is None else (best[1].kept, best[1].n),
            kept_unedited=None if unedited is None or unedited.kept is None else (unedited.kept, unedited.n),
        )
