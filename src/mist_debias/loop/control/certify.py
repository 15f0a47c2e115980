"""Certificates on fresh images: an intersection–union equivalence test, its α spending, its sizing.

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

**α spending over weights and looks.** A run may look at several weights (a failed look's images feed the
search and a corrected weight gets a new look), and several times at one weight (a larger pooled look).
The i-th weight looked at (a *site*) may spend ``β_i = α s (1 − s)^(i−1)`` in all (Σ_i β_i ≤ α), fixed
before its first image is drawn; its k-th look spends ``β_i f (1 − f)^(k−1)`` of it (``f`` =
:data:`SITE_FIRST_LOOK_SHARE`). The fresh images of a site are drawn at a weight chosen before any of them
existed, on seeds nothing else used, in cumulative numbers fixed at its first look (``n₁ · 2^k``); so each
site is a fixed group-sequential design, falsely certifying with probability ≤ β_i whatever the search
did before and whenever it stops looking there, and by the union bound over sites P(any false certificate)
≤ α per concept (Lan & DeMets 1983 α-spending, with a Bonferroni split across sites).

**Pooled looks at one weight** (:func:`certifies_sequentially`). When a look at a weight fails, the next look
there adds fresh images and tests the pooled count. The pooled counts of successive looks are strongly
correlated, so the union bound over them wastes α; instead each side of each cell gets exact group-sequential
boundaries (Jennison & Turnbull 2000, ch. 12, exact binomial computation; α-spending in the sense of Lan &
DeMets 1983): look k rejects ``r_j ≤ t_j − ε`` when the pooled count ``X_k ≥ c_k``, with ``c_k`` the smallest
count such that, at ``r_j = t_j − ε``, ``P(X_i ≥ c_i for some i ≤ k) ≤ α_1 + … + α_k`` — the probability
computed exactly by convolving the binomial distributions of each look's new images over the paths that have
not crossed. The looks' sizes and α's are fixed before their images are seen, so the boundaries are too
(given the numbers of valid images, on which every look conditions as a one-look test does); stopping
early only lowers the chance of crossing. Look 1's boundary is the
Clopper–Pearson test's, and later looks certify with fewer images than separate Clopper–Pearson tests at
α_k would need, at the same total α. The reported bounds are the repeated confidence bounds of this test
(the least and largest ratio it does not reject at the last look).

**Sizing.** :func:`look_success` predicts the chance a look of n images certifies when the ratios at its
weight are believed to be ``m_j ± τ_j`` (normal), using the normal approximation of the bounds;
:func:`plan_look` picks the n that minimises the expected images per certificate, ``n / P(success)``.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from mist_debias.measure.metrics import clopper_pearson_interval

CERTIFICATE_METHOD = (
    "fresh-seed Clopper–Pearson TOST (one-sided α per side, every cell; intersection–union), exact"
    " group-sequential bounds after pooled looks"
)
CERTIFICATE_INTERVAL = "clopper-pearson-tost"  # per-cell two-sided 1 − 2α intervals (not simultaneous)
SEQUENTIAL_INTERVAL = "group-sequential-tost"  # the same after pooled looks: repeated bounds, exact binomial
SITE_FIRST_LOOK_SHARE = 0.9  # a weight's first look spends this share of the α set aside for that weight


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


def crossing_boundaries(sizes, alphas, null_ratio: float) -> list[int]:
    """Smallest pooled counts ``c_k`` with ``P(X_i ≥ c_i for some i ≤ k) ≤ α_1 + … + α_k`` when every image
    falls in the cell with probability ``null_ratio``; ``X_k`` counts the first ``sizes[k]`` images
    (cumulative, increasing). A boundary of ``sizes[k] + 1`` means look k cannot reject."""
    boundaries: list[int] = []
    alive = np.ones(1)  # distribution of the pooled count over paths that have not crossed
    spent, previous, allowed = 0.0, 0, 0.0
    for size, alpha in zip(sizes, alphas, strict=True):
        size = int(size)
        alive = np.convolve(alive, stats.binom.pmf(np.arange(size - previous + 1), size - previous, null_ratio))
        tail = np.cumsum(alive[::-1])[::-1]  # tail[c] = P(not crossed before, X_k ≥ c)
        allowed += float(alpha)
        inside = np.flatnonzero(tail <= allowed - spent)
        boundary = int(inside[0]) if len(inside) else size + 1
        if boundary <= size:
            spent += float(tail[boundary])
            alive[boundary:] = 0.0
        boundaries.append(boundary)
        previous = size
    return boundaries


def _rejects_below(counts, sizes, alphas, null_ratio: float) -> bool:
    """Group-sequential test of ``ratio ≤ null_ratio`` at the last look (see the module docstring)."""
    if null_ratio <= 0.0:
        return counts[-1] > 0
    if null_ratio >= 1.0:
        return False
    return counts[-1] >= crossing_boundaries(sizes, alphas, null_ratio)[-1]


def _repeated_lower_bound(counts, sizes, alphas, tolerance: float = 1e-7) -> float:
    """The largest null ratio the test still rejects (the test's repeated lower confidence bound)."""
    low, high = 0.0, counts[-1] / sizes[-1]
    if not _rejects_below(counts, sizes, alphas, low):
        return 0.0
    while high - low > tolerance:
        middle = 0.5 * (low + high)
        low, high = (middle, high) if _rejects_below(counts, sizes, alphas, middle) else (low, middle)
    return low


def certifies_sequentially(looks, target, tolerance: float, alphas) -> tuple[bool, np.ndarray, np.ndarray]:
    """The certificate after pooled looks at one weight: ``looks`` are the per-cell counts of each look's new
    images, ``alphas`` what each look spends. Returns (every cell's group-sequential bounds inside
    ``[t_j − ε, t_j + ε]`` at the last look, lower bounds, upper bounds). With one look this is
    :func:`certifies`."""
    looks = np.atleast_2d(np.asarray(looks, dtype=np.int64))
    if len(looks) == 1:
        return certifies(looks[0], target, tolerance, alphas[0])
    target = np.asarray(target, dtype=np.float64)
    pooled = np.cumsum(looks, axis=0)
    sizes = pooled.sum(axis=1)
    lower = np.array([_repeated_lower_bound(pooled[:, j], sizes, alphas) for j in range(looks.shape[1])])
    upper = 1.0 - np.array([_repeated_lower_bound(sizes - pooled[:, j], sizes, alphas) for j in range(looks.shape[1])])
    passed = all(
        _rejects_below(pooled[:, j], sizes, alphas, t - tolerance)
        and _rejects_below(sizes - pooled[:, j], sizes, alphas, 1.0 - t - tolerance)
        for j, t in enumerate(target)
    )
    return bool(passed), lower, upper


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
