"""Edit files: apply / revert / scale / save / load / LoRA and pipeline export on a real-format pipeline."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mist_debias.core.edit import Edit, fingerprint
from mist_debias.core.errors import EditFileError, OutputPathError
from mist_debias.core.generate import GenerationConfig, generate_images
from mist_debias.core.layers import find_cross_attention_projections
from mist_debias.core.pipeline import load_pipeline
from mist_debias.core.targets import ConceptPrompts, EditProblem
from mist_debias.core.text import PromptEncoder
from mist_debias.testing import build_pipeline

CONFIG = GenerationConfig(steps=3, guidance=5.0, height=32, width=32)
PROMPT = "a photo of a doctor"


def solve(pipe, weights=(1.5, -0.5)):
    layers = find_cross_attention_projections(pipe.unet)
    problem = EditProblem(PromptEncoder(pipe), [ConceptPrompts(PROMPT, ("a photo of a man", "a photo of a woman"))])
    update = problem.solve({p.name: p.module.weight.detach() for p in layers}, [list(weights)])
    return Edit.from_update(update, layers, {"concepts": [{"prompt": PROMPT, "weights": list(weights)}]})


def images(pipe, seeds=(3, 4)):
    out = generate_images(pipe, [PROMPT] * len(seeds), list(seeds), CONFIG)
    return np.stack([np.asarray(image, dtype=np.float32) for image in out])


def snapshot(pipe):
    return {p.name: p.module.weight.detach().clone() for p in find_cross_attention_projections(pipe.unet)}


def test_apply_changes_weights_and_revert_is_bit_exact(any_pipe):
    edit = solve(any_pipe)
    before = snapshot(any_pipe)
    handle = edit.apply(any_pipe)
    after = snapshot(any_pipe)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) == len(before)
    for name in before:
        torch.testing.assert_close(after[name] - before[name], edit.delta(name), rtol=1e-5, atol=1e-6)
    handle.revert()
    assert all(torch.equal(before[name], w) for name, w in snapshot(any_pipe).items())


def test_strength_scales_the_update(sd1_pipe):
    edit = solve(sd1_pipe)
    before = snapshot(sd1_pipe)
    with edit.applied(sd1_pipe, scale=0.25):
        quarter = snapshot(sd1_pipe)
    for name in before:
        torch.testing.assert_close(quarter[name] - before[name], 0.25 * edit.delta(name), rtol=1e-5, atol=1e-6)
    assert all(torch.equal(before[name], w) for name, w in snapshot(sd1_pipe).items())


def test_save_load_roundtrip_and_metadata(sd1_pipe, tmp_path):
    edit = solve(sd1_pipe)
    path = edit.save(tmp_path / "edit.safetensors")
    loaded = Edit.load(path)
    assert torch.equal(loaded.right, edit.right)
    assert all(torch.equal(loaded.left[name], edit.left[name]) for name in edit.left)
    meta = loaded.metadata()
    assert meta["format"] == "mist-debias-edit" and meta["format_version"] == 1
    assert meta["base_fingerprint"] == fingerprint(find_cross_attention_projections(sd1_pipe.unet))
    assert meta["concepts"][0]["prompt"] == PROMPT and meta["rank"] == 1
    with loaded.applied(sd1_pipe):
        from_file = snapshot(sd1_pipe)
    with edit.applied(sd1_pipe):
        in_memory = snapshot(sd1_pipe)
    assert all(torch.equal(from_file[name], in_memory[name]) for name in in_memory)
    assert path.stat().st_size < 50_000


def test_refuses_other_base_model_and_bad_files(sd1_pipe, tmp_path):
    edit = solve(sd1_pipe)
    other = build_pipeline("sd1", seed=99)
    with pytest.raises(EditFileError, match="another base model"):
        edit.apply(other)
    with pytest.raises(EditFileError, match="does not fit"):
        edit.apply(build_pipeline("sdxl"))
    path = edit.save(tmp_path / "edit.safetensors")
    with pytest.raises(OutputPathError, match="already exists"):
        edit.save(path)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(EditFileError, match="truncated or not safetensors"):
        Edit.load(truncated)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(EditFileError, match="not a readable"):
        Edit.load(text)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(EditFileError, match="not a mist-debias edit"):
        Edit.load(foreign)
    with pytest.raises(EditFileError, match="not found"):
        Edit.load(tmp_path / "missing.safetensors")


def test_lora_export_reproduces_edited_images(sd1_dir, tmp_path):
    pipe = load_pipeline(sd1_dir, device="cpu")
    edit = solve(pipe)
    original = images(pipe)
    with edit.applied(pipe):
        edited = images(pipe)
    assert np.abs(edited - original).max() > 5  # the edit visibly changes the images
    lora_dir = edit.export_lora(pipe, tmp_path / "lora")
    fresh = load_pipeline(sd1_dir, device="cpu")
    fresh.load_lora_weights(str(lora_dir))
    assert np.abs(images(fresh) - edited).max() <= 1.0  # 8-bit pixels: at most one level of rounding


def test_full_export_reproduces_edited_images(any_pipe, tmp_path):
    edit = solve(any_pipe)
    with edit.applied(any_pipe):
        edited = images(any_pipe)
    folder = edit.export_pipeline(any_pipe, tmp_path / "baked")
    assert json.loads((folder / "model_index.json").read_text())["unet"]
    baked = load_pipeline(folder, device="cpu")
    assert np.abs(images(baked) - edited).max() == 0
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
