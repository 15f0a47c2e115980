"""The closed form checked against its normal equations and the dense solution, in float64."""

import itertools

import pytest
import torch

from mist_debias.core.errors import MistError
from mist_debias.core.solve import EditHyperparameters, solve_edit

D, M, K, P = 24, 16, 3, 40


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(M, D, generator=g, dtype=torch.float64), "b": torch.randn(2 * M, D, generator=g)}
    keys = torch.randn(D, K, generator=g, dtype=torch.float64)
    targets = {name: torch.randn(w.shape[0], K, generator=g, dtype=torch.float64) for name, w in weights.items()}
    preserve = torch.randn(D, P, generator=g, dtype=torch.float64)
    return weights, keys, targets, preserve


HYPERPARAMETERS = [
    EditHyperparameters(lam=0.5, edit_scale=1.0, preserve_scale=0.2),
    EditHyperparameters(lam=0.1, edit_scale=2.5, preserve_scale=0.0),
    EditHyperparameters(lam=2.0, edit_scale=0.3, preserve_scale=1.5),
]


def dense_solution(w, keys, targets, preserve, hp):
    """W' = (λW + η_e V Cᵀ + η_p W P Pᵀ) A⁻¹, A = λI + η_e C Cᵀ + η_p P Pᵀ, by one dense solve written out here
    (independent of the low-rank code path and of its Gram matrix)."""
    w = w.to(torch.float64)
    a = hp.lam * torch.eye(w.shape[1], dtype=torch.float64) + hp.edit_scale * keys @ keys.T
    a = a + hp.preserve_scale * preserve @ preserve.T
    rhs = hp.lam * w + hp.edit_scale * targets @ keys.T + hp.preserve_scale * w @ preserve @ preserve.T
    return torch.linalg.solve(a, rhs.T).T


@pytest.mark.parametrize("hp", HYPERPARAMETERS)
def test_normal_equations_hold(problem, hp):
    weights, keys, targets, preserve = problem
    update = solve_edit(weights, keys, targets, preserve, hp)
    a = hp.lam * torch.eye(D, dtype=torch.float64) + hp.edit_scale * keys @ keys.T
    a = a + hp.preserve_scale * preserve @ preserve.T
    for name, w in weights.items():
        w = w.to(torch.float64)
        edited = w + update.delta(name)
        rhs = hp.lam * w + hp.edit_scale * targets[name] @ keys.T + hp.preserve_scale * (w @ preserve) @ preserve.T
        residual = (edited @ a - rhs).abs().max() / rhs.abs().max()
        assert residual < 1e-12


@pytest.mark.parametrize("hp", HYPERPARAMETERS)
def test_low_rank_form_reconstructs_dense_solution_and_rank(problem, hp):
    weights, keys, targets, preserve = problem
    update = solve_edit(weights, keys, targets, preserve, hp)
    assert update.right.shape == (K, D)
    for name, w in weights.items():
        dense = dense_solution(w, keys, targets[name], preserve, hp)
        torch.testing.assert_close(w.to(torch.float64) + update.delta(name), dense, rtol=1e-10, atol=1e-10)
        assert torch.linalg.matrix_rank(dense - w.to(torch.float64), rtol=1e-9).item() == K


def test_edit_scale_and_lambda_change_the_solution(problem):
    weights, keys, targets, preserve = problem
    base = solve_edit(weights, keys, targets, preserve, HYPERPARAMETERS[0]).delta("a")
    for hp in (
        EditHyperparameters(lam=0.5, edit_scale=3.0, preserve_scale=0.2),
        EditHyperparameters(lam=5.0, edit_scale=1.0, preserve_scale=0.2),
    ):
        assert (solve_edit(weights, keys, targets, preserve, hp).delta("a") - base).abs().max() > 1e-3


def test_zero_change_targets_give_exactly_zero_edit(problem):
    weights, keys, _, preserve = problem
    targets = {name: w.to(torch.float64) @ keys for name, w in weights.items()}
    update = solve_edit(weights, keys, targets, preserve, EditHyperparameters(lam=0.5))
    assert all(torch.count_nonzero(left) == 0 for left in update.left.values())


def test_small_lambda_without_preserve_reaches_targets(problem):
    weights, keys, targets, _ = problem
    for lam, tolerance in ((1e-2, 1e-1), (1e-8, 1e-6)):
        update = solve_edit(weights, keys, targets, None, EditHyperparameters(lam=lam))
        w = weights["a"].to(torch.float64) + update.delta("a")
        assert (w @ keys - targets["a"]).abs().max() < tolerance


def test_larger_preserve_scale_moves_preserved_tokens_less(problem):
    weights, keys, targets, preserve = problem
    changes = []
    for scale in (0.0, 0.1, 0.2, 1.0, 5.0):
        update = solve_edit(weights, keys, targets, preserve, EditHyperparameters(lam=0.5, preserve_scale=scale))
        changes.append((update.delta("a") @ preserve).norm().item())
    assert all(later < earlier for earlier, later in itertools.pairwise(changes))


def test_compounding_keeps_the_shared_factor(problem):
    weights, keys, targets, preserve = problem
    hp = EditHyperparameters(lam=0.5)
    first = solve_edit(weights, keys, targets, preserve, hp)
    compounded = {name: w.to(torch.float64) + first.delta(name) for name, w in weights.items()}
    second_targets = {name: t * 1.5 for name, t in targets.items()}
    second = solve_edit(compounded, keys, second_targets, preserve, hp)
    torch.testing.assert_close(second.right, first.right, rtol=0, atol=0)
    for name in weights:
        dense = dense_solution(compounded[name], keys, second_targets[name], preserve, hp)
        torch.testing.assert_close(compounded[name] + second.delta(name), dense, rtol=1e-10, atol=1e-10)
    total = first + second
    torch.testing.assert_close(total.delta("a"), first.delta("a") + second.delta("a"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"lam": 0.0}, "lam must be > 0"), ({"lam": -1}, "lam"), ({"edit_scale": float("nan")}, "finite")],
)
def test_bad_hyperparameters(kwargs, message):
    with pytest.raises(MistError, match=message):
        EditHyperparameters(**kwargs)


def test_the_solver_needs_a_lambda(problem):
    weights, keys, targets, preserve = problem
    with pytest.raises(MistError, match="λ is not set"):
        solve_edit(weights, keys, targets, preserve, EditHyperparameters())
    assert EditHyperparameters().for_method("time").lam == 0.1
