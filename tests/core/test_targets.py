"""Keys and targets of MIST, UCE and TIME on a real-format pipeline, checked against their formulas."""

import pytest
import torch

from mist_debias.core.errors import MistError, PromptError
from mist_debias.core.layers import find_cross_attention_projections
from mist_debias.core.solve import EditHyperparameters
from mist_debias.core.targets import ConceptPrompts, EditProblem
from mist_debias.core.text import PromptEncoder

GENDER = ("a photo of a man", "a photo of a woman")


def current_weights(pipe):
    return {p.name: p.module.weight.detach() for p in find_cross_attention_projections(pipe.unet)}


def eos_state(encoder, prompt):
    tokens = encoder.tokenize(prompt)
    return encoder.encode([prompt])[0, tokens.eos_index].to(torch.float64)


def test_mist_paper_target_formula(sd1_pipe):
    encoder = PromptEncoder(sd1_pipe)
    problem = EditProblem(encoder, [ConceptPrompts("a photo of a doctor", GENDER)])
    w = next(iter(current_weights(sd1_pipe).values())).to(torch.float64)
    c = eos_state(encoder, "a photo of a doctor")
    g = [eos_state(encoder, prompt) for prompt in GENDER]
    weights = [0.3, -0.7]
    expected = w @ c + sum(wj * (w @ c).norm() * (w @ gj) / (w @ gj).norm() for wj, gj in zip(weights, g, strict=True))
    torch.testing.assert_close(problem.targets(w, [weights])[:, 0], expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(problem.edit_keys[:, 0], c, rtol=1e-6, atol=1e-6)


def test_mist_running_norm_form_differs_and_matches_its_formula(sd1_pipe):
    encoder = PromptEncoder(sd1_pipe)
    concept = [ConceptPrompts("a photo of a doctor", GENDER)]
    running = EditProblem(encoder, concept, mist_form="running")
    w = next(iter(current_weights(sd1_pipe).values())).to(torch.float64)
    c = eos_state(encoder, "a photo of a doctor")
    v = w @ c
    for wj, prompt in zip([0.5, 0.5], GENDER, strict=True):
        u = w @ eos_state(encoder, prompt)
        v = v + wj * v.norm() * u / u.norm()
    torch.testing.assert_close(running.targets(w, [[0.5, 0.5]])[:, 0], v, rtol=1e-6, atol=1e-6)
    paper = EditProblem(encoder, concept).targets(w, [[0.5, 0.5]])[:, 0]
    assert (paper - v).norm() > 1e-3


def test_rank_equals_number_of_concepts_and_zero_weights_give_zero(sd1_pipe):
    encoder = PromptEncoder(sd1_pipe)
    cells = ("a photo of a man", "a photo of a woman", "a photo of an old person")
    professions = ("a photo of a doctor", "a photo of a nurse", "a photo of a CEO")
    problem = EditProblem(encoder, [ConceptPrompts(p, cells) for p in professions])
    weights = current_weights(sd1_pipe)
    update = problem.solve(weights, [[0.4, -0.1, 0.0], [-0.3, 0.6, 0.1], [0.2, 0.2, -0.5]])
    for name in weights:
        assert torch.linalg.matrix_rank(update.delta(name)).item() == 3
    # with shared attribute prompts every L column lies in span{W g_j}: rank ≤ min(#concepts, #attributes)
    two_cells = EditProblem(encoder, [ConceptPrompts(p, GENDER) for p in professions])
    shared = two_cells.solve(weights, [[0.4, -0.1], [-0.3, 0.6], [0.2, 0.2]])
    assert all(torch.linalg.matrix_rank(shared.delta(name)).item() == 2 for name in weights)
    zero = problem.solve(weights, [[0.0, 0.0, 0.0]] * 3)
    assert all(torch.count_nonzero(left) == 0 for left in zero.left.values())


def test_uce_keys_last_word_and_additive_targets(sd1_pipe):
    encoder = PromptEncoder(sd1_pipe)
    problem = EditProblem(encoder, [ConceptPrompts("a photo of a doctor", GENDER)], method="uce")
    assert problem.keys == "last-word"
    state = encoder.encode(["a photo of a doctor"])[0, 5].to(torch.float64)
    torch.testing.assert_close(problem.edit_keys[:, 0], state, rtol=1e-6, atol=1e-6)
    w = next(iter(current_weights(sd1_pipe).values())).to(torch.float64)
    g = [encoder.encode([p])[0, 5].to(torch.float64) for p in GENDER]
    expected = w @ state + 0.2 * (w @ g[0]) + 0.5 * (w @ g[1])
    torch.testing.assert_close(problem.targets(w, [[0.2, 0.5]])[:, 0], expected, rtol=1e-6, atol=1e-6)


def test_time_aligns_source_and_destination_tokens(sd1_pipe):
    encoder = PromptEncoder(sd1_pipe)
    problem = EditProblem(
        encoder, [ConceptPrompts("a photo of a doctor", ("a photo of a female doctor",))], method="time"
    )
    # all 7 source positions (start … EOS) are keys; the prefix maps onto itself, "doctor" and EOS shift by one
    assert problem.rank_bound == 7
    w = next(iter(current_weights(sd1_pipe).values())).to(torch.float64)
    destination = encoder.encode(["a photo of a female doctor"])[0].to(torch.float64)
    targets = problem.targets(w, [[1.0]])
    torch.testing.assert_close(targets[:, 3], w @ destination[3], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(targets[:, 5], w @ destination[6], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(targets[:, 6], w @ destination[7], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("method", "lam"), [("mist", 0.5), ("uce", 0.5), ("time", 0.1)])
def test_the_library_uses_each_methods_lambda_unless_given(sd1_pipe, method, lam):
    encoder = PromptEncoder(sd1_pipe)
    concepts = [ConceptPrompts("a photo of a doctor", GENDER[:1])]
    assert EditProblem(encoder, concepts, method=method).hparams.lam == lam
    scaled = EditProblem(encoder, concepts, method=method, hparams=EditHyperparameters(edit_scale=2.0)).hparams
    assert (scaled.lam, scaled.edit_scale) == (lam, 2.0)
    assert EditProblem(encoder, concepts, method=method, hparams=EditHyperparameters(lam=0.3)).hparams.lam == 0.3


def test_eos_pad_keys_are_aligned_by_offset_and_rank_bounded(sd1_pipe):
    encoder = PromptEncoder(sd1_pipe)
    problem = EditProblem(encoder, [ConceptPrompts("a photo of a doctor", GENDER)], keys="eos+pad")
    # EOS at 6 for every prompt: offsets 0..70 → 71 keys
    assert problem.rank_bound == 71
    full = encoder.encode(["a photo of a doctor"])[0].to(torch.float64)
    torch.testing.assert_close(problem.edit_keys, full[6:].T, rtol=1e-5, atol=1e-5)
    update = problem.solve(current_weights(sd1_pipe), [[0.5, 0.5]])
    assert update.right.shape == (71, 32)


def test_preserve_keys_are_all_positions_of_preserve_prompts(sd1_pipe):
    encoder = PromptEncoder(sd1_pipe)
    problem = EditProblem(encoder, [ConceptPrompts("a doctor", GENDER)], preserve_prompts=("", "a teacher"))
    assert problem.preserve_keys.shape == (32, 2 * 77)
    none = EditProblem(encoder, [ConceptPrompts("a doctor", GENDER)], preserve_prompts=())
    assert none.preserve_keys is None


def test_bad_concepts_and_weights(sd1_pipe):
    encoder = PromptEncoder(sd1_pipe)
    with pytest.raises(PromptError, match="empty"):
        ConceptPrompts("  ", GENDER)
    with pytest.raises(PromptError, match="too long"):
        EditProblem(encoder, [ConceptPrompts("doctor " * 80, GENDER)])
    problem = EditProblem(encoder, [ConceptPrompts("a doctor", GENDER)], hparams=EditHyperparameters())
    with pytest.raises(MistError, match="2 attributes but 3 weights"):
        problem.solve(current_weights(sd1_pipe), [[0.1, 0.2, 0.3]])
    with pytest.raises(MistError, match="finite"):
        problem.solve(current_weights(sd1_pipe), [[float("inf"), 0.0]])
    with pytest.raises(MistError, match="unknown method"):
        EditProblem(encoder, [ConceptPrompts("a doctor", GENDER)], method="nope")


def test_time_shorter_destination_never_pairs_words_with_the_start_token(sd1_pipe):
    encoder = PromptEncoder(sd1_pipe)
    # source [<s>, a, photo, of, a, doctor, </s>], destination [<s>, a, nurse, </s>]: prefix <s> a, suffix </s>;
    # the middles pair from their ends (doctor ↔ nurse) and photo, of, a have no counterpart: they are kept
    problem = EditProblem(encoder, [ConceptPrompts("a photo of a doctor", ("a nurse",))], method="time")
    assert problem.rank_bound == 7
    w = next(iter(current_weights(sd1_pipe).values())).to(torch.float64)
    source = encoder.encode(["a photo of a doctor"])[0].to(torch.float64)
    destination = encoder.encode(["a nurse"])[0].to(torch.float64)
    targets = problem.targets(w, [[1.0]])
    for position in (0, 1):
        torch.testing.assert_close(targets[:, position], w @ destination[position], rtol=1e-6, atol=1e-6)
    for position in (2, 3, 4):
        torch.testing.assert_close(targets[:, position], w @ source[position], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(targets[:, 5], w @ destination[2], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(targets[:, 6], w @ destination[3], rtol=1e-6, atol=1e-6)


class AcceleratorTensor(torch.Tensor):
    """A tensor that stands for one on a device without float64 (Apple MPS): any operation that would make a
    float64 tensor there fails; ``.cpu()`` is the only way off the device."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cpu:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs).as_subclass(torch.Tensor)
        result = super().__torch_function__(func, types, args, kwargs)
        outputs = result if isinstance(result, (tuple, list)) else (result,)
        for output in outputs:
            if isinstance(output, AcceleratorTensor) and output.dtype == torch.float64:
                raise AssertionError(f"{func.__name__} made a float64 tensor on the device")
        return result


def test_solve_runs_in_float64_on_the_cpu_while_the_model_lives_on_a_device(sd1_pipe, monkeypatch):
    encoder = PromptEncoder(sd1_pipe)
    on_device = PromptEncoder.encode
    monkeypatch.setattr(
        PromptEncoder, "encode", lambda self, *a, **k: on_device(self, *a, **k).as_subclass(AcceleratorTensor)
    )
    weights = {name: w.as_subclass(AcceleratorTensor) for name, w in current_weights(sd1_pipe).items()}
    assert weights and all(w.dtype == torch.float32 for w in weights.values())
    for method in ("mist", "uce", "time"):
        problem = EditProblem(encoder, [ConceptPrompts("a photo of a doctor", GENDER[1:])], method=method)
        update = problem.solve(weights, [[0.7]])
        factors = [update.right, *update.left.values()]
        assert all(type(f) is torch.Tensor and f.dtype == torch.float64 and f.device.type == "cpu" for f in factors)
        target = problem.targets(next(iter(weights.values())), [[0.7]])
        assert type(target) is torch.Tensor and target.dtype == torch.float64


def test_production_solve_equals_an_independent_dense_solve(sd1_pipe):
    """EditProblem.solve against W' = (λW + η_e V* Cᵀ + η_p W P Pᵀ) A⁻¹ solved densely here, for hyperparameters
    other than the defaults: the normal equations hold and W' − W has rank k."""
    encoder = PromptEncoder(sd1_pipe)
    cells = ("a photo of a man", "a photo of a woman", "a photo of an old person")
    professions = ("a photo of a doctor", "a photo of a nurse", "a photo of a CEO")
    hp = EditHyperparameters(lam=0.3, edit_scale=1.7, preserve_scale=0.4)
    problem = EditProblem(
        encoder, [ConceptPrompts(p, cells) for p in professions], hparams=hp, preserve_prompts=("", "a teacher")
    )
    concept_weights = [[0.4, -0.1, 0.3], [-0.3, 0.6, 0.1], [0.2, 0.2, -0.5]]
    weights = current_weights(sd1_pipe)
    update = problem.solve(weights, concept_weights)
    keys = torch.stack([encoder.encode([p])[0, encoder.tokenize(p).eos_index] for p in professions], 1).double()
    preserve = encoder.encode(["", "a teacher"]).double().reshape(-1, keys.shape[0]).T
    # the problem's keys are these (up to the float32 rounding of a shorter encoding); solve with its exact ones
    torch.testing.assert_close(problem.edit_keys, keys, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(problem.preserve_keys, preserve, rtol=1e-5, atol=1e-5)
    keys, preserve = problem.edit_keys, problem.preserve_keys
    a = hp.lam * torch.eye(keys.shape[0], dtype=torch.float64) + hp.edit_scale * keys @ keys.T
    a = a + hp.preserve_scale * preserve @ preserve.T
    for name, w in weights.items():
        w = w.double()
        targets = problem.targets(w, concept_weights)
        rhs = hp.lam * w + hp.edit_scale * targets @ keys.T + hp.preserve_scale * w @ preserve @ preserve.T
        dense = torch.linalg.solve(a, rhs.T).T
        edited = w + update.delta(name)
        torch.testing.assert_close(edited, dense, rtol=1e-9, atol=1e-9)
        assert ((edited @ a - rhs).abs().max() / rhs.abs().max()).item() < 1e-10
        assert torch.linalg.matrix_rank(edited - w, rtol=1e-9).item() == 3


def test_coupling_is_the_correlation_of_each_attributes_push_on_every_layer(sd1_pipe):
    """C_jk = ⟨δ_j, δ_k⟩ / (‖δ_j‖ ‖δ_k‖), δ_j = ‖W c‖ W g_j / ‖W g_j‖ stacked over layers (MIST, EOS keys)."""
    encoder = PromptEncoder(sd1_pipe)
    cells = ("a photo of a young man", "a photo of an old man", "a photo of a young woman", "a photo of an old woman")
    problem = EditProblem(
        encoder, [ConceptPrompts("a photo of a doctor", GENDER), ConceptPrompts("a photo of a CEO", cells)]
    )
    weights = current_weights(sd1_pipe)
    c = eos_state(encoder, "a photo of a CEO")
    g = [eos_state(encoder, prompt) for prompt in cells]
    pushes = []
    for gj in g:
        pushes.append(
            torch.cat(
                [(w.double() @ c).norm() * (w.double() @ gj) / (w.double() @ gj).norm() for w in weights.values()]
            )
        )
    deltas = torch.stack(pushes, dim=1)
    gram = deltas.T @ deltas
    expected = gram / torch.outer(gram.diagonal().sqrt(), gram.diagonal().sqrt())
    coupling = problem.coupling(weights, 1)
    assert coupling.shape == (4, 4)
    torch.testing.assert_close(torch.from_numpy(coupling), expected, rtol=1e-5, atol=1e-5)
    assert problem.coupling(weights, 0).shape == (2, 2)


def test_uce_coupling_predicts_the_size_of_every_edit(sd1_pipe):
    """UCE's targets are linear in the weights: ‖V*(w) − V*(0)‖² = wᵀ D C D w with D = diag ‖δ_j‖."""
    encoder = PromptEncoder(sd1_pipe)
    problem = EditProblem(encoder, [ConceptPrompts("a photo of a doctor", GENDER)], method="uce")
    weights = current_weights(sd1_pipe)
    coupling = torch.from_numpy(problem.coupling(weights, 0))

    def change(w):
        return torch.cat(
            [(problem.targets(v, [w]) - problem.targets(v, [[0.0, 0.0]])).flatten() for v in weights.values()]
        )

    sizes = torch.stack([change([1.0, 0.0]).norm(), change([0.0, 1.0]).norm()])
    w = torch.tensor([0.7, -1.3], dtype=torch.float64)
    expected = (w * sizes) @ coupling @ (w * sizes)
    torch.testing.assert_close(change(w.tolist()).norm() ** 2, expected, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(coupling, coupling.T)
    torch.testing.assert_close(coupling.diagonal(), torch.ones(2, dtype=torch.float64))
