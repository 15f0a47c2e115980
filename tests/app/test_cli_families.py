"""``mist edit / info / export / generate`` on saved SD3 and FLUX pipelines, and the refusal of other families."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mist_debias.app.cli import main
from mist_debias.core.edit import Edit
from mist_debias.core.families import CONTEXT_PROJECTION, POOLED_PROJECTION, find_projections
from mist_debias.core.pipeline import load_pipeline
from mist_debias.testing_transformers import TRANSFORMER_FAMILIES, build_transformer_pipeline

GENDER = ["--attribute", "a photo of a man", "--attribute", "a photo of a woman"]
SAMPLER = ["--steps", 2, "--height", 16, "--width", 16, "--guidance", 4.0]


def run(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


@pytest.fixture(scope="module")
def transformer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("transformer-pipelines")
    dirs = {}
    for family in TRANSFORMER_FAMILIES:
        build_transformer_pipeline(family, seed=11).save_pretrained(root / family, safe_serialization=True)
        dirs[family] = root / family
    return dirs


@pytest.mark.parametrize("family", TRANSFORMER_FAMILIES)
def test_edit_info_export_generate(family, transformer_dirs, tmp_path, capsys):
    model = transformer_dirs[family]
    edit_file = tmp_path / "doctor.safetensors"
    args = ["edit", model, "--concept", "a photo of a doctor", *GENDER, "--weights", "3,-1", "--out", edit_file]
    code, _, err = run(capsys, *args, "--preserve", "a photo of a nurse")
    assert code == 0, err
    edit = Edit.load(edit_file)
    assert edit.info["family"] == family
    assert edit.info["max_sequence_length"] == (256 if family == "sd3" else 512)  # the pipelines' defaults
    assert set(edit.layer_names) == {CONTEXT_PROJECTION, POOLED_PROJECTION}
    assert edit.rank == (2 if family == "sd3" else 1)

    code, out, _ = run(capsys, "info", edit_file, "--json")
    assert code == 0 and json.loads(out)["family"] == family
    code, out, _ = run(capsys, "info", edit_file)
    assert code == 0 and f"family: {family}" in out

    code, _, err = run(capsys, "export", model, edit_file, "--out", tmp_path / "lora", "--format", "lora")
    assert code == 0, err
    pipe = load_pipeline(model, device="cpu")
    with edit.applied(pipe):
        edited = {p.name: p.module.weight.detach().clone() for p in find_projections(pipe)}
    from_lora = load_pipeline(model, device="cpu")
    from_lora.load_lora_weights(str(tmp_path / "lora"))
    from_lora.fuse_lora()
    for p in find_projections(from_lora):
        torch.testing.assert_close(p.module.weight.detach(), edited[p.name], rtol=1e-5, atol=1e-6)

    code, _, err = run(capsys, "export", model, edit_file, "--out", tmp_path / "baked", "--format", "diffusers")
    assert code == 0, err
    baked = {
        p.name: p.module.weight.detach() for p in find_projections(load_pipeline(tmp_path / "baked", device="cpu"))
    }
    assert all(torch.equal(baked[name], weight) for name, weight in edited.items())

    refused = tmp_path / "refused.safetensors"
    code, _, err = run(capsys, *args[:-1], refused, "--projections", "v")
    assert code == 2 and err.strip().startswith("error: the k/v and block filters") and not refused.exists()

    generated = {}
    for name, extra in (("plain", []), ("edited", ["--edit", edit_file])):
        out_dir = tmp_path / name
        args = ["generate", model, "--prompt", "a photo of a doctor", "--n", 2, "--out", out_dir, *SAMPLER, *extra]
        code, _, err = run(capsys, *args)
        assert code == 0, err
        manifest = json.loads((out_dir / "manifest.json").read_text())
        generated[name] = np.stack(
            [np.asarray(Image.open(out_dir / image["file"]), dtype=np.float32) for image in manifest["images"]]
        )
    assert generated["plain"].shape == (2, 16, 16, 3)
    assert np.abs(generated["edited"] - generated["plain"]).max() > 5


def test_other_families_are_refused_in_one_line_naming_the_editable_ones(ddpm_dir, tmp_path, capsys):
    out = tmp_path / "e.safetensors"
    args = ["edit", ddpm_dir, "--concept", "a photo of a doctor", *GENDER, "--weights", "1,-1", "--out", out]
    code, _, err = run(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: cannot edit a DDPMPipeline")
    assert "SD1.x/SD2.x, SDXL, SD3/SD3.5, FLUX.1" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("family", TRANSFORMER_FAMILIES)
def test_debias_and_evaluate_refuse_a_transformer_family_in_one_line(family, transformer_dirs, tmp_path, capsys):
    model = transformer_dirs[family]
    debias = ["debias", model, "--concept", "doctor", "--axis", "gender=man,woman", "--out", tmp_path / "run"]
    code, _, err = run(capsys, *debias)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: mist debias drives SD1.x/SD2.x and SDXL models so far") and "mist edit" in err
    assert not (tmp_path / "run").exists()
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,concept\na photo of a doctor,doctor\n")
    evaluate = ["evaluate", model, "--prompts", prompts, "--axis", "gender=man,woman", "--out", tmp_path / "eval"]
    code, _, err = run(capsys, *evaluate)
    assert code == 2 and err.startswith("error: mist evaluate drives SD1.x/SD2.x and SDXL models so far")
    assert not (tmp_path / "eval").exists()
