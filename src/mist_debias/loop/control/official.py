"""The published MIST feedback loop, reproduced so results can be compared with the paper's procedure.

Per concept, iteration k generates ``n_images`` with the current (compounded) model and measures the
cell ratios r from that batch alone. It stops when every ``|r_j − t_j| < ε`` on these point estimates
(no interval: the stop is not a certificate). Otherwise it proposes the increment

    w_j = step · (t_j − r_j),     step = 0.1,

which the loop applies on top of the current W (mode ``"increment"``). The first proposal is the zero
increment, i.e. a measurement of the unedited model (a MIST edit with all weights 0 leaves W unchanged).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mist_debias.loop.control.base import ConceptStatus, ConceptTarget, Controller, Observation, Proposal
from mist_debias.measure.metrics import Distribution


@dataclass
class _OfficialState:
    iterations: int = 0
    applied: np.ndarray | None = None
    last_counts: np.ndarray | None = None
    last_invalid: int = 0
    converged: bool = False


class OfficialController(Controller):
    """Fixed ``n_images`` per iteration, increments ``step · (t − r)``, point-estimate stop.

    ``max_iterations`` counts measurements, the first (unedited) one included.
    """

    name = "official"
    mode = "increment"

    def __init__(
        self,
        concepts: Sequence[ConceptTarget],
        budget: int | None = None,
        n_images: int = 128,
        step: float = 0.1,
        max_iterations: int = 20,
    ) -> None:
        super().__init__(concepts, budget)
        if n_images <= 0 or step <= 0 or max_iterations <= 0:
            raise ValueError("n_images, step and max_iterations must be positive")
        self.n_images = int(n_images)
        self.step = float(step)
        self.max_iterations = int(max_iterations)
        self._states = {name: _OfficialState(applied=np.zeros(c.num_cells)) for name, c in self.concepts.items()}

    def _last_ratios(self, state: _OfficialState) -> np.ndarray | None:
        if state.last_counts is None or state.last_counts.sum() == 0:
            return None
        return state.last_counts / state.last_counts.sum()

    def _record(self, obs: Observation) -> None:
        state = self._states[obs.concept]
        target = self.concepts[obs.concept].target_array
        state.iterations += 1
        state.applied = state.applied + np.asarray(obs.weights)
        state.last_counts = np.asarray(obs.counts, dtype=np.int64)
        state.last_invalid = obs.n_invalid
        ratios = self._last_ratios(state)
        tolerance = self.concepts[obs.concept].tolerance
        state.converged = ratios is not None and bool(np.all(np.abs(ratios - target) < tolerance))

    def _reason(self, concept: str) -> str:
        state = self._states[concept]
        if state.converged:
            return "converged"
        if state.iterations >= self.max_iterations:
            return "max_iterations"
        left = self.budget_left
        if left is not None and left < self.n_images:
            return "budget"
        return "running"

    def _fit_to_budget(self, wanted: int, left: int) -> int:
        return wanted if wanted <= left else 0

    def _wanted(self, concept: str) -> Proposal | None:
        if self._reason(concept) != "running":
            return None
        state = self._states[concept]
        ratios = self._last_ratios(state)
        target = self.concepts[concept].target_array
        increment = np.zeros(len(target)) if ratios is None else self.step * (target - ratios)
        return Proposal(concept, increment, self.mode, self.n_images)

    def status(self, concept: str) -> ConceptStatus:
        state = self._states[concept]
        reason = self._reason(concept)
        target = self.concepts[concept].target
        last = None
        if state.last_counts is not None:
            last = Distribution.from_counts(state.last_counts, target, state.last_invalid)
        return ConceptStatus(
            concept=concept,
            finished=reason != "running",
            converged=state.converged,
            reason=reason,
            mode=self.mode,
            iterations=state.iterations,
            images_used=self.concept_images(concept),
            weights=state.applied.copy(),
            last=last,
            pooled=last,
        )
