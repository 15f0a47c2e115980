"""The closed-form cross-attention edit, in float64, as a shared low-rank factorisation.

For every edited projection ``W ∈ R^{m×d}`` the edit minimises

    λ‖W' − W‖² + η_e Σ_i ‖W' c_i − v*_i‖² + η_p Σ_p ‖W' c_p − W c_p‖²

over the edit keys ``C = [c_1 … c_k] ∈ R^{d×k}`` (with per-layer targets ``V* = [v*_1 … v*_k] ∈ R^{m×k}``) and
the preserve keys ``P ∈ R^{d×p}``. Setting the gradient to zero gives the normal equations

    W' A = λ W + η_e V* Cᵀ + η_p W P Pᵀ,      A = λ I + η_e C Cᵀ + η_p P Pᵀ.

``A`` depends only on the keys, never on the layer, so it is factorised once (Cholesky) for all layers.
Subtracting ``W A`` from both sides shows the edit is exactly low rank:

    W' − W = η_e (V* − W C) Cᵀ A⁻¹ = L R,      R = Cᵀ A⁻¹ ∈ R^{k×d} (shared),  L = η_e (V* − W C) ∈ R^{m×k}.

Solving again from an already-edited ``W₁ = W + L₁R`` with the same keys gives ``W₂ = W₁ + L₂R``: compounding
iterations only add to ``L`` and never change ``R``.

Every float64 tensor lives on the CPU (:func:`cpu_float64`): Apple's MPS has no float64, and the solve is a few
small products per layer. The factors are moved to the model's device, in its dtype, when an edit is applied.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from mist_debias.core.errors import MistError


def cpu_float64(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as float64 on the CPU: moved first, then cast, so no float64 tensor is made on a device."""
    return tensor.detach().cpu().to(torch.float64)


DEFAULT_LAM: dict[str, float] = {"mist": 0.5, "uce": 0.5, "time": 0.1}
"""λ per method when none is given: 0.5 for MIST and UCE, 0.1 for TIME (each paper's setting)."""


@dataclass(frozen=True)
class EditHyperparameters:
    """λ (``lam``), η_e (``edit_scale``) and η_p (``preserve_scale``) of the closed form.

    ``lam=None`` stands for the method's default (:data:`DEFAULT_LAM`), filled in by :meth:`for_method` (which
    :class:`~mist_debias.core.targets.EditProblem` calls); the solver itself needs a number.
    """

    lam: float | None = None
    edit_scale: float = 1.0
    preserve_scale: float = 0.2

    def __post_init__(self) -> None:
        for name in ("lam", "edit_scale", "preserve_scale"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(float(value)):
                raise MistError(f"{name} must be a finite number, got {value}")
        if self.lam is not None and self.lam <= 0:
            raise MistError(f"lam must be > 0 (it keeps A invertible), got {self.lam}")
        if self.edit_scale <= 0:
            raise MistError(f"edit_scale must be > 0, got {self.edit_scale}")
        if self.preserve_scale < 0:
            raise MistError(f"preserve_scale must be ≥ 0, got {self.preserve_scale}")

    def for_method(self, method: str) -> EditHyperparameters:
        """These hyperparameters with an unset λ replaced by ``method``'s default (:data:`DEFAULT_LAM`)."""
        if method not in DEFAULT_LAM:
            raise MistError(f"unknown method {method!r}; expected one of {', '.join(DEFAULT_LAM)}")
        return self if self.lam is not None else replace(self, lam=DEFAULT_LAM[method])


def gram_matrix(
    edit_keys: torch.Tensor, preserve_keys: torch.Tensor | None, hparams: EditHyperparameters
) -> torch.Tensor:
    """``A = λ I + η_e C Cᵀ + η_p P Pᵀ`` (d × d, float64, CPU) from keys stored as columns."""
    if hparams.lam is None:
        raise MistError("λ is not set: give lam, or call EditHyperparameters.for_method(method) for its default")
    keys = cpu_float64(edit_keys)
    a = hparams.lam * torch.eye(keys.shape[0], dtype=torch.float64)
    a = a + hparams.edit_scale * keys @ keys.T
    if preserve_keys is not None and preserve_keys.numel() and hparams.preserve_scale > 0:
        preserve = cpu_float64(preserve_keys)
        a = a + hparams.preserve_scale * preserve @ preserve.T
    return a


def shared_factor(
    edit_keys: torch.Tensor, preserve_keys: torch.Tensor | None, hparams: EditHyperparameters
) -> torch.Tensor:
    """``R = Cᵀ A⁻¹`` (k × d, float64), from one Cholesky factorisation of the symmetric positive-definite A."""
    a = gram_matrix(edit_keys, preserve_keys, hparams)
    cholesky = torch.linalg.cholesky(a)
    return torch.cholesky_solve(cpu_float64(edit_keys), cholesky).T


def layer_factor(
    weight: torch.Tensor, edit_keys: torch.Tensor, targets: torch.Tensor, hparams: EditHyperparameters
) -> torch.Tensor:
    """``L = η_e (V* − W C)`` (m × k, float64) for one projection."""
    return hparams.edit_scale * (cpu_float64(targets) - cpu_float64(weight) @ cpu_float64(edit_keys))


@dataclass(frozen=True)
class LowRankUpdate:
    """``W' − W = L R`` for every layer: shared ``right`` (R, k × d) and per-layer ``left`` (L, m × k)."""

    right: torch.Tensor
    left: dict[str, torch.Tensor]

    @property
    def rank_bound(self) -> int:
        return int(self.right.shape[0])

    def delta(self, name: str) -> torch.Tensor:
        """The dense update ``L R`` of one layer."""
        return self.left[name] @ self.right

    def __add__(self, other: LowRankUpdate) -> LowRankUpdate:
        """Compose two updates with the same keys (compounding): the L's add, R is shared."""
        if not torch.equal(self.right, other.right):
            raise ValueError("only updates with the same shared factor R (same keys and preserve set) add")
        return LowRankUpdate(self.right, {name: self.left[name] + other.left[name] for name in self.left})


def solve_edit(
    weights: Mapping[str, torch.Tensor],
    edit_keys: torch.Tensor,
    targets: Mapping[str, torch.Tensor],
    preserve_keys: torch.Tensor | None,
    hparams: EditHyperparameters,
) -> LowRankUpdate:
    """Solve the closed form for all layers at once.

    Args:
        weights: current ``W`` per layer (m × d).
        edit_keys: ``C`` (d × k), the edit keys as columns.
        targets: ``V*`` per layer (m × k), one target value per key.
        preserve_keys: ``P`` (d × p) or ``None``.
        hparams: λ, η_e, η_p.
    """
    right = shared_factor(edit_keys, preserve_keys, hparams)
    left = {name: layer_factor(w, edit_keys, targets[name], hparams) for name, w in weights.items()}
    return LowRankUpdate(right=right, left=left)
