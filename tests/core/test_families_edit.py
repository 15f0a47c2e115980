"""SD3 / FLUX edit files: apply / revert / save / load / fingerprint, LoRA and pipeline export, generation."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mist_debias.core.edit import Edit
from mist_debias.core.errors import EditFileError
from mist_debias.core.families import CONTEXT_PROJECTION, POOLED_PROJECTION, find_projections
from mist_debias.core.generate import GenerationConfig, generate_images
from mist_debias.core.pipeline import load_pipeline
from mist_debias.core.targets import ConceptPrompts
from mist_debias.core.transformer_edit import edit_problem
from mist_debias.testing_transformers import TRANSFORMER_FAMILIES, build_transformer_pipeline

CONFIG = GenerationConfig(steps=3, guidance=5.0, height=16, width=16)
PROMPT = "a photo of a doctor"


@pytest.fixture(scope="module")
def transformer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("transformer-pipelines")
    dirs = {}
    for family in TRANSFORMER_FAMILIES:
        build_transformer_pipeline(family, seed=5).save_pretrained(root / family, safe_serialization=True)
        dirs[family] = root / family
    return dirs


@pytest.fixture(params=TRANSFORMER_FAMILIES)
def family_dir(request: pytest.FixtureRequest, transformer_dirs: dict[str, Path]) -> tuple[str, Path]:
    return request.param, transformer_dirs[request.param]


def solve(pipe, weights=(3.0, -1.0)) -> Edit:
    layers = find_projections(pipe)
    problem = edit_problem(pipe, [ConceptPrompts(PROMPT, ("a photo of a man", "a photo of a woman"))])
    update = problem.solve({p.name: p.module.weight.detach() for p in layers}, [list(weights)])
    return Edit.from_update(update, layers, {"concepts": [{"prompt": PROMPT, "weights": list(weights)}]})


def snapshot(pipe) -> dict[str, torch.Tensor]:
    return {p.name: p.module.weight.detach().clone() for p in find_projections(pipe)}


def images(pipe, seeds=(3, 4)) -> np.ndarray:
    out = generate_images(pipe, [PROMPT] * len(seeds), list(seeds), CONFIG)
    return np.stack([np.asarray(image, dtype=np.float32) for image in out])


def test_apply_changes_both_layers_and_revert_is_bit_exact(family_dir):
    _, folder = family_dir
    pipe = load_pipeline(folder, device="cpu")
    edit = solve(pipe)
    assert set(edit.layer_names) == {CONTEXT_PROJECTION, POOLED_PROJECTION}
    assert set(edit.layer_rights) == {POOLED_PROJECTION}
    before = snapshot(pipe)
    handle = edit.apply(pipe)
    after = snapshot(pipe)
    for name in before:
        assert not torch.equal(before[name], after[name])
        torch.testing.assert_close(after[name] - before[name], edit.delta(name), rtol=1e-5, atol=1e-6)
    handle.revert()
    assert all(torch.equal(before[name], w) for name, w in snapshot(pipe).items())


def test_save_load_roundtrip_keeps_each_spaces_factor(family_dir, tmp_path):
    _, folder = family_dir
    pipe = load_pipeline(folder, device="cpu")
    edit = solve(pipe)
    loaded = Edit.load(edit.save(tmp_path / "edit.safetensors"))
    assert torch.equal(loaded.right, edit.right)
    assert torch.equal(loaded.layer_rights[POOLED_PROJECTION], edit.layer_rights[POOLED_PROJECTION])
    assert all(torch.equal(loaded.left[name], edit.left[name]) for name in edit.left)
    assert loaded.rank == edit.rank
    assert loaded.metadata()["format_version"] == 3
    assert loaded.metadata()["layers_with_own_right"] == [POOLED_PROJECTION]
    with loaded.applied(pipe):
        from_file = snapshot(pipe)
    with edit.applied(pipe):
        in_memory = snapshot(pipe)
    assert all(torch.equal(from_file[name], in_memory[name]) for name in in_memory)


def test_a_file_missing_a_spaces_factor_is_refused(family_dir, tmp_path):
    _, folder = family_dir
    path = solve(load_pipeline(folder, device="cpu")).save(tmp_path / "edit.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    del tensors[f"right.{POOLED_PROJECTION}"]
    save_file(tensors, str(tmp_path / "cut.safetensors"), metadata=header)
    with pytest.raises(EditFileError, match="incomplete"):
        Edit.load(tmp_path / "cut.safetensors")


def test_fingerprint_refuses_another_model_and_other_families(family_dir, transformer_dirs):
    family, folder = family_dir
    edit = solve(load_pipeline(folder, device="cpu"))
    with pytest.raises(EditFileError, match="another base model"):
        edit.apply(build_transformer_pipeline(family, seed=99))
    other = "flux" if family == "sd3" else "sd3"
    with pytest.raises(EditFileError, match="does not fit"):
        edit.apply(load_pipeline(transformer_dirs[other], device="cpu"))


def test_lora_export_loads_with_plain_diffusers_and_reproduces_the_edit(family_dir, tmp_path):
    _, folder = family_dir
    pipe = load_pipeline(folder, device="cpu")
    edit = solve(pipe)
    original = images(pipe)
    with edit.applied(pipe):
        edited = images(pipe)
        edited_weights = snapshot(pipe)
    assert np.abs(edited - original).max() > 5  # the edit visibly changes the images
    lora_dir = edit.export_lora(pipe, tmp_path / "lora")
    fresh = load_pipeline(folder, device="cpu")
    fresh.load_lora_weights(str(lora_dir))
    fresh.fuse_lora()
    fused = snapshot(fresh)
    for name, weight in edited_weights.items():
        torch.testing.assert_close(fused[name], weight, rtol=1e-5, atol=1e-6)
    plain = load_pipeline(folder, device="cpu")
    plain.load_lora_weights(str(lora_dir))
    assert np.abs(images(plain) - edited).max() <= 1.0  # 8-bit pixels: at most one level of rounding


def test_pipeline_export_reproduces_the_edited_images(family_dir, tmp_path):
    _, folder = family_dir
    pipe = load_pipeline(folder, device="cpu")
    edit = solve(pipe)
    with edit.applied(pipe):
        edited = images(pipe)
    baked = load_pipeline(edit.export_pipeline(pipe, tmp_path / "baked"), device="cpu")
    assert np.abs(images(baked) - edited).max() == 0
