"""A seed's cell at new weights, inferred from its cells at weights already measured.

In the random-utility view of a seed's image, ``cell_s(w) = argmax_j (a_j + (B w)_j + g_{s,j})``, the set of
weights at which seed s falls in cell j is an intersection of half-spaces, hence convex; so is the set where
it still shows the concept (the edit is small enough), and so is their intersection. Hence: **if seed s fell
in cell j, showing the concept, at weights w₁ … w_m, it does so at every convex combination of them.** On the
world this held without exception (every panel seed of the doctor along the gender direction at 6 weights,
and of the CEO over gender × age at 8 weights: 0 of 306 seeds with the same cell at both ends of a segment
changed cell in its middle). A controller that measures the same seeds at many weights (a panel) then needs
to generate only the seeds whose cell it cannot infer. Nothing is inferred for an image that could not be
classified or no longer showed the concept (those sets need not be convex), and an inferred cell only ever
feeds a search: certificates are drawn on fresh seeds, each generated.

Membership ``w ∈ conv{w₁ … w_m}`` is a non-negative least-squares problem: ``λ ≥ 0`` with
``[W; 1ᵀ] λ = [w; 1]`` has a solution exactly when w lies in the hull (Lawson–Hanson NNLS finds a zero
residual then).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

UNKNOWN = -9  # no label (not measured there, or not inferable)


def in_convex_hull(points: np.ndarray, weights: np.ndarray, tolerance: float = 1e-9) -> bool:
    """Whether ``weights`` is a convex combination of the rows of ``points``."""
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    weights = np.asarray(weights, dtype=np.float64)
    scale = 1.0 + float(np.max(np.abs(points)))
    if np.any(np.max(np.abs(points - weights), axis=1) <= tolerance * scale):
        return True
    if len(points) == 1:
        return False
    matrix = np.vstack([points.T, np.ones(len(points))])
    target = np.append(weights, 1.0)
    _, residual = nnls(matrix, target)
    return residual <= tolerance * scale * np.sqrt(len(target))


def infer_labels(points: np.ndarray, labels: np.ndarray, weights: np.ndarray, num_cells: int) -> np.ndarray:
    """Each seed's label at ``weights``, or :data:`UNKNOWN`.

    ``points`` (M×K) are measured weights, ``labels`` (M×S) the seeds' label codes there
    (:func:`~mist_debias.loop.control.base.encode_labels`; :data:`UNKNOWN` where a seed was not measured).
    A seed gets label j (``0 ≤ j < K``: cell j, showing the concept) when ``weights`` lies in the convex hull of
    the points where it had label j. Seeds with the same labels everywhere are decided once.
    """
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    labels = np.asarray(labels, dtype=np.int64).reshape(len(points), -1)
    result = np.full(labels.shape[1], UNKNOWN, dtype=np.int64)
    if labels.size == 0:
        return result
    usable = np.where((labels >= 0) & (labels < num_cells), labels, UNKNOWN)
    patterns, inverse = np.unique(usable.T, axis=0, return_inverse=True)
    decided = np.full(len(patterns), UNKNOWN, dtype=np.int64)
    for p, pattern in enumerate(patterns):
        for label in np.unique(pattern[pattern != UNKNOWN]):
            if in_convex_hull(points[pattern == label], weights):
                decided[p] = label
                break
    result[:] = decided[inverse.reshape(-1)]
    return result
