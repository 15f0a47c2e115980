"""The adaptive controller: model-based search in absolute weights, certified by a confidence sequence.

Weights are absolute (mode ``"absolute"``): every proposal is solved from the original W, so an edit is
reproducible from its weights alone and evidence at the same weights can be pooled across batches.

Each concept runs this loop:

1. **Measure the unedited model** (w = 0).
2. **Probe** once along ``t − r̂₀`` with ``max_j |w_j| = initial_step``; the response scale is unknown.
3. **Model** the ratios as ``softmax(a + s·w + E Qᵀ w)`` fitted by penalised likelihood to *all*
   observations (:mod:`mist_debias.loop.control.response`): a batch of 64 images is weighed as 64 images, not
   treated as exact, and nothing collapses on one noisy point. The next weight solves the model for the
   target, inside a trust region of radius ρ around the *centre*: the measured weight whose deviation
   ``max_j |r_j − t_j|`` has the smallest upper confidence bound among weights whose images still decode
   (at least half as often as unedited ones). The probe sets ``ρ = growth · ‖w_probe‖``; a step that
   ends surely worse than the centre (the lower bound of its deviation above the centre's upper bound),
   or where the images stop decoding, sets ρ to half that step's length, and a step that reached the
   edge of the region without failing multiplies ρ by ``growth``. This finds the weight scale by
   expansion when the response is weak, by interpolation when a step overshot, and backs off from
   weights where the edit breaks the images instead of returning to them. With two cells the proposal
   also stays inside the bracket of weights whose intervals exclude the target (a weight becomes a
   bracket end only when its interval lies wholly on one side).
4. **Aim, dwell or move.** A fresh weight becomes a certification candidate when the model expects it
   to land within ``candidate_miss · ε`` of the target (predicted offset plus the typical largest of the K
   cells' standard errors); otherwise it is exploration, sampled with ``n_min`` images. The weight in
   hand is kept (its images pool exactly) while the images still needed to certify it are no more than
   a fresh aimed weight would need, or while the model's next step would change no ratio by more than the
   model's own uncertainty (weights closer than what matters are the same weight). Batches grow from
   ``n_min`` while exploring to half the images the certificate still needs while dwelling.
5. **Certify.** After every batch the weight in hand is checked with an anytime-valid confidence sequence
   (:func:`mist_debias.measure.metrics.simultaneous_confidence_sequence`, running intersection); the concept
   converges, and is frozen, when every cell's interval lies inside ``[t_j − ε, t_j + ε]``.

Honesty of the certificate. Looking after every batch is covered by the confidence sequence. Looking at
*several weights* is covered by spending α across them: a weight is a certification candidate only if it
was made one before any of its certifying images were drawn (decided from earlier data; images drawn at
a weight before it became a candidate feed the model, not the certificate), and the m-th candidate gets
``α_m = α (1 − ρ) / (m (m + 1))`` (Σ_m α_m = α (1 − ρ)); the unedited weight gets ``ρ α``. By the
union bound over candidates and cells, P(a concept is declared converged while a cell's true ratio is
outside the tolerance) ≤ α per concept. Exploration weights spend nothing. The guarantee is about the
plant as measured: the classifier's counts at fixed weights are i.i.d. draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from mist_debias.loop.control.base import ConceptStatus, ConceptTarget, Controller, Observation, Proposal
from mist_debias.loop.control.response import LogitLinearResponse, fit_response, push_direction, zero_sum_basis
from mist_debias.measure.metrics import (
    Distribution,
    confidence_sequence,
    simultaneous_alpha,
    simultaneous_confidence_sequence,
    simultaneous_intervals,
)

_PRIOR_MEAN_FLOOR = 1e-3


def _same_weights(a: np.ndarray, b: np.ndarray) -> bool:
    """Weights equal up to float round-off (a JSON round trip of float64 is exact anyway)."""
    return bool(np.max(np.abs(a - b)) <= 1e-12 * (1.0 + float(np.max(np.abs(a)))))


@dataclass
class _WeightRecord:
    """Everything seen at one distinct weight vector.

    ``counts`` (all images here) feed the response model; ``certified_counts`` (images drawn since the
    weight became a certification candidate, with α share ``alpha``) feed its confidence sequence.
    """

    weights: np.ndarray
    counts: np.ndarray
    n_invalid: int = 0
    alpha: float | None = None
    certified_counts: np.ndarray | None = None
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def ratios(self) -> np.ndarray:
        return self.counts / max(self.n, 1)


@dataclass
class _ConceptState:
    records: list[_WeightRecord] = field(default_factory=list)
    current: int | None = None
    iterations: int = 0
    candidates: int = 0
    converged: bool = False
    last_counts: np.ndarray | None = None
    last_invalid: int = 0
    radius: float | None = None


@dataclass(frozen=True)
class _Plan:
    """The next batch for a concept: weights, images, and the α share of those weights if they are new."""

    weights: np.ndarray
    n_images: int
    alpha: float | None
    kind: str


class AdaptiveController(Controller):
    """Certified, model-based controller in absolute weights (see the module docstring).

    Parameters: ``alpha`` — the certificate's error level per concept; ``n_min``/``n_max_batch`` — the
    smallest and largest batch; ``batch_multiple`` — batch sizes are multiples of it; ``initial_step`` —
    the probe's largest |w_j|; ``growth`` — trust-region factor; ``max_abs_weight`` — weights never exceed
    it; ``max_iterations`` — batches per concept; ``initial_alpha_share`` — ρ, the α share of the
    unedited weight; ``prior_scale`` — spread of the confidence sequence's mixing prior in units of ε
    (where the sequence is tightest); ``aim_error`` — in units of ε, the miss assumed for a fresh weight
    before any model exists; ``misfit_z`` — pooled counts further than this many standard errors from the
    model's prediction overrule it; ``first_batch_share``/``first_batch_max`` — a new candidate's first
    batch is this share of the images it is expected to need, at most ``first_batch_max``;
    ``candidate_miss`` — in units of ε, the largest expected miss for which a fresh weight becomes a
    candidate; ``cross_penalty`` — ridge on the model's cross-effects.
    """

    name = "adaptive"
    mode = "absolute"

    def __init__(
        self,
        concepts: Sequence[ConceptTarget],
        budget: int | None = None,
        alpha: float = 0.05,
        n_min: int = 64,
        n_max_batch: int = 1024,
        batch_multiple: int = 16,
        initial_step: float = 0.5,
        growth: float = 4.0,
        max_abs_weight: float = 100.0,
        max_iterations: int = 100,
        initial_alpha_share: float = 0.05,
        prior_scale: float = 0.25,
        aim_error: float = 0.25,
        misfit_z: float = 3.0,
        first_batch_share: float = 0.25,
        candidate_miss: float = 0.5,
        first_batch_max: int = 256,
        cross_penalty: float = 10.0,
    ) -> None:
        super().__init__(concepts, budget)
        if not 0.0 < alpha < 1.0 or not 0.0 < initial_alpha_share < 1.0:
            raise ValueError("alpha and initial_alpha_share must lie in (0, 1)")
        if min(n_min, n_max_batch, batch_multiple, max_iterations) <= 0 or n_max_batch < n_min:
            raise ValueError("batch sizes and max_iterations must be positive, n_max_batch ≥ n_min")
        if min(initial_step, growth - 1.0, max_abs_weight, prior_scale, aim_error, misfit_z, first_batch_share) <= 0:
            raise ValueError("step, weight, prior, aim, misfit and batch settings must be > 0, growth > 1")
        self.alpha = float(alpha)
        self.n_min = int(n_min)
        self.n_max_batch = int(n_max_batch)
        self.batch_multiple = int(batch_multiple)
        self.initial_step = float(initial_step)
        self.growth = float(growth)
        self.max_abs_weight = float(max_abs_weight)
        self.max_iterations = int(max_iterations)
        self.initial_alpha_share = float(initial_alpha_share)
        self.prior_scale = float(prior_scale)
        self.aim_error = float(aim_error)
        self.misfit_z = float(misfit_z)
        self.first_batch_share = float(first_batch_share)
        self.candidate_miss = float(candidate_miss)
        self.first_batch_max = int(first_batch_max)
        self.cross_penalty = float(cross_penalty)
        self._states = {name: _ConceptState() for name in self.concepts}
        self._plans: dict[str, tuple[int, _Plan]] = {}

    # ------------------------------------------------------------------------------ statistics

    def _prior(self, concept: str) -> tuple[np.ndarray, np.ndarray]:
        """Mixing prior of the confidence sequence per cell: mean t_j, spread prior_scale · ε."""
        spec = self.concepts[concept]
        mean = np.clip(spec.target_array, _PRIOR_MEAN_FLOOR, 1.0 - _PRIOR_MEAN_FLOOR)
        strength = mean * (1.0 - mean) / (self.prior_scale * spec.tolerance) ** 2
        return mean, strength

    def _images_to_certify(
        self, concept: str, future: np.ndarray, alpha: float, pooled: _WeightRecord | None = None
    ) -> float:
        """Approximate further images needed before the confidence sequence at level ``alpha`` fits
        inside the tolerance, if new images have true ratios ``future`` and join the counts already
        ``pooled`` at the weight (inf when that never happens).

        After N valid images in all, the sequence is centred near ``(n₀ r̂₀ + (N − n₀) future) / N`` with
        half-width ``h(N) = sqrt(2 p(1 − p) (log(1/α_cell) + ½ log((N + c)/c)) / N)`` (the normal
        approximation of the mixture boundary, c the prior strength). Evaluated on a geometric grid of
        N. Only plans batch sizes; certification itself uses the exact sequence.
        """
        spec = self.concepts[concept]
        _, strength = self._prior(concept)
        t, eps = spec.target_array, spec.tolerance
        start = np.zeros(spec.num_cells)
        if pooled is not None and pooled.certified_counts is not None:
            start = pooled.certified_counts.astype(np.float64)
        n0 = start.sum()
        totals = n0 + np.geomspace(1.0, 1e6, 400)[:, None]
        centre = (start + (totals - n0) * future) / totals
        variance = np.maximum(centre * (1.0 - centre), 1e-4)
        log_level = math.log(1.0 / simultaneous_alpha(spec.num_cells, alpha))
        half = np.sqrt(2.0 * variance * (log_level + 0.5 * np.log((totals + strength) / strength)) / totals)
        inside = np.all(np.abs(centre - t) + half <= eps, axis=1)
        if not np.any(inside):
            return math.inf
        return float(totals[np.argmax(inside), 0] - n0)

    def _next_alpha(self, state: _ConceptState) -> float:
        m = state.candidates + 1
        return self.alpha * (1.0 - self.initial_alpha_share) / (m * (m + 1.0))

    def _round_batch(self, n: float) -> int:
        n = min(max(n, self.n_min), self.n_max_batch)
        return int(math.ceil(n / self.batch_multiple) * self.batch_multiple)

    # ----------------------------------------------------------------------------- the model

    def _fit(self, concept: str, state: _ConceptState) -> LogitLinearResponse | None:
        if len(state.records) < 2:
            return None
        weights = np.stack([r.weights for r in state.records])
        counts = np.stack([r.counts for r in state.records])
        return fit_response(weights, counts, cross_penalty=self.cross_penalty, coupling=self.concepts[concept].coupling)

    @staticmethod
    def _find(state: _ConceptState, weights: np.ndarray) -> int | None:
        return next((i for i, r in enumerate(state.records) if _same_weights(r.weights, weights)), None)

    def _excluded(self, concept: str, record: _WeightRecord) -> bool:
        """True when some cell's confidence sequence at ``record`` lies entirely outside the tolerance."""
        if record.lower is None:
            return False
        spec = self.concepts[concept]
        t, eps = spec.target_array, spec.tolerance
        return bool(np.any((record.upper < t - eps) | (record.lower > t + eps)))

    @staticmethod
    def _degraded(state: _ConceptState, record: _WeightRecord) -> bool:
        """True when images decode here less than half as often as at the unedited weights (the first
        record): the edit is breaking the images, whatever their cells."""
        unedited = state.records[0]
        total, unedited_total = record.n + record.n_invalid, unedited.n + unedited.n_invalid
        if total == 0 or unedited_total == 0:
            return False
        return record.n / total < 0.5 * unedited.n / unedited_total

    def _deviation_bounds(self, concept: str, record: _WeightRecord) -> tuple[float, float]:
        """Bounds at level 1 − α on ``max_j |r_j − t_j|`` at ``record`` from its simultaneous (Goodman)
        intervals over all its images: (the least deviation they allow, the largest)."""
        t = self.concepts[concept].target_array
        if record.n == 0:
            return 0.0, float(np.max(np.maximum(t, 1.0 - t)))
        lower, upper = simultaneous_intervals(record.counts, self.alpha)
        least = float(np.max(np.maximum(np.maximum(lower - t, t - upper), 0.0)))
        largest = float(np.max(np.maximum(upper - t, t - lower)))
        return least, largest

    def _centre(self, concept: str) -> int:
        """Index of the measured weight most surely close to the target: the smallest upper bound on its
        deviation among weights whose images decode (not :meth:`_degraded`); the unedited one if none."""
        state = self._states[concept]
        usable = [i for i, r in enumerate(state.records) if r.n > 0 and not self._degraded(state, r)]
        return min(usable or [0], key=lambda i: self._deviation_bounds(concept, state.records[i])[1])

    # ------------------------------------------------------------------------------ planning

    def _estimate(self, record: _WeightRecord, model: LogitLinearResponse | None) -> tuple[np.ndarray, bool]:
        """Best estimate of the true ratios at ``record``, and whether the model describes it.

        The model's prediction (it uses every observation, including this weight's) unless the pooled
        counts here disagree with it by more than ``misfit_z`` standard errors in some cell (the model
        does not describe this weight well), in which case the pooled ratios.
        """
        if model is None:
            return record.ratios, False
        predicted = model.ratios(record.weights)
        variance = predicted * (1.0 - predicted) / max(record.n, 1) + model.ratio_errors(record.weights) ** 2
        misfit = np.abs(record.ratios - predicted) / np.sqrt(np.maximum(variance, 1e-12))
        if np.max(misfit) > self.misfit_z:
            return record.ratios, False
        return predicted, True

    def _dwell_need(self, concept: str, record: _WeightRecord, model: LogitLinearResponse | None) -> float:
        """Images still needed to certify ``record`` if its ratios are as estimated (inf: cannot be)."""
        if record.alpha is None or self._excluded(concept, record) or self._degraded(self._states[concept], record):
            return math.inf
        return self._images_to_certify(concept, self._estimate(record, model)[0], record.alpha, record)

    def _bracket(self, concept: str, weights: np.ndarray) -> np.ndarray:
        """Keep a two-cell proposal inside the bracket that the measurements establish.

        With two cells the zero-sum weights are ``w = x·(1, −1)/√2`` and r₁ rises with x. A weight is a
        bracket end only when its interval (an anytime-valid one at level ``alpha`` over all its images)
        excludes the target: below on the low side, above on the high side. A proposal outside the
        bracket is moved to the midpoint of the bracket when both ends exist, else mirrored to the right
        side of the one end.
        """
        spec = self.concepts[concept]
        t = spec.target_array[0]
        direction = zero_sum_basis(2)[:, 0]
        mean, strength = self._prior(concept)
        low = high = None
        for record in self._states[concept].records:
            if record.n == 0:
                continue
            lower, upper = confidence_sequence(record.counts[0], record.n, self.alpha, mean[0], strength[0])
            x = float(record.weights @ direction)
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

    def _plan(self, concept: str) -> _Plan:
        """What this concept would do next, from its observations so far (cached per observation)."""
        version = len(self.observations)
        cached = self._plans.get(concept)
        if cached is not None and cached[0] == version:
            return cached[1]
        plan = self._make_plan(concept)
        self._plans[concept] = (version, plan)
        return plan

    def _make_plan(self, concept: str) -> _Plan:
        spec = self.concepts[concept]
        state = self._states[concept]
        t, eps = spec.target_array, spec.tolerance
        if not state.records:
            return _Plan(
                np.zeros(spec.num_cells),
                self._round_batch(self.n_min),
                self.initial_alpha_share * self.alpha,
                "initial",
            )
        current = state.records[state.current]
        model = self._fit(concept, state)
        move_alpha = self._next_alpha(state)
        dwell_need = self._dwell_need(concept, current, model)

        if model is None:
            blind_need = self._images_to_certify(concept, t + self.aim_error * eps, move_alpha)
            if dwell_need <= blind_need:
                return _Plan(current.weights, self._round_batch(0.5 * dwell_need), current.alpha, "dwell")
            direction = push_direction(t - current.ratios, spec.coupling)
            if np.max(np.abs(direction)) < 1e-12:
                direction = zero_sum_basis(spec.num_cells)[:, 0]
            weights = current.weights + self.initial_step * direction / np.max(np.abs(direction))
            return _Plan(weights, self._round_batch(self.n_min), None, "probe")

        centre = state.records[self._centre(concept)]
        step = model.solve(t) - centre.weights
        limited = float(np.linalg.norm(step)) > state.radius
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
        predicted, error = model.ratios(weights), model.ratio_errors(weights)
        # Likely miss of the aimed weight: its predicted offset plus the typical largest error over K cells.
        miss = np.abs(predicted - t) + stats.norm.ppf(1.0 - 0.25 / spec.num_cells) * error
        move_need = self._images_to_certify(concept, t + miss, move_alpha)
        change = np.max(np.abs(predicted - model.ratios(current.weights)))
        consistent = self._estimate(current, model)[1]
        if math.isfinite(dwell_need) and (dwell_need <= move_need or (consistent and change < np.max(error))):
            # Certifying here is no dearer than a fresh weight, or the move is within the model's
            # own uncertainty (closer than what matters): keep pooling at the weight in hand.
            return _Plan(current.weights, self._round_batch(0.5 * dwell_need), current.alpha, "dwell")
        candidate = not limited and np.max(miss) <= self.candidate_miss * eps
        first = self._round_batch(min(self.first_batch_share * move_need, self.first_batch_max))
        existing = self._find(state, weights)
        if existing is not None:
            record = state.records[existing]
            if record.alpha is None:
                if candidate:  # promote: certification starts with the next images
                    return _Plan(record.weights, first, move_alpha, "aim")
                return _Plan(record.weights, self._round_batch(self.n_min), None, "explore")
            need = self._dwell_need(concept, record, model)
            if not math.isfinite(need):
                return _Plan(record.weights, 0, record.alpha, "stuck")
            return _Plan(record.weights, self._round_batch(0.5 * need), record.alpha, "dwell")
        if candidate:
            return _Plan(weights, first, move_alpha, "aim")
        return _Plan(weights, self._round_batch(self.n_min), None, "explore")

    # ----------------------------------------------------------------------------- the contract

    def _record(self, obs: Observation) -> None:
        spec = self.concepts[obs.concept]
        state = self._states[obs.concept]
        weights = np.asarray(obs.weights, dtype=np.float64)
        counts = np.asarray(obs.counts, dtype=np.int64)
        plan = self._plan(obs.concept)  # decided from the data before this batch
        index = self._find(state, weights)
        # A fresh weight is a step from the trust region's centre; the radius is updated after its batch.
        centre = state.records[self._centre(obs.concept)] if index is None and state.records else None
        if index is None:
            zeros = np.zeros(spec.num_cells, dtype=np.int64)
            state.records.append(_WeightRecord(weights.copy(), zeros))
            index = len(state.records) - 1
        record = state.records[index]
        if record.alpha is None and plan.alpha is not None and _same_weights(plan.weights, weights):
            # The weight becomes a certification candidate before any of its certifying images exist.
            record.alpha = plan.alpha
            record.certified_counts = np.zeros(spec.num_cells, dtype=np.int64)
            if plan.kind != "initial":
                state.candidates += 1
        record.counts = record.counts + counts
        record.n_invalid += obs.n_invalid
        if record.alpha is not None:
            record.certified_counts = record.certified_counts + counts
            if record.certified_counts.sum() > 0:
                mean, strength = self._prior(obs.concept)
                lower, upper = simultaneous_confidence_sequence(record.certified_counts, record.alpha, mean, strength)
                record.lower = lower if record.lower is None else np.maximum(record.lower, lower)
                record.upper = upper if record.upper is None else np.minimum(record.upper, upper)
                t, eps = spec.target_array, spec.tolerance
                state.converged = bool(np.all(record.lower >= t - eps) and np.all(record.upper <= t + eps))
        if centre is not None:
            self._update_radius(obs.concept, centre, record)
        state.current = index
        state.iterations += 1
        state.last_counts = counts
        state.last_invalid = obs.n_invalid

    def _update_radius(self, concept: str, centre: _WeightRecord, record: _WeightRecord) -> None:
        """Trust-region update after the first batch at a fresh weight, stepped from ``centre``."""
        state = self._states[concept]
        length = float(np.linalg.norm(record.weights - centre.weights))
        if state.radius is None:  # the probe: the first step sets the scale
            state.radius = self.growth * length
            return
        failed = (
            record.n == 0
            or self._degraded(state, record)
            or self._deviation_bounds(concept, record)[0] > self._deviation_bounds(concept, centre)[1]
        )
        if failed:
            state.radius = 0.5 * length
        elif length >= state.radius * (1.0 - 1e-9):
            state.radius *= self.growth

    def _fit_to_budget(self, wanted: int, left: int) -> int:
        granted = min(wanted, left // self.batch_multiple * self.batch_multiple)
        return granted if granted >= self.batch_multiple else 0

    def _reason(self, concept: str) -> str:
        state = self._states[concept]
        if state.converged:
            return "converged"
        if state.iterations >= self.max_iterations:
            return "max_iterations"
        left = self.budget_left
        if left is not None and left < self.batch_multiple:
            return "budget"
        if self._plan(concept).kind == "stuck":
            return "stuck"
        return "running"

    def _wanted(self, concept: str) -> Proposal | None:
        if self._reason(concept) != "running":
            return None
        plan = self._plan(concept)
        return Proposal(concept, plan.weights.copy(), self.mode, plan.n_images)

    def _best(self, concept: str) -> _WeightRecord | None:
        """The record to report: the certified one when converged, else the trust region's centre (the
        weight most surely close to the target, not the luckiest small batch)."""
        state = self._states[concept]
        if not state.records:
            return None
        if state.converged:
            return state.records[state.current]
        return state.records[self._centre(concept)]

    def status(self, concept: str) -> ConceptStatus:
        spec = self.concepts[concept]
        state = self._states[concept]
        reason = self._reason(concept)
        best = self._best(concept)
        last = pooled = None
        if state.last_counts is not None:
            last = Distribution.from_counts(state.last_counts, spec.target, state.last_invalid)
        if best is not None:
            pooled = Distribution.from_counts(best.counts, spec.target, best.n_invalid)
        certified = best is not None and best.lower is not None
        return ConceptStatus(
            concept=concept,
            finished=reason != "running",
            converged=state.converged,
            reason=reason,
            mode=self.mode,
            iterations=state.iterations,
            images_used=self.concept_images(concept),
            weights=np.zeros(spec.num_cells) if best is None else best.weights.copy(),
            last=last,
            pooled=pooled,
            certificate_lower=tuple(float(x) for x in best.lower) if certified else None,
            certificate_upper=tuple(float(x) for x in best.upper) if certified else None,
            certificate_alpha=best.alpha if certified else None,
        )
