"""A monotone response model of cell ratios against edit weights, fitted to every observation.

Model (multinomial logistic, linear in the weights)::

    r(w) = softmax(a + s·C w + E Qᵀ w),     s ≥ 0,

for zero-sum weight vectors w (Σ_j w_j = 0; see below). ``a`` are the unedited log-odds, ``s`` the common
gain of "weight on cell j raises cell j" (the monotone part, constrained non-negative), C (K×K) the
coupling of the cells' edit directions (:meth:`~mist_debias.core.targets.EditProblem.coupling`; the
identity when unknown) and ``E`` (K×(K−1)) the cross-effects of one attribute direction on the other cells
that C does not explain. Q (K×(K−1)) is an orthonormal basis of the zero-sum subspace, so E acts only on the
directions that matter.

The coupling carries what the edit's geometry says before any image exists: weight on "old woman" pushes the
edit toward "old woman", and so, by ``C_jk``, toward "young woman" and "old man" too; a weight vector along
which C is nearly singular (an interaction of two axes whose embeddings add up) barely changes the edit, so
the model predicts it moves nothing, and :meth:`LogitLinearResponse.solve` never steps along it.

Gauge: adding the same constant to every w_j still changes a MIST edit (each attribute direction adds to
``W c_s``), but it does not move the balance between cells to first order and the official loop never
uses it (Σ_j (t_j − r_j) = 0). The controller therefore searches only the K − 1 zero-sum directions, which
makes the map from weights to ratios square: K − 1 free weights for the K − 1 free ratios.

Common seeds: a panel of seeds measured at several weights shares its own sampling error at every one of
them (the panel's level is off the population's by ≈ sqrt(r(1 − r)/n) whatever the weight). ``groups``
gives such rows a shared offset δ_g (a K-vector added to their logits) with a Gaussian prior of precision
``n_g / K · (1 − 1/K)`` per cell — a random effect for the panel (mixed-model view of common random
numbers). The response's shape is then learnt from the panel's paired differences at full weight, while
the population's level, and its standard error, come out as the data allow.

Fit: penalised maximum likelihood over all observations (pooled per distinct weight), with pseudo-counts
so that a batch at 0% or 100% keeps a finite likelihood, and a ridge on E that keeps the cross-effects
small unless the data insist. The objective is convex (the likelihood is convex in the linear map; the
penalty is convex), solved by damped Newton from a fixed start, so the fit is deterministic. The inverse
Hessian at the optimum serves as the parameters' covariance, which gives each predicted ratio a standard
error by the delta method (how far the controller can trust an aimed step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special


def zero_sum_basis(num_cells: int) -> np.ndarray:
    """Orthonormal Helmert basis Q (K×(K−1)) of {w : Σ w = 0}: column i is (1,…,1, −i, 0,…)/√(i(i+1))."""
    basis = np.zeros((num_cells, num_cells - 1))
    for i in range(1, num_cells):
        basis[:i, i - 1] = 1.0
        basis[i, i - 1] = -float(i)
        basis[:, i - 1] /= np.sqrt(i * (i + 1.0))
    return basis


def push_direction(change, coupling=None, cutoff: float = 0.1) -> np.ndarray:
    """Zero-sum weights ``w = Q x`` whose push ``C w`` best matches a wanted ``change`` of the ratios: the
    minimum-norm least-squares solution of ``Qᵀ C Q x = Qᵀ change`` over directions whose singular value is at
    least ``cutoff`` times the largest (without a coupling: ``change`` itself, made zero-sum). The first
    step of a controller that knows nothing yet but the edit's geometry."""
    change = np.asarray(change, dtype=np.float64)
    basis = zero_sum_basis(len(change))
    if coupling is None:
        return basis @ (basis.T @ change)
    matrix = basis.T @ np.asarray(coupling, dtype=np.float64) @ basis
    return basis @ np.linalg.lstsq(matrix, basis.T @ change, rcond=cutoff)[0]


def _design(
    weights: np.ndarray, groups: np.ndarray | None = None, num_groups: int = 0, coupling: np.ndarray | None = None
) -> np.ndarray:
    """Jacobians (M×K×P) of the logits with respect to θ = (a, s, vec(E), δ_1 … δ_G) at each weight row
    (row m in group ``groups[m]``, −1 for none); the gain acts on ``C w`` (``w`` without a coupling)."""
    num_cells = weights.shape[1]
    eye = np.eye(num_cells)
    projected = weights @ zero_sum_basis(num_cells)
    pushed = weights if coupling is None else weights @ coupling.T
    rows = []
    for m, (w, x) in enumerate(zip(pushed, projected, strict=True)):
        offsets = np.zeros((num_cells, num_cells * num_groups))
        if groups is not None and groups[m] >= 0:
            offsets[:, num_cells * groups[m] : num_cells * (groups[m] + 1)] = eye
        rows.append(np.hstack([eye, w[:, None], np.kron(eye, x[None, :]), offsets]))
    return np.stack(rows)


@dataclass(frozen=True)
class LogitLinearResponse:
    """``r(w) = softmax(a + s·C w + E Qᵀ w)`` for zero-sum w.

    Stored as ``theta = (a, s, vec(E))`` for weights measured in units of ``unit`` (the RMS norm of the
    fitted weights), with ``covariance`` the inverse penalised Hessian of θ and ``coupling`` C (None: the
    identity).
    """

    theta: np.ndarray
    unit: float
    covariance: np.ndarray
    coupling: np.ndarray | None = None

    @property
    def num_cells(self) -> int:
        return math.isqrt(len(self.theta) - 1)  # len(θ) = K + 1 + K(K − 1) = K² + 1

    @property
    def offsets(self) -> np.ndarray:
        return self.theta[: self.num_cells]

    @property
    def gain(self) -> float:
        """The common gain s in the caller's weight units."""
        return float(self.theta[self.num_cells]) / self.unit

    @property
    def cross(self) -> np.ndarray:
        """E (K×(K−1)) in the caller's weight units."""
        return self.theta[self.num_cells + 1 :].reshape(self.num_cells, self.num_cells - 1) / self.unit

    def ratios(self, weights) -> np.ndarray:
        """Predicted ratios r(w)."""
        return special.softmax(self._design(weights) @ self.theta)

    def _design(self, weights) -> np.ndarray:
        return _design(np.atleast_2d(np.asarray(weights, dtype=np.float64)) / self.unit, coupling=self.coupling)[0]

    def ratio_errors(self, weights) -> np.ndarray:
        """Delta-method standard errors of the predicted ratios: sqrt(diag(G Σ Gᵀ)), G = ∂r/∂θ."""
        design = self._design(weights)
        r = special.softmax(design @ self.theta)
        grad = (np.diag(r) - np.outer(r, r)) @ design
        return np.sqrt(np.maximum(np.einsum("kp,pq,kq->k", grad, self.covariance, grad), 0.0))

    def _push(self) -> np.ndarray:
        """``Qᵀ(s C Q + E)``: how zero-sum weight coordinates move the centred log-ratios."""
        basis = zero_sum_basis(self.num_cells)
        coupling = np.eye(self.num_cells) if self.coupling is None else self.coupling
        return basis.T @ (self.gain * coupling @ basis + self.cross)

    def _moving(self, cutoff: float) -> np.ndarray:
        """The weight directions (columns, zero-sum coordinates) that move the ratios: the right singular
        vectors of ``Qᵀ(s C Q + E)`` whose singular value is at least ``cutoff`` times the largest."""
        _, values, right = np.linalg.svd(self._push())
        return right[values >= cutoff * values[0]].T if values[0] > 0 else right[:0].T

    def reach(self, cutoff: float = 0.1) -> int:
        """How many independent directions of the ratios the weights move (K − 1 when every target is
        reachable; see :meth:`_moving`)."""
        return self._moving(cutoff).shape[1]

    def solve(self, target, floor: float = 1e-4, cutoff: float = 0.1) -> np.ndarray:
        """Zero-sum weights w with r(w) = target, or as close as the edit gets.

        Solves ``Qᵀ(s C Q + E) x = Qᵀ(log t − a)`` by its singular value decomposition and returns ``w = Q x``:
        the minimum-norm solution among directions whose singular value is at least ``cutoff`` times the
        largest — a weight direction that moves the ratios less than that is not used. When such directions
        exist the target may be out of reach, and least squares in log-ratios would favour the smallest cells;
        the solution then moves, within the directions used, to the weights whose largest miss
        ``max_j |r_j(w) − t_j|`` is smallest (minimised through the smooth 8-norm of the misses, from the
        least-squares solution). Target entries below ``floor`` are raised to it (log 0 has no solution).
        """
        target = np.asarray(target, dtype=np.float64)
        basis = zero_sum_basis(self.num_cells)
        push = self._push()
        rhs = basis.T @ (np.log(np.maximum(target, floor)) - self.offsets)
        x = np.linalg.lstsq(push, rhs, rcond=cutoff)[0]
        used = self._moving(cutoff)
        if used.shape[1] in (0, self.num_cells - 1):
            return basis @ x

        def miss(y: np.ndarray) -> float:
            return float(np.sum((self.ratios(basis @ (x + used @ y)) - target) ** 8) ** 0.125)

        found = optimize.minimize(
            miss, np.zeros(used.shape[1]), method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-9}
        )
        return basis @ (x + used @ found.x) if found.fun < miss(np.zeros(used.shape[1])) else basis @ x


def fit_response(
    weights,
    counts,
    pseudo_count: float = 0.0,
    gain_penalty: float = 1e-2,
    cross_penalty: float = 10.0,
    offset_penalty: float = 1e-4,
    max_iter: int = 100,
    groups=None,
    coupling=None,
) -> LogitLinearResponse:
    """Fit :class:`LogitLinearResponse` to per-weight pooled counts (rows of ``weights`` and ``counts``).

    Minimises over θ = (a, s ≥ 0, E), with weights measured in units of ū (the RMS norm of the observed
    weights, so every penalty acts on contributions to the logits)::

        −Σ_m Σ_j c̃_mj log r_j(w_m) + λ_s s² + μ ‖E‖² + λ_a ‖a‖²,     c̃ = counts + pseudo_count.

    The weak ridge λ_s keeps the gain finite when every batch so far is at 0% or 100% (separable data,
    where the likelihood alone pushes the gain to infinity) without biasing it once mixed batches exist —
    unlike pseudo-counts, which would pretend a 0/64 batch at a far weight sits at logit −5. μ keeps the
    cross-effects small unless the data insist; λ_a fixes the irrelevant common shift of ``a`` and keeps
    a never-seen cell finite. The penalties make the Hessian positive definite. Damped Newton with the
    exact Hessian from a fixed start; if the unconstrained optimum has s < 0 the gain is fixed at 0 and
    the rest re-solved (for a convex objective that is the constrained optimum). ``groups`` (one integer per
    row, −1 for none) adds the shared offsets described in the module docstring; the returned response and
    its covariance are the population's (δ = 0), the offsets' uncertainty marginalised in. ``coupling`` is C
    (None: the identity).
    """
    c = np.asarray(counts, dtype=np.float64) + pseudo_count
    num_cells = c.shape[1]
    raw = np.asarray(weights, dtype=np.float64)
    unit = float(np.sqrt(max(float(np.mean(np.sum(raw**2, axis=1))), 1e-24)))
    group_index = None if groups is None else np.asarray(groups, dtype=np.int64)
    num_groups = 0 if group_index is None else int(group_index.max(initial=-1)) + 1
    coupling = None if coupling is None else np.asarray(coupling, dtype=np.float64)
    jacobians = _design(raw / unit, group_index, num_groups, coupling)
    totals = c.sum(axis=1)
    transposed = jacobians.transpose(0, 2, 1)
    eye = np.eye(num_cells)
    num_params = jacobians.shape[2]
    penalty = np.zeros((num_params, num_params))
    penalty[:num_cells, :num_cells] = offset_penalty * np.eye(num_cells)
    penalty[num_cells, num_cells] = gain_penalty
    num_base = num_cells * num_cells + 1
    penalty[num_cells + 1 : num_base, num_cells + 1 : num_base] = cross_penalty * np.eye(num_base - num_cells - 1)
    for g in range(num_groups):
        images = float(c[group_index == g].sum()) / max(int(np.sum(group_index == g)), 1)
        precision = images / num_cells * (1.0 - 1.0 / num_cells)
        span = slice(num_base + num_cells * g, num_base + num_cells * (g + 1))
        penalty[span, span] = 0.5 * precision * np.eye(num_cells)

    def objective(theta):
        logits = jacobians @ theta
        log_probs = logits - special.logsumexp(logits, axis=1, keepdims=True)
        return -np.sum(c * log_probs) + theta @ penalty @ theta, np.exp(log_probs)

    def derivatives(theta, probs):
        residual = totals[:, None] * probs - c
        grad = np.einsum("mkp,mk->p", jacobians, residual) + 2.0 * penalty @ theta
        curvature = totals[:, None, None] * (probs[:, :, None] * eye - probs[:, :, None] * probs[:, None, :])
        hessian = np.sum(transposed @ curvature @ jacobians, axis=0) + 2.0 * penalty
        return grad, hessian

    def newton(free):
        theta = np.zeros(num_params)
        pooled = c.sum(axis=0) + 0.5
        theta[:num_cells] = np.log(pooled / pooled.sum())
        value, probs = objective(theta)
        for _ in range(max_iter):
            grad, hessian = derivatives(theta, probs)
            step = np.zeros(num_params)
            step[free] = np.linalg.solve(hessian[np.ix_(free, free)], grad[free])
            decrement = float(grad @ step)
            if decrement < 1e-10:
                break
            size = 1.0
            while size > 1e-10:
                candidate = theta - size * step
                new_value, new_probs = objective(candidate)
                if new_value <= value - 0.25 * size * decrement:
                    break
                size *= 0.5
            theta, value, probs = candidate, new_value, new_probs
        return theta, probs

    everything = np.arange(num_params)
    theta, probs = newton(everything)
    if theta[num_cells] < 0.0:
        theta, probs = newton(everything[everything != num_cells])
    _, hessian = derivatives(theta, probs)
    covariance = np.linalg.inv(hessian)[:num_base, :num_base]
    return LogitLinearResponse(theta[:num_base], unit, covariance, coupling)
