"""One-look certificates on fresh images: an intersection–union equivalence test, its α spending, its sizing.

A certificate says every cell's true ratio lies within the tolerance: ``|r_j − t_j| ≤ ε`` for all j. It is
decided on ``n`` images drawn at one weight on seeds that nothing before has used (their weight was chosen
before any of them existed), looked at once.

**The test.** Per cell, two one-sided tests (Schuirmann 1987, "TOST"): reject ``r_j < t_j − ε`` when the
one-sided lower Clopper–Pearson bound at level ``α_m`` is ≥ ``t_j − ε``, and ``r_j > t_j + ε`` when the
upper bound is ≤ ``t_j + ε`` — together, the two-sided Clopper–Pearson interval at level ``1 − 2α_m`` lies
inside the tolerance. The certificate needs this in every cell. Its null hypothesis ("some cell is
outside") is a union, so the all-cells test is an intersection–union test (Berger 1982, Stat. Sci. 1996):
if cell j is truly outside, on one side, the certificate needs that side's one-sided bound to be wrong,
which happens with probability ≤ α_m. No correction over the K cells and none for the two sides is
needed: P(certificate | some cell outside) ≤ α_m, for every K.

**α spending over looks.** A run may look several times (a failed look's images feed the search and a
corrected weight gets a new look, or the same weight a larger pooled look). Look m, counted over the
concept, spends ``α_m = α s (1 − s)^(m−1)`` (Σ_m α_m ≤ α). A look's interval uses the fresh images at its
weight, whose cumulative number was fixed before the first of them was drawn (sizes ``n₁ · 2^k`` at one
weight), so each is a fixed-n interval; by the union bound over looks, P(any false certificate) ≤ α per
concept — the group-sequential "α-spending" idea (Lan & DeMets 1983) in its simplest, Bonferroni form.

**Sizing.** :func:`look_success` predicts the chance a look of n images certifies when the ratios at its
weight are believed to be ``m_j ± τ_j`` (normal), using the normal approximation of the bounds;
:func:`plan_look` picks the n that minimises the expected images per certificate, ``n / P(success)``.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from mist_debias.measure.metrics import clopper_pearson_interval

CERTIFICATE_METHOD = "one-look Clopper–Pearson TOST (one-sided α per side, every cell; intersection–union)"
CERTIFICATE_INTERVAL = "clopper-pearson-tost"  # per-cell two-sided 1 − 2α intervals (not simultaneous)


def look_alpha(alpha: float, first_share: float, look: int) -> float:
    """α of look number ``look`` (1-based): ``α s (1 − s)^(look − 1)``; the sum over all looks is α."""
    return alpha * first_share * (1.0 - first_share) ** (look - 1)


def equivalence_bounds(counts, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: one-sided Clopper–Pearson bounds at level ``alpha`` each (the two-sided 1 − 2α interval)."""
    counts = np.asarray(counts, dtype=np.float64)
    return clopper_pearson_interval(counts, counts.sum(), 2.0 * alpha)


def certifies(counts, target, tolerance: float, alpha: float) -> tuple[bool, np.ndarray, np.ndarray]:
    """(every cell's bounds inside ``[t_j − ε, t_j + ε]``, lower bounds, upper bounds)."""
    target = np.asarray(target, dtype=np.float64)
    lower, upper = equivalence_bounds(counts, alpha)
    if np.sum(counts) == 0:
        return False, lower, upper
    inside = np.all(lower >= target - tolerance - 1e-12) and np.all(upper <= target + tolerance + 1e-12)
    return bool(inside), lower, upper


def look_success(n, mean, spread, target, tolerance: float, alpha: float) -> np.ndarray:
    """Predicted chance that a look of ``n`` valid images certifies (vectorised over ``n``).

    The true ratio of cell j is believed ``N(m_j, τ_j²)`` and the look estimates it with sampling variance
    ``v_j / n``, ``v_j = m_j (1 − m_j)``; the cell passes when ``|r̂_j − t_j| ≤ ε − z √(v_j / n)``,
    ``z = Φ⁻¹(1 − α)``. Cells are treated as independent (with two cells, one cell decides both).
    """
    n = np.atleast_1d(np.asarray(n, dtype=np.float64))[:, None]
    mean = np.clip(np.asarray(mean, dtype=np.float64), 1e-3, 1 - 1e-3)
    spread = np.asarray(spread, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if len(mean) == 2:
        mean, spread, target = mean[:1], spread[:1], target[:1]
    variance = mean * (1.0 - mean)
    half = stats.norm.ppf(1.0 - alpha) * np.sqrt(variance / n)
    scale = np.sqrt(spread**2 + variance / n)
    room = np.maximum(tolerance - half, 0.0)
    inside = stats.norm.cdf((target + room - mean) / scale) - stats.norm.cdf((target - room - mean) / scale)
    return np.prod(np.where(room > 0, inside, 0.0), axis=1)


def plan_look(mean, spread, target, tolerance: float, alpha: float, sizes: np.ndarray) -> tuple[int, float]:
    """The look size among ``sizes`` with the fewest expected images per certificate, and its success chance."""
    success = look_success(sizes, mean, spread, target, tolerance, alpha)
    cost = np.where(success > 0, sizes / np.maximum(success, 1e-300), np.inf)
    best = int(np.argmin(cost))
    return int(sizes[best]), float(success[best])
