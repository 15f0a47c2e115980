"""Simulated plants for the feedback controllers: a known smooth map from edit weights to cell ratios.

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

:class:`SeededPlant` is the same map with the world's common random numbers: every seed s carries fixed
Gumbel noise ``g_s`` (K values), and its image at weights w falls in the cell

    cell_s(w) = argmax_j (a_j + (B φ(w))_j + g_{s,j}),

which over random seeds is exactly ``softmax(a + B φ(w))`` (the Gumbel-max trick) while each seed keeps its
own cell at nearby weights and, with two cells, flips once at its own threshold weight — the share at w is
the distribution function of the seeds' thresholds, as measured on the world. A seed is undecodable when
its fixed uniform ``u_s`` falls below the undecodable rate (or beyond the decodable limit), and it no
longer shows the concept when ``max_j |w_j|`` exceeds its own loss threshold ``L_s = loss_radius · E_s^(1/4)``,
``E_s`` a fixed Exp(1) draw: the share kept is ``exp(−(max_j |w_j| / loss_radius)⁴)``, flat for small edits
and falling steeply as edits grow (95% of the unedited share at ``max_j |w_j| ≈ 0.48 · loss_radius``).

A share ``p`` of the seeds may carry *steep* noise ``σ g_s`` (σ = ``steep_scale`` < 1, chosen by another fixed
uniform): those seeds flip within a narrow band of weights, and the population's ratios are the mixture
``p · softmax(ℓ(w)/σ) + (1 − p) · softmax(ℓ(w))`` — steeper near balance and with heavier tails than any
logit-linear response, as the world's doctor (83% of seeds at σ = 0.065 fit its measured share at seven
weights to within 0.006).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
from scipy import special

from mist_debias.loop.control.base import Controller, encode_labels


def plant_logits(offsets: np.ndarray, gain: np.ndarray, saturation: float | None, weights) -> np.ndarray:
    """``offsets + gain @ φ(w)`` with ``φ(w) = c · tanh(w / c)`` (``φ(w) = w`` when the saturation c is None)."""
    w = np.asarray(weights, dtype=np.float64)
    if saturation is not None:
        w = saturation * np.tanh(w / saturation)
    return offsets + gain @ w


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
        return special.softmax(plant_logits(self.offsets, self.gain, self.saturation, weights))

    def sample(self, weights, n: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """Classify ``n`` simulated images: (per-cell counts over the valid ones, number invalid)."""
        if self.decodable_limit is not None and np.max(np.abs(weights)) > self.decodable_limit:
            return np.zeros(self.num_cells, dtype=np.int64), n
        n_invalid = int(rng.binomial(n, self.invalid_rate)) if self.invalid_rate > 0 else 0
        counts = rng.multinomial(n - n_invalid, self.ratios(weights))
        return counts, n_invalid


_SEED_BLOCK = 4096
_LOSS_SHAPE = 4.0


def product_coupling(axis_sizes: Sequence[int]) -> np.ndarray:
    """``C_jk`` = the share of axes on which cells j and k agree (cells row-major over the axes): the
    correlations of cell directions that are sums of one unit direction per axis value, the same length each."""
    cells = np.array(list(itertools.product(*[range(size) for size in axis_sizes])))
    return np.mean(cells[:, None, :] == cells[None, :, :], axis=2)


@dataclass(frozen=True)
class SeededPlant:
    """``cell_s(w) = argmax_j (offsets + gain @ φ(w) + g_s)_j`` per seed (see the module docstring).

    ``noise_seed`` fixes the seeds' draws (one population of seeds per value); ``loss_radius`` None means
    no edit loses the concept; ``coupling`` is what a run would compute for this edit's cells
    (:meth:`~mist_debias.core.targets.EditProblem.coupling`), None when it is not known.
    """

    offsets: np.ndarray
    gain: np.ndarray
    saturation: float | None = None
    invalid_rate: float = 0.0
    decodable_limit: float | None = None
    loss_radius: float | None = None
    noise_seed: int = 0
    coupling: np.ndarray | None = None
    steep_share: float = 0.0
    steep_scale: float = 1.0

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
        loss_radius: float | None = None,
        noise_seed: int = 0,
    ) -> SeededPlant:
        """Same parametrisation as :meth:`SoftmaxPlant.from_ratios`, plus the seeds' population."""
        base = SoftmaxPlant.from_ratios(initial_ratios, scale, cross, seed, saturation, invalid_rate, decodable_limit)
        return cls(base.offsets, base.gain, saturation, invalid_rate, decodable_limit, loss_radius, noise_seed)

    @classmethod
    def from_axes(cls, axis_ratios: Sequence[Sequence[float]], scale: float, **options) -> SeededPlant:
        """Cells that are products of axes (gender × age …, row-major), with an edit whose cells' directions
        add up axis by axis: ``gain = scale · C``, ``C`` = :func:`product_coupling`. The unedited ratios are
        the product of the axes' ratios, and so stay a product at every weight: the edit moves each axis's
        share, never how the axes go together (the interaction directions are C's null space). The plant
        knows its coupling. ``options``: as :meth:`from_ratios` (without ``cross`` and ``seed``)."""
        coupling = product_coupling([len(ratios) for ratios in axis_ratios])
        log_ratios = [np.log(np.asarray(ratios, dtype=np.float64)) for ratios in axis_ratios]
        offsets = np.sum(np.stack(np.meshgrid(*log_ratios, indexing="ij")), axis=0).ravel()
        return cls(offsets - offsets.mean(), scale * coupling, coupling=coupling, **options)

    def with_noise_seed(self, noise_seed: int) -> SeededPlant:
        """The same plant over another population of seeds."""
        return replace(self, noise_seed=noise_seed)

    @property
    def num_cells(self) -> int:
        return len(self.offsets)

    @cached_property
    def _blocks(self) -> dict[int, np.ndarray]:
        return {}

    def _draws(self, seeds: np.ndarray) -> np.ndarray:
        """Per seed: K Gumbel values, a uniform (undecodable when below the rate), an Exp(1) (concept loss), a
        uniform (steep noise when below the steep share)."""
        rows = np.empty((len(seeds), self.num_cells + 3))
        for block in np.unique(seeds // _SEED_BLOCK):
            if block not in self._blocks:
                rng = np.random.default_rng([self.noise_seed, int(block)])
                self._blocks[block] = np.column_stack(
                    [
                        rng.gumbel(size=(_SEED_BLOCK, self.num_cells)),
                        rng.uniform(size=_SEED_BLOCK),
                        rng.exponential(size=_SEED_BLOCK),
                        rng.uniform(size=_SEED_BLOCK),
                    ]
                )
            where = seeds // _SEED_BLOCK == block
            rows[where] = self._blocks[block][seeds[where] % _SEED_BLOCK]
        return rows

    def logits(self, weights) -> np.ndarray:
        return plant_logits(self.offsets, self.gain, self.saturation, weights)

    def ratios(self, weights) -> np.ndarray:
        """The true cell ratios at absolute weights ``w`` (over the whole seed population)."""
        logits = self.logits(weights)
        wide = special.softmax(logits)
        if self.steep_share == 0.0:
            return wide
        return self.steep_share * special.softmax(logits / self.steep_scale) + (1.0 - self.steep_share) * wide

    def kept_share(self, weights) -> float:
        """The true share of images that still show the concept at ``w``."""
        if self.loss_radius is None:
            return 1.0
        return float(np.exp(-((np.max(np.abs(weights)) / self.loss_radius) ** _LOSS_SHAPE)))

    def classify(self, weights, seeds) -> tuple[np.ndarray, np.ndarray]:
        """Per seed: its cell (−1 when undecodable) and whether it still shows the concept."""
        seeds = np.asarray(seeds, dtype=np.int64)
        draws = self._draws(seeds)
        scale = np.where(draws[:, self.num_cells + 2] < self.steep_share, self.steep_scale, 1.0)
        cells = np.argmax(self.logits(weights) + scale[:, None] * draws[:, : self.num_cells], axis=1)
        invalid = draws[:, self.num_cells] < self.invalid_rate
        if self.decodable_limit is not None and np.max(np.abs(weights)) > self.decodable_limit:
            invalid[:] = True
        kept = np.ones(len(seeds), dtype=bool)
        if self.loss_radius is not None:
            threshold = self.loss_radius * draws[:, self.num_cells + 1] ** (1.0 / _LOSS_SHAPE)
            kept = threshold > np.max(np.abs(weights))
        return np.where(invalid, -1, cells), kept & ~invalid

    def sample_seeds(self, weights, seeds) -> tuple[np.ndarray, int, int]:
        """(per-cell counts over the valid images, number invalid, valid images still showing the concept)."""
        cells, kept = self.classify(weights, seeds)
        valid = cells >= 0
        return np.bincount(cells[valid], minlength=self.num_cells), int((~valid).sum()), int(kept.sum())


# Simulated loops keep the loop's own seeds (proposals that name none) apart from named ones.
_LOOP_SEED_OFFSET = 50_000_000


@dataclass
class SimulationResult:
    """Per concept: the effective absolute weights at the end and the images the controller drew."""

    final_weights: dict[str, np.ndarray] = field(default_factory=dict)
    rounds: int = 0


def simulate(
    controller: Controller,
    plants: dict[str, SoftmaxPlant | SeededPlant],
    seed: int = 0,
    max_rounds: int = 1000,
) -> SimulationResult:
    """Drive ``controller`` against ``plants`` until it proposes nothing (or ``max_rounds``).

    Absolute proposals are sampled at their weights; increment proposals at the running sum of the
    increments for that concept. The final weights are what the edit would be built from: the
    controller's reported weights for ``absolute`` controllers, the accumulated increments otherwise.
    A :class:`SeededPlant` classifies the proposal's named seeds, or (like the debias loop) fresh seeds
    counted per concept when it names none; ``seed`` then plays no part (the plant's ``noise_seed`` does).
    """
    rng = np.random.default_rng(seed)
    accumulated = {name: np.zeros(plant.num_cells) for name, plant in plants.items()}
    loop_seeds = dict.fromkeys(plants, _LOOP_SEED_OFFSET)
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
            plant = plants[proposal.concept]
            if isinstance(plant, SeededPlant):
                seeds = proposal.seeds()
                if seeds is None:
                    start = loop_seeds[proposal.concept]
                    seeds = range(start, start + proposal.n_images)
                    loop_seeds[proposal.concept] += proposal.n_images
                cells, shows = plant.classify(effective, np.asarray(seeds))
                controller.observe_labels(proposal, encode_labels(cells, shows, plant.num_cells))
            else:
                counts, n_invalid = plant.sample(effective, proposal.n_images, rng)
                controller.observe(proposal.concept, proposal.weights, counts, n_invalid)
    for name in plants:
        status = controller.status(name)
        result.final_weights[name] = accumulated[name] if status.mode == "increment" else status.weights
    return result
