"""Statistics of cell distributions: intervals, confidence sequences, Δ, KL, marginals, CLEAM correction.

Binomial and simultaneous multinomial intervals, the exact McNemar test and the multiple-testing correction
come from statsmodels, KL from scipy; the anytime-valid confidence sequence, which no well-kept library has, is
written out here with its equations.

Every ratio measured from ``n`` classified images is an estimate: at ``p = 0.5, n = 100`` its 95% interval
is ±0.098. This module gives the intervals that belong with each ratio, the summary numbers a report
needs, and an anytime-valid confidence sequence for procedures that look at the data after every batch.

Conventions: ``counts`` are hard per-cell counts over the *valid* images (length K); ratios are
``r = counts / n`` with ``n = Σ counts``; intervals are at level ``1 − alpha``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import multinomial_proportions_confint, proportion_confint

INTERVAL_METHODS = ("wilson", "clopper-pearson")
_EDGE = 1e-15  # root brackets for the confidence sequence stay this far inside (0, 1)


def _binomial_confint(successes, n, alpha: float, method: str) -> tuple[np.ndarray, np.ndarray]:
    """statsmodels' ``proportion_confint`` vectorised over ``successes``; ``n = 0`` gives the vacuous [0, 1]."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n, dtype=np.float64), k.shape)
    lower, upper = np.zeros(k.shape), np.ones(k.shape)
    sampled = n > 0
    if np.any(sampled):
        low, high = proportion_confint(k[sampled], n[sampled], alpha=alpha, method=method)
        lower[sampled] = np.clip(low, 0.0, 1.0)
        upper[sampled] = np.clip(high, 0.0, 1.0)
    return lower, upper


def wilson_interval(successes, n, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for a binomial proportion (statsmodels, vectorised over ``successes``).

    With ``p̂ = k/n`` and ``z = Φ⁻¹(1 − α/2)`` it is the set ``{p : |p̂ − p| ≤ z sqrt(p(1 − p)/n)}``::

        centre = (p̂ + z²/(2n)) / (1 + z²/n)
        half   = z / (1 + z²/n) · sqrt(p̂(1 − p̂)/n + z²/(4n²))

    Returns ``(lower, upper)`` clipped to [0, 1]. ``n = 0`` gives the vacuous interval [0, 1].
    """
    return _binomial_confint(successes, n, alpha, "wilson")


def clopper_pearson_interval(successes, n, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Clopper–Pearson) interval: the α/2 and 1 − α/2 quantiles of Beta distributions (statsmodels'
    ``method="beta"``).

    ``lower = Beta⁻¹(α/2; k, n − k + 1)`` (0 when k = 0), ``upper = Beta⁻¹(1 − α/2; k + 1, n − k)``
    (1 when k = n). Coverage is at least ``1 − alpha`` for every p.
    """
    return _binomial_confint(successes, n, alpha, "beta")


def binomial_interval(successes, n, alpha: float = 0.05, method: str = "wilson"):
    """Dispatch to :func:`wilson_interval` or :func:`clopper_pearson_interval`."""
    if method == "wilson":
        return wilson_interval(successes, n, alpha)
    if method == "clopper-pearson":
        return clopper_pearson_interval(successes, n, alpha)
    raise ValueError(f"unknown interval method {method!r}; choose one of {INTERVAL_METHODS}")


def simultaneous_alpha(num_cells: int, alpha: float) -> float:
    """Per-cell level that makes K cell intervals hold jointly with probability ≥ 1 − alpha (Bonferroni).

    For K = 2 the two cells are complementary (r₂ = 1 − r₁) and their intervals cover or miss together,
    so no adjustment is needed; for K ≥ 3 the level is ``alpha / K``.
    """
    return alpha if num_cells <= 2 else alpha / num_cells


def simultaneous_intervals(counts, alpha: float = 0.05, method: str = "wilson"):
    """Intervals for all K cell ratios that hold *jointly* with probability ≥ 1 − alpha.

    ``method="wilson"``: Goodman's (1965) simultaneous multinomial intervals for K ≥ 3 (statsmodels'
    ``multinomial_proportions_confint(method="goodman")``),
    ``(A + 2 n_j ± sqrt(A (A + 4 n_j (n − n_j) / n))) / (2 (n + A))`` with ``A = χ²₁(1 − α/K)`` — the Wilson
    interval with ``z² = A``, i.e. Bonferroni-adjusted Wilson intervals. ``method="clopper-pearson"``:
    Bonferroni-adjusted exact intervals. For K = 2 the level is not divided (see :func:`simultaneous_alpha`).
    An empty sample gives [0, 1] for every cell.
    """
    if method not in INTERVAL_METHODS:
        raise ValueError(f"unknown interval method {method!r}; choose one of {INTERVAL_METHODS}")
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum()
    if method == "wilson" and len(counts) >= 3 and n > 0:
        bounds = multinomial_proportions_confint(counts, alpha=alpha, method="goodman")
        return np.clip(bounds[:, 0], 0.0, 1.0), np.clip(bounds[:, 1], 0.0, 1.0)
    return binomial_interval(counts, n, simultaneous_alpha(len(counts), alpha), method)


def paired_cell_test(before, after, num_cells: int) -> tuple[list[float], float]:
    """Exact McNemar test per cell on paired labels; returns per-cell p-values and the adjusted minimum.

    For cell j: ``b_j = #{before ≠ j, after = j}``, ``c_j = #{before = j, after ≠ j}``; under "no movement"
    ``b_j ~ Binomial(b_j + c_j, ½)``, so ``p_j = min(1, 2 · BinomCDF(min(b_j, c_j); b_j + c_j, ½))`` (1 when
    ``b_j + c_j = 0``) — statsmodels' ``mcnemar(exact=True)``. The adjusted minimum is the smallest
    Bonferroni-adjusted p-value (statsmodels' ``multipletests``), ``min(1, K · min_j p_j)``, for K ≥ 3; for K = 2
    both cells give the same test and ``min_j p_j`` is not adjusted.
    """
    before = np.asarray(before)
    after = np.asarray(after)
    p_values = []
    for j in range(num_cells):
        was, is_now = before == j, after == j
        table = [[np.sum(was & is_now), np.sum(was & ~is_now)], [np.sum(~was & is_now), np.sum(~was & ~is_now)]]
        p_values.append(float(mcnemar(np.array(table), exact=True).pvalue))
    if num_cells <= 2:
        return p_values, min(p_values)
    return p_values, float(multipletests(p_values, method="bonferroni")[1].min())


def paired_difference_interval(before, after, alpha: float = 0.05) -> tuple[float, float, float]:
    """Difference ``θ = p_after − p_before`` of two proportions measured on the same units (the same seeds before
    and after an edit), with Newcombe's hybrid score interval for paired data (Newcombe 1998, *Statistics in
    Medicine* 17:2635, method 10).

    ``before`` and ``after`` are boolean arrays over the same units. With the 2×2 table a (both), b (before only),
    c (after only), d (neither), n = a + b + c + d, ``p₁ = (a + b)/n``, ``p₂ = (a + c)/n``, their Wilson intervals
    [l₁, u₁], [l₂, u₂], and the phi coefficient ``φ = (ad − bc)/√((a+b)(c+d)(a+c)(b+d))`` (0 where a margin is
    empty)::

        θ = p₂ − p₁
        lower = θ − √((p₂ − l₂)² − 2φ (p₂ − l₂)(u₁ − p₁) + (u₁ − p₁)²)
        upper = θ + √((u₂ − p₂)² − 2φ (u₂ − p₂)(p₁ − l₁) + (p₁ − l₁)²)

    Returns ``(θ, lower, upper)``; an interval that excludes 0 is a shift at level ``alpha``.
    """
    x = np.asarray(before, dtype=bool)
    y = np.asarray(after, dtype=bool)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError("before and after must be non-empty boolean vectors over the same units")
    a, b, c, d = (int(np.sum(m)) for m in (x & y, x & ~y, ~x & y, ~x & ~y))
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    (l1, l2), (u1, u2) = wilson_interval(np.array([a + b, a + c]), n, alpha)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(margins) if margins > 0 else 0.0
    theta = p2 - p1
    lower = theta - math.sqrt(max((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2, 0.0))
    upper = theta + math.sqrt(max((u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2, 0.0))
    return theta, max(lower, -1.0), min(upper, 1.0)


def deviation_ratio(ratios, target) -> float:
    """Δ = max_j |r_j − t_j| / max_j max(t_j, 1 − t_j): 0 when r = t, 1 at the worst possible r.

    With a uniform target over K cells this is ``max_j |r_j − 1/K| / (1 − 1/K)``.
    """
    r = np.asarray(ratios, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    return float(np.max(np.abs(r - t)) / np.max(np.maximum(t, 1.0 - t)))


def kl_divergence(ratios, target) -> float:
    """KL(r‖t) = Σ_j r_j log(r_j / t_j) in nats (``scipy.special.rel_entr``, summed).

    Zeros: a cell with ``r_j = 0`` contributes 0 (the limit of x log x); a cell with ``r_j > 0`` but
    ``t_j = 0`` makes the divergence infinite (the observed distribution puts mass where the target
    forbids it).
    """
    return float(np.sum(special.rel_entr(np.asarray(ratios, dtype=np.float64), np.asarray(target, dtype=np.float64))))


def marginals(joint, axis_sizes) -> list[np.ndarray]:
    """Marginal distributions (or counts) of a joint over the product of axes.

    Cell index convention: row-major (C order) over ``axis_sizes``, i.e. the order of
    ``itertools.product(*axes)`` — the first axis varies slowest. For axes of sizes ``(2, 5, 2)`` cell
    ``i`` is ``np.unravel_index(i, (2, 5, 2))``. Returns one array per axis: ``m_a[v] = Σ_{cells with
    axis a = v} joint[cell]``.
    """
    joint = np.asarray(joint, dtype=np.float64)
    sizes = tuple(int(s) for s in axis_sizes)
    if int(np.prod(sizes)) != joint.size:
        raise ValueError(f"joint has {joint.size} cells but the axes give {int(np.prod(sizes))}")
    grid = joint.reshape(sizes)
    return [grid.sum(axis=tuple(other for other in range(len(sizes)) if other != a)) for a in range(len(sizes))]


def project_to_simplex(v) -> np.ndarray:
    """Euclidean projection onto {p : p ≥ 0, Σ p = 1} (sort-based algorithm, exact)."""
    v = np.asarray(v, dtype=np.float64)
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u) - 1.0
    index = np.arange(1, len(v) + 1)
    rho = np.nonzero(u - cumulative / index > 0)[0][-1]
    theta = cumulative[rho] / (rho + 1.0)
    return np.maximum(v - theta, 0.0)


def cleam_correct(observed, confusion, max_iter: int = 20000, tol: float = 1e-13) -> np.ndarray:
    """Correct observed ratios for a classifier's known error rates (CLEAM-style).

    ``confusion[i, j] = P(predicted j | true i)`` (rows sum to 1). The observed ratios are
    ``q = Cᵀ p`` for the true proportions ``p``; this returns

        p̂ = argmin_{p ≥ 0, Σ p = 1} ‖Cᵀ p − q‖²,

    solved by accelerated projected gradient (FISTA, step 1/‖C Cᵀ‖₂) with exact simplex projections.
    When ``C`` is invertible and ``q`` is a possible observation this is ``p̂ = C⁻ᵀ q``; otherwise the
    nearest valid distribution.
    """
    q = np.asarray(observed, dtype=np.float64)
    c = np.asarray(confusion, dtype=np.float64)
    if c.shape != (len(q), len(q)):
        raise ValueError(f"confusion must be {len(q)}×{len(q)}, got {c.shape}")
    lipschitz = float(np.linalg.norm(c @ c.T, 2))
    p = project_to_simplex(q)
    y, momentum = p.copy(), 1.0
    for _ in range(max_iter):
        p_next = project_to_simplex(y - c @ (c.T @ y - q) / lipschitz)
        momentum_next = (1.0 + math.sqrt(1.0 + 4.0 * momentum**2)) / 2.0
        y = p_next + (momentum - 1.0) / momentum_next * (p_next - p)
        converged = np.max(np.abs(p_next - p)) < tol
        p, momentum = p_next, momentum_next
        if converged:
            break
    return p


def _log_beta_mixture_martingale(p, successes: float, n: float, a: float, b: float) -> np.ndarray:
    """log M_n(p) for the Beta(a, b) mixture of Bernoulli likelihood ratios (see below)."""
    failures = n - successes
    return (
        special.betaln(a + successes, b + failures)
        - special.betaln(a, b)
        - special.xlogy(successes, p)
        - special.xlog1py(failures, -p)
    )


def confidence_sequence(
    successes, n, alpha: float = 0.05, prior_mean=0.5, prior_strength=100.0
) -> tuple[np.ndarray, np.ndarray]:
    """Anytime-valid confidence sequence for a Bernoulli mean (Robbins' beta-binomial mixture).

    For i.i.d. Bernoulli(p) draws with ``S`` successes among the first ``n``, the process

        M_n(p) = B(a + S, b + n − S) / B(a, b) / (p^S (1 − p)^(n − S)),
        a = prior_strength · prior_mean,  b = prior_strength · (1 − prior_mean),

    is the likelihood ratio of a Beta(a, b) mixture of alternatives against p, hence a nonnegative
    martingale with M_0 = 1 under p. Ville's inequality gives P(∃ n: M_n(p) ≥ 1/α) ≤ α, so

        CS_n = {p : M_n(p) < 1/α}

    covers the true p at *every* n simultaneously with probability ≥ 1 − α: the interval may be
    checked after every batch and the procedure stopped whenever it likes. This holds for any prior
    fixed before seeing the data; the prior only decides where the sequence is tight: for deviations
    |p̂ − p| of the order of the prior's spread sqrt(m(1 − m)/(strength + 1)) around its mean m, and
    the half-width behaves like sqrt(2 p(1 − p) (log(1/α) + ½ log((n + strength)/strength)) / n).
    Centring it on the target with a spread comparable to the tolerance suits certification ("is r
    within ε of t?").
    ``log M_n(p)`` is convex in p and M_n(p̂) ≤ 1, so CS_n is an interval around p̂ = S/n; its ends are
    found by root bracketing. Vectorised over ``successes`` (``n`` and the prior broadcast).
    Returns ``(lower, upper)``.
    """
    k = np.atleast_1d(np.asarray(successes, dtype=np.float64))
    ns = np.broadcast_to(np.asarray(n, dtype=np.float64), k.shape)
    means = np.broadcast_to(np.asarray(prior_mean, dtype=np.float64), k.shape)
    strengths = np.broadcast_to(np.asarray(prior_strength, dtype=np.float64), k.shape)
    threshold = math.log(1.0 / alpha)
    lower = np.zeros_like(k)
    upper = np.ones_like(k)
    for i, (s, total, mean, strength) in enumerate(zip(k, ns, means, strengths, strict=True)):
        if total <= 0:
            continue
        a, b = strength * mean, strength * (1.0 - mean)

        def excess(p, s=s, total=total, a=a, b=b):
            return _log_beta_mixture_martingale(p, s, total, a, b) - threshold

        p_hat = s / total
        # Far from the prior the mixture may never reach 1/α: the sequence then extends to 0 or 1.
        if s > 0 and excess(_EDGE) > 0:
            lower[i] = optimize.brentq(excess, _EDGE, p_hat, xtol=1e-14, rtol=1e-12)
        if s < total and excess(1.0 - _EDGE) > 0:
            upper[i] = optimize.brentq(excess, p_hat, 1.0 - _EDGE, xtol=1e-14, rtol=1e-12)
    shape = np.shape(successes)
    return lower.reshape(shape), upper.reshape(shape)


def simultaneous_confidence_sequence(
    counts, alpha: float = 0.05, prior_mean=None, prior_strength=100.0
) -> tuple[np.ndarray, np.ndarray]:
    """Anytime-valid intervals for all K cell ratios jointly.

    Each cell count is binomial in the number of valid images, so per-cell sequences
    (:func:`confidence_sequence`) at level :func:`simultaneous_alpha` hold jointly, at every n, with
    probability ≥ 1 − alpha (union bound). ``prior_mean`` defaults to the uniform 1/K per cell.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if prior_mean is None:
        prior_mean = np.full(len(counts), 1.0 / len(counts))
    return confidence_sequence(counts, counts.sum(), simultaneous_alpha(len(counts), alpha), prior_mean, prior_strength)


@dataclass(frozen=True)
class Distribution:
    """A measured cell distribution with its uncertainty and distance to target.

    ``lower``/``upper`` are simultaneous intervals over the K cells at level ``1 − alpha``
    (:func:`simultaneous_intervals`); ``deviation`` is Δ and ``kl`` is KL(r‖t) in nats.
    """

    counts: tuple[int, ...]
    n_invalid: int
    target: tuple[float, ...]
    ratios: tuple[float, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    deviation: float
    kl: float
    alpha: float
    method: str

    @property
    def n(self) -> int:
        """Number of valid (classified) images."""
        return int(sum(self.counts))

    @classmethod
    def from_counts(
        cls, counts, target, n_invalid: int = 0, alpha: float = 0.05, method: str = "wilson"
    ) -> Distribution:
        counts = np.asarray(counts, dtype=np.int64)
        target = np.asarray(target, dtype=np.float64)
        if counts.shape != target.shape:
            raise ValueError(f"counts {counts.shape} and target {target.shape} differ in length")
        n = counts.sum()
        ratios = counts / n if n > 0 else np.full(len(counts), np.nan)
        lower, upper = simultaneous_intervals(counts, alpha, method)
        return cls(
            counts=tuple(int(c) for c in counts),
            n_invalid=int(n_invalid),
            target=tuple(float(x) for x in target),
            ratios=tuple(float(x) for x in ratios),
            lower=tuple(float(x) for x in lower),
            upper=tuple(float(x) for x in upper),
            deviation=deviation_ratio(ratios, target) if n > 0 else math.nan,
            kl=kl_divergence(ratios, target) if n > 0 else math.nan,
            alpha=float(alpha),
            method=method,
        )

    def to_dict(self) -> dict:
        """JSON-safe dict; non-finite numbers (an infinite KL, an undefined ratio) become ``None``."""

        def clean(x):
            return x if math.isfinite(x) else None

        return {
            "counts": list(self.counts),
            "n": self.n,
            "n_invalid": self.n_invalid,
            "target": list(self.target),
            "ratios": [clean(x) for x in self.ratios],
            "lower": list(self.lower),
            "upper": list(self.upper),
            "deviation": clean(self.deviation),
            "kl": clean(self.kl),
            "alpha": self.alpha,
            "method": self.method,
        }
