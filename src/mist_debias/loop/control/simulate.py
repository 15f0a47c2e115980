"""A simulated plant for the feedback controllers: a known smooth map from edit weights to cell ratios.

The real plant is "edit the model with weights w, generate n images, classify them". Here it is

    r(w) = softmax(a + B φ(w)),      φ(w)_j = c · tanh(w_j / c)  (or φ(w) = w when c is None),

sampled with multinomial noise (and an optional rate of images the classifier cannot decode, or a weight
beyond which no image decodes: an edit pushed past its range). The gain
matrix B sets the weight scale the controller has to discover: a small scale needs large weights, a
large scale makes fixed steps overshoot. Its off-diagonal part models attribute directions that also
move other cells; the saturation c models a response that flattens for large weights.

``increment`` proposals (the official, compounding loop) are simulated to first order: the effective
absolute weight is the running sum of the increments. (In the real compounding edit ``‖W c_s‖`` and the
attribute directions are recomputed from the current W, which this does not model.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import special

from mist_debias.loop.control.base import Controller


@dataclass(frozen=True)
class SoftmaxPlant:
    """``r(w) = softmax(offsets + gain @ φ(w))`` with multinomial sampling noise; no image decodes where
    ``max_j |w_j| > decodable_limit``."""

    offsets: np.ndarray
    gain: np.ndarray
    saturation: float | None = None
    invalid_rate: float = 0.0
    decodable_limit: float | None = None

    @classmethod
    def from_ratios(
        cls,
        initial_ratios,
        scale: float,
        cross: float = 0.0,
        seed: int = 0,
        saturation: float | None = None,
        invalid_rate: float = 0.0,
        decodable_limit: float | None = None,
    ) -> SoftmaxPlant:
        """A plant whose unedited ratios are ``initial_ratios`` and whose gain is
        ``B = scale · (I + cross · G)``, G a seeded standard-normal K×K matrix divided by sqrt(K)."""
        r0 = np.asarray(initial_ratios, dtype=np.float64)
        num_cells = len(r0)
        noise = np.random.default_rng(seed).standard_normal((num_cells, num_cells)) / np.sqrt(num_cells)
        gain = scale * (np.eye(num_cells) + cross * noise)
        return cls(np.log(r0), gain, saturation, invalid_rate, decodable_limit)

    @property
    def num_cells(self) -> int:
        return len(self.offsets)

    def ratios(self, weights) -> np.ndarray:
        """The true cell ratios at absolute weights ``w``."""
        w = np.asarray(weights, dtype=np.float64)
        if self.saturation is not None:
            w = self.saturation * np.tanh(w / self.saturation)
        return special.softmax(self.offsets + self.gain @ w)

    def sample(self, weights, n: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """Classify ``n`` simulated images: (per-cell counts over the valid ones, number invalid)."""
        if self.decodable_limit is not None and np.max(np.abs(weights)) > self.decodable_limit:
            return np.zeros(self.num_cells, dtype=np.int64), n
        n_invalid = int(rng.binomial(n, self.invalid_rate)) if self.invalid_rate > 0 else 0
        counts = rng.multinomial(n - n_invalid, self.ratios(weights))
        return counts, n_invalid


@dataclass
class SimulationResult:
    """Per concept: the effective absolute weights at the end and the images the controller drew."""

    final_weights: dict[str, np.ndarray] = field(default_factory=dict)
    rounds: int = 0


def simulate(
    controller: Controller, plants: dict[str, SoftmaxPlant], seed: int = 0, max_rounds: int = 1000
) -> SimulationResult:
    """Drive ``controller`` against ``plants`` until it proposes nothing (or ``max_rounds``).

    Absolute proposals are sampled at their weights; increment proposals at the running sum of the
    increments for that concept. The final weights are what the edit would be built from: the
    controller's reported weights for ``absolute`` controllers, the accumulated increments otherwise.
    """
    rng = np.random.default_rng(seed)
    accumulated = {name: np.zeros(plant.num_cells) for name, plant in plants.items()}
    result = SimulationResult()
    for _ in range(max_rounds):
        proposals = controller.propose()
        if not proposals:
            break
        result.rounds += 1
        for proposal in proposals:
            if proposal.mode == "increment":
                accumulated[proposal.concept] = accumulated[proposal.concept] + proposal.weights
                effective = accumulated[proposal.concept]
            else:
                effective = proposal.weights
            counts, n_invalid = plants[proposal.concept].sample(effective, proposal.n_images, rng)
            controller.observe(proposal.concept, proposal.weights, counts, n_invalid)
    for name in plants:
        status = controller.status(name)
        result.final_weights[name] = accumulated[name] if status.mode == "increment" else status.weights
    return result
