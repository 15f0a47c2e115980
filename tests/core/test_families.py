"""SD3 / FLUX: family detection, the keys (each encoder's EOS, the pooled embedding) and the per-space closed form.

The keys are recomputed here with the text encoders called directly (not through the pipeline's
``encode_prompt``), and the solved weights are checked against the normal equations and a dense float64 solve
built from those independent keys.
"""

from pathlib import Path

import pytest
import torch

from mist_debias.core.errors import ModelLoadError, PromptError
from mist_debias.core.families import (
    CONTEXT_PROJECTION,
    POOLED_PROJECTION,
    detect_family,
    find_projections,
)
from mist_debias.core.pipeline import load_pipeline
from mist_debias.core.solve import EditHyperparameters
from mist_debias.core.targets import ConceptPrompts
from mist_debias.core.transformer_edit import TransformerEditProblem, edit_problem
from mist_debias.core.transformer_text import TransformerPromptEncoder
from mist_debias.testing import build_pipeline
from mist_debias.testing_transformers import TRANSFORMER_FAMILIES, build_transformer_pipeline

GENDER = ("a photo of a man", "a photo of a woman")
CONCEPTS = [ConceptPrompts("a photo of a doctor", GENDER), ConceptPrompts("a portrait of a nurse", GENDER)]
WEIGHTS = [[1.5, -0.5], [-0.3, 0.8]]
PRESERVE = ("", "a photo of a chef")
PROMPT = CONCEPTS[0].prompt


@pytest.fixture(scope="module")
def transformer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("transformer-pipelines")
    dirs = {}
    for family in TRANSFORMER_FAMILIES:
        build_transformer_pipeline(family, seed=3).save_pretrained(root / family, safe_serialization=True)
        dirs[family] = root / family
    return dirs


@pytest.fixture(params=TRANSFORMER_FAMILIES)
def family_pipe(request: pytest.FixtureRequest, transformer_dirs: dict[str, Path]):
    return request.param, load_pipeline(transformer_dirs[request.param], device="cpu")


@torch.no_grad()
def independent_encoding(pipe, family: str, prompt: str) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """(context (P, d), key positions [CLIP EOS, T5 EOS] in it, pooled (d_p,)) with the encoders called directly."""
    clip_ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    clip_eos = int((clip_ids[0] == 49407).nonzero()[0])
    t5_tokenizer, t5_encoder, t5_length = (
        (pipe.tokenizer_3, pipe.text_encoder_3, 256)
        if family == "sd3"
        else (pipe.tokenizer_2, pipe.text_encoder_2, 512)
    )
    t5_ids = t5_tokenizer(prompt, padding="max_length", max_length=t5_length, return_tensors="pt").input_ids
    assert t5_tokenizer.convert_ids_to_tokens(int(t5_ids[0, -1])) == "<pad>"
    t5_eos = int((t5_ids[0] == t5_tokenizer.convert_tokens_to_ids("</s>")).nonzero()[0])
    t5_states = t5_encoder(t5_ids)[0][0]
    if family == "flux":
        pooled = pipe.text_encoder(clip_ids).pooler_output[0]
        return t5_states.double(), [t5_eos], pooled.double()
    bang_ids = pipe.tokenizer_2(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert int((bang_ids[0] == 49407).nonzero()[0]) == clip_eos and int(bang_ids[0, -1]) != 49407  # pads with "!"
    first = pipe.text_encoder(clip_ids, output_hidden_states=True)
    second = pipe.text_encoder_2(bang_ids, output_hidden_states=True)
    clip_states = torch.cat([first.hidden_states[-2][0], second.hidden_states[-2][0]], dim=-1)
    clip_states = torch.nn.functional.pad(clip_states, (0, t5_states.shape[-1] - clip_states.shape[-1]))
    context = torch.cat([clip_states, t5_states], dim=0)
    pooled = torch.cat([first.text_embeds[0], second.text_embeds[0]])
    return context.double(), [clip_eos, 77 + t5_eos], pooled.double()


def mist_target(w: torch.Tensor, key: torch.Tensor, attributes: list[torch.Tensor], weights: list[float]):
    """v* = W c + Σ_j w_j ‖W c‖ W g_j / ‖W g_j‖ (the paper's MIST target)."""
    base = w @ key
    return base + sum(wj * base.norm() * (w @ g) / (w @ g).norm() for wj, g in zip(weights, attributes, strict=True))


def dense_reference(pipe, family: str, name: str, hp: EditHyperparameters) -> torch.Tensor:
    """W' = (λW + η_e V* Cᵀ + η_p W P Pᵀ) A⁻¹ of one layer, from independently computed keys."""
    w = dict(pipe.transformer.named_modules())[name].weight.detach().double()
    encoded = {p: independent_encoding(pipe, family, p) for p in {*GENDER, *PRESERVE, *(c.prompt for c in CONCEPTS)}}
    keys, targets = [], []
    for concept, weights in zip(CONCEPTS, WEIGHTS, strict=True):
        context, positions, pooled = encoded[concept.prompt]
        if name == POOLED_PROJECTION:
            pairs = [(pooled, [encoded[a][2] for a in concept.attributes])]
        else:
            pairs = [
                (context[pos], [encoded[a][0][encoded[a][1][part]] for a in concept.attributes])
                for part, pos in enumerate(positions)
            ]
        for key, attributes in pairs:
            keys.append(key)
            targets.append(mist_target(w, key, attributes, weights))
    c, v = torch.stack(keys, dim=1), torch.stack(targets, dim=1)
    if name == POOLED_PROJECTION:
        p = torch.stack([encoded[prompt][2] for prompt in PRESERVE], dim=1)
    else:
        p = torch.cat([encoded[prompt][0] for prompt in PRESERVE], dim=0).T
    a = hp.lam * torch.eye(w.shape[1], dtype=torch.float64) + hp.edit_scale * c @ c.T + hp.preserve_scale * p @ p.T
    rhs = hp.lam * w + hp.edit_scale * v @ c.T + hp.preserve_scale * w @ p @ p.T
    return torch.linalg.solve(a, rhs.T).T


def test_families_are_detected_and_their_text_entry_layers_found(family_pipe):
    family, pipe = family_pipe
    assert detect_family(pipe) == family
    layers = find_projections(pipe)
    assert [layer.name for layer in layers] == [CONTEXT_PROJECTION, POOLED_PROJECTION]
    assert layers[0].module is pipe.transformer.context_embedder
    assert layers[1].module is pipe.transformer.time_text_embed.text_embedder.linear_1
    with pytest.raises(ModelLoadError, match="k/v and block filters"):
        find_projections(pipe, projections=["k"])


def test_unet_families_keep_their_cross_attention_layers():
    assert detect_family(build_pipeline("sd1")) == "sd"
    sdxl = build_pipeline("sdxl")
    assert detect_family(sdxl) == "sdxl"
    assert all(layer.name.endswith((".to_k", ".to_v")) for layer in find_projections(sdxl))


def test_a_family_that_cannot_be_edited_is_refused_naming_the_families(ddpm_dir):
    with pytest.raises(ModelLoadError) as error:
        load_pipeline(ddpm_dir, device="cpu")
    message = str(error.value)
    assert "\n" not in message and "DDPMPipeline" in message
    assert "SD1.x/SD2.x, SDXL, SD3/SD3.5, FLUX.1" in message


def test_keys_are_each_encoders_eos_and_the_pooled_embedding(family_pipe):
    family, pipe = family_pipe
    problem = edit_problem(pipe, CONCEPTS, preserve_prompts=PRESERVE)
    assert isinstance(problem, TransformerEditProblem)
    context_keys, pooled_keys = [], []
    for concept in CONCEPTS:
        context, positions, pooled = independent_encoding(pipe, family, concept.prompt)
        context_keys.append(context[positions])
        pooled_keys.append(pooled)
    # (concepts, parts, d); the context space orders its keys part by part: all CLIP keys, then all T5 keys
    expected_context = torch.stack(context_keys)
    expected_context = expected_context.transpose(0, 1).reshape(-1, expected_context.shape[-1]).T
    torch.testing.assert_close(problem.spaces["context"].edit_keys, expected_context, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        problem.spaces["pooled"].edit_keys, torch.stack(pooled_keys, dim=1), rtol=1e-5, atol=1e-5
    )
    positions_per_prompt = 333 if family == "sd3" else 512
    assert problem.spaces["context"].preserve_keys.shape[1] == len(PRESERVE) * positions_per_prompt
    assert problem.spaces["pooled"].preserve_keys.shape[1] == len(PRESERVE)


@pytest.mark.parametrize(
    "hp", [EditHyperparameters(lam=0.5), EditHyperparameters(lam=0.1, edit_scale=2.0, preserve_scale=0.5)]
)
def test_solved_weights_satisfy_the_normal_equations_of_each_space(family_pipe, hp):
    family, pipe = family_pipe
    problem = edit_problem(pipe, CONCEPTS, preserve_prompts=PRESERVE, hparams=hp)
    layers = find_projections(pipe)
    update = problem.solve({layer.name: layer.module.weight.detach() for layer in layers}, WEIGHTS)
    for layer in layers:
        space = problem.spaces["pooled" if layer.name == POOLED_PROJECTION else "context"]
        w = layer.module.weight.detach().double()
        edited = w + update.delta(layer.name)
        c, p = space.edit_keys, space.preserve_keys
        targets = torch.cat([part.targets(w, WEIGHTS) for part in space.parts], dim=1)
        a = hp.lam * torch.eye(w.shape[1], dtype=torch.float64) + hp.edit_scale * c @ c.T
        a = a + hp.preserve_scale * p @ p.T
        rhs = hp.lam * w + hp.edit_scale * targets @ c.T + hp.preserve_scale * w @ p @ p.T
        assert ((edited @ a - rhs).abs().max() / rhs.abs().max()).item() < 1e-10
        dense = dense_reference(pipe, family, layer.name, hp)
        torch.testing.assert_close(edited, dense, rtol=1e-4, atol=1e-5)
        assert (dense - w).abs().max() > 1e-3  # the edit is not trivially zero


def test_rank_of_each_space_is_its_number_of_keys(family_pipe):
    family, pipe = family_pipe
    problem = edit_problem(pipe, CONCEPTS, preserve_prompts=PRESERVE)
    layers = find_projections(pipe)
    update = problem.solve({layer.name: layer.module.weight.detach() for layer in layers}, WEIGHTS)
    parts = 2 if family == "sd3" else 1  # SD3: CLIP EOS and T5 </s>; FLUX: T5 </s>
    predicted = {CONTEXT_PROJECTION: parts * len(CONCEPTS), POOLED_PROJECTION: len(CONCEPTS)}
    for layer in layers:
        delta = update.delta(layer.name)
        assert update.right_of(layer.name).shape == (predicted[layer.name], layer.module.weight.shape[1])
        assert torch.linalg.matrix_rank(delta).item() == predicted[layer.name]
    assert problem.rank_bound == parts * len(CONCEPTS)


def test_compounding_keeps_every_spaces_factor(family_pipe):
    _, pipe = family_pipe
    problem = edit_problem(pipe, CONCEPTS)
    original = {layer.name: layer.module.weight.detach().double() for layer in find_projections(pipe)}
    first = problem.solve(original, WEIGHTS)
    compounded = {name: w + first.delta(name) for name, w in original.items()}
    second = problem.solve(compounded, [[0.2, 0.1], [0.1, -0.2]])
    total = first + second
    for name in original:
        torch.testing.assert_close(total.delta(name), first.delta(name) + second.delta(name), rtol=1e-12, atol=1e-12)


def test_too_long_prompt_for_t5_is_refused(family_pipe):
    _, pipe = family_pipe
    encoder = TransformerPromptEncoder(pipe, max_sequence_length=8)
    long = "a photo of a doctor in a white coat"
    with pytest.raises(PromptError, match="too long for T5"):
        TransformerEditProblem(encoder, [ConceptPrompts(long, GENDER)])


def test_sd3_without_t5_is_keyed_on_clip_alone(transformer_dirs):
    pipe = load_pipeline(transformer_dirs["sd3"], device="cpu")
    pipe.text_encoder_3 = pipe.tokenizer_3 = None  # SD3 loaded with text_encoder_3=None: the T5 part is zeros
    problem = edit_problem(pipe, CONCEPTS, preserve_prompts=PRESERVE)
    assert problem.spaces["context"].rank_bound == len(CONCEPTS)
    context, positions, _ = independent_encoding(load_pipeline(transformer_dirs["sd3"], device="cpu"), "sd3", PROMPT)
    keys = problem.spaces["context"].edit_keys
    torch.testing.assert_close(keys[:, 0], context[positions[0]], rtol=1e-5, atol=1e-5)
