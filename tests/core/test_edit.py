"""Edit files: apply / revert / scale / save / load / LoRA and pipeline export on a real-format pipeline."""

import hashlib
import json
import os
import stat

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mist_debias.core.edit import Edit, fingerprint
from mist_debias.core.errors import EditFileError, OutputPathError
from mist_debias.core.generate import GenerationConfig, generate_images
from mist_debias.core.layers import Projection, find_cross_attention_projections
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
    assert meta["format"] == "mist-debias-edit" and meta["format_version"] == 2
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


def _edit_file(path, tensors, info):
    header = {"format": "mist-debias-edit", "format_version": "2", "mist": json.dumps(info)}
    save_file(tensors, str(path), metadata=header)
    return path


def test_load_refuses_a_file_without_fingerprint_with_one_clear_error(tmp_path):
    tensors = {"right": torch.zeros(1, 8), "left.a.to_k": torch.zeros(4, 1)}
    path = _edit_file(tmp_path / "edit.safetensors", tensors, {"layers": ["a.to_k"], "rank": 1})
    with pytest.raises(EditFileError, match="no base-model fingerprint"):
        Edit.load(path)
    for metadata in (["a.to_k"], {"layers": "a.to_k"}):
        with pytest.raises(EditFileError, match="not a valid edit: its metadata"):
            Edit.load(_edit_file(tmp_path / "odd.safetensors", tensors, metadata))


@pytest.mark.parametrize(
    ("right", "left", "message"),
    [
        (torch.zeros(2, 8), torch.zeros(4, 1), "left.a.to_k is 4×1 but its right factor has rank 2"),
        (torch.zeros(2, 8), torch.zeros(4), "left.a.to_k must be a matrix"),
        (torch.zeros(16), torch.zeros(4, 1), "right must be a matrix"),
    ],
)
def test_load_refuses_factors_whose_ranks_disagree(tmp_path, right, left, message):
    info = {"layers": ["a.to_k"], "rank": 2, "base_fingerprint": "x"}
    path = _edit_file(tmp_path / "edit.safetensors", {"right": right, "left.a.to_k": left}, info)
    with pytest.raises(EditFileError, match=message):
        Edit.load(path)


def test_fingerprint_is_the_same_for_the_model_in_every_dtype(sd1_dir):
    fingerprints = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        pipe = load_pipeline(sd1_dir, device="cpu", torch_dtype=dtype)
        fingerprints[dtype] = fingerprint(find_cross_attention_projections(pipe.unet))
    assert len(set(fingerprints.values())) == 1
    other = build_pipeline("sd1", seed=99)
    assert fingerprint(find_cross_attention_projections(other.unet)) != fingerprints[torch.float32]


def test_edit_made_in_float32_applies_to_a_bfloat16_pipeline(sd1_dir):
    edit = solve(load_pipeline(sd1_dir, device="cpu", torch_dtype=torch.float16))
    bf16 = load_pipeline(sd1_dir, device="cpu", torch_dtype=torch.bfloat16)
    edit.apply(bf16).revert()


def test_fingerprint_ignores_rounding_but_not_a_changed_sign():
    layer = torch.nn.Linear(8, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0 + 2**-9, -3e-8, 0.0, 5.0] * 2] * 4))
    projections = [Projection("a.to_k", layer)]
    reference = fingerprint(projections)
    for dtype in (torch.float16, torch.bfloat16):  # 1 + 2⁻⁹ rounds differently, −3e-8 becomes −0 in float16
        rounded = torch.nn.Linear(8, 4, bias=False).to(dtype)
        with torch.no_grad():
            rounded.weight.copy_(layer.weight.to(dtype))
        assert fingerprint([Projection("a.to_k", rounded)]) == reference
    with torch.no_grad():
        layer.weight[0, 1] = 3e-8
    assert fingerprint(projections) != reference


def test_format_1_files_with_the_float16_fingerprint_still_load_and_check(sd1_pipe, tmp_path):
    edit = solve(sd1_pipe)
    legacy = hashlib.sha256()
    for projection in find_cross_attention_projections(sd1_pipe.unet):
        weight = projection.module.weight.detach()
        legacy.update(f"{projection.name}:{tuple(weight.shape)};".encode())
        legacy.update(weight.to(torch.float16).numpy().tobytes())
    tensors = {"right": edit.right, **{f"left.{name}": t for name, t in edit.left.items()}}
    info = {**edit.metadata(), "format_version": 1, "base_fingerprint": legacy.hexdigest()}
    path = tmp_path / "old.safetensors"
    save_file(
        tensors, str(path), metadata={"format": "mist-debias-edit", "format_version": "1", "mist": json.dumps(info)}
    )
    Edit.load(path).apply(sd1_pipe).revert()
    with pytest.raises(EditFileError, match="another base model"):
        Edit.load(path).apply(build_pipeline("sd1", seed=99))


def test_edit_and_lora_files_get_the_same_mode_as_every_other_file(sd1_pipe, tmp_path):
    previous = os.umask(0o022)
    try:
        edit = solve(sd1_pipe)
        path = edit.save(tmp_path / "edit.safetensors")
        lora = edit.export_lora(sd1_pipe, tmp_path / "lora")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [stat.S_IMODE(p.stat().st_mode) for p in lora.rglob("*") if p.is_file()] == [0o644]


def test_from_pretrained_loads_a_file_or_a_folder_holding_edit_safetensors(sd1_pipe, tmp_path):
    edit = solve(sd1_pipe)
    run = tmp_path / "run"
    run.mkdir()
    edit.save(run / "edit.safetensors")
    for source in (run, run / "edit.safetensors", str(run)):
        loaded = Edit.from_pretrained(source)
        assert torch.equal(loaded.right, edit.right) and loaded.base_fingerprint == edit.base_fingerprint
    with pytest.raises(EditFileError, match=r"folder without edit\.safetensors"):
        Edit.from_pretrained(tmp_path)
    with pytest.raises(EditFileError, match="not found"):
        Edit.from_pretrained(tmp_path / "missing.safetensors")
