"""The CLI end to end, in process: outputs, manifests, and one-line errors with exit code 2 for bad input."""

import json
import subprocess
import sys

import pytest

from mist_debias.app.cli import main
from mist_debias.core.edit import Edit

GENDER = ["--attribute", "a photo of a man", "--attribute", "a photo of a woman"]


def run(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def edit_args(model, out, *extra):
    return ["edit", model, "--concept", "a photo of a doctor", *GENDER, "--weights", "0.4,-0.2", "--out", out, *extra]


@pytest.fixture
def edit_file(sd1_dir, tmp_path, capsys):
    path = tmp_path / "doctor.safetensors"
    code, _, err = run(capsys, *edit_args(sd1_dir, path))
    assert code == 0, err
    return path


def test_edit_writes_a_loadable_edit(edit_file, capsys):
    edit = Edit.load(edit_file)
    assert edit.info["method"] == "mist" and edit.info["keys"] == "eos"
    assert edit.info["concepts"][0]["weights"] == [0.4, -0.2]
    assert len(edit.layer_names) == 32
    code, out, _ = run(capsys, "info", edit_file, "--json")
    assert code == 0 and json.loads(out)["rank"] == 1


def test_edit_options(sd1_dir, tmp_path, capsys):
    out = tmp_path / "two.safetensors"
    args = edit_args(sd1_dir, out, "--concept", "a photo of a nurse", "--keys", "eos+pad", "--projections", "v")
    code, _, err = run(capsys, *args, "--preserve", "a photo of a teacher", "--lam", "0.3")
    assert code == 0, err
    edit = Edit.load(out)
    assert len(edit.layer_names) == 16 and edit.rank == 2 * 71
    assert edit.info["preserve_prompts"] == ["", "a photo of a teacher"]
    assert edit.info["hyperparameters"]["lam"] == 0.3


def test_generate_with_edit_and_manifest(sd1_dir, edit_file, tmp_path, capsys):
    out = tmp_path / "images"
    args = ["generate", sd1_dir, "--edit", edit_file, "--prompt", "a photo of a doctor", "--n", 3, "--seed", 10]
    code, _, err = run(capsys, *args, "--steps", 2, "--height", 32, "--width", 32, "--out", out)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert [image["seed"] for image in manifest["images"]] == [10, 11, 12]
    assert all((out / image["file"]).is_file() for image in manifest["images"])


@pytest.mark.parametrize("fmt", ["lora", "diffusers"])
def test_export(sd1_dir, edit_file, tmp_path, capsys, fmt):
    out = tmp_path / fmt
    code, _, err = run(capsys, "export", sd1_dir, edit_file, "--out", out, "--format", fmt)
    assert code == 0, err
    assert (out / ("pytorch_lora_weights.safetensors" if fmt == "lora" else "model_index.json")).is_file()


def assert_one_line_error(capsys, args, message, tmp_path):
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_bad_inputs(sd1_dir, edit_file, tmp_path, capsys):
    out = tmp_path / "new.safetensors"
    not_a_pipeline = tmp_path / "folder"
    not_a_pipeline.mkdir()
    other_model = tmp_path / "other"
    from mist_debias.testing import build_pipeline, save_pipeline

    save_pipeline(build_pipeline("sd1", seed=123), other_model)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(edit_file.read_bytes()[:200])
    cases = [
        (edit_args(tmp_path / "missing", out), "model not found"),
        (edit_args(not_a_pipeline, out), "not a diffusers pipeline folder"),
        (["edit", sd1_dir, "--concept", "a doctor", *GENDER, "--weights", "0.1", "--out", out], "2 --attribute"),
        (["edit", sd1_dir, "--concept", "a doctor", *GENDER, "--weights", "1,2,3", "--out", out], "3 --weights"),
        (["edit", sd1_dir, "--concept", " ", *GENDER, "--weights", "1,2", "--out", out], "concept prompt is empty"),
        (["edit", sd1_dir, "--concept", "doc " * 80, *GENDER, "--weights", "1,2", "--out", out], "too long"),
        (edit_args(sd1_dir, out, "--lam", "0"), "lam must be > 0"),
        (["edit", sd1_dir, "--concept", "a", *GENDER, "--weights", "nan,1", "--out", out], "finite"),
        (["edit", sd1_dir, "--concept", "a", *GENDER, "--weights", "inf,1", "--out", out], "finite"),
        (edit_args(sd1_dir, edit_file), "already exists"),
        (edit_args(sd1_dir, "/proc/forbidden/edit.safetensors"), "cannot write"),
        (edit_args(sd1_dir, edit_file / "below-a-file.safetensors"), "cannot write"),
        (["info", truncated], "truncated or not safetensors"),
        (["info", sd1_dir / "model_index.json"], "not a readable edit file"),
        (["export", other_model, edit_file, "--out", tmp_path / "x"], "another base model"),
        (["export", sd1_dir, edit_file, "--out", tmp_path], "already exists"),
        (["generate", sd1_dir, "--prompt", "a", "--n", "0", "--out", tmp_path / "g"], "--n must be positive"),
        (["edit", sd1_dir, "--concept", "a", "--weights", "1", "--out", out], "Missing option '--attribute'"),
    ]
    for args, message in cases:
        assert_one_line_error(capsys, args, message, tmp_path)


def test_unet_without_cross_attention_is_refused(tmp_path, capsys):
    from mist_debias.testing import build_pipeline

    pipe = build_pipeline("sd1")
    from diffusers import UNet2DConditionModel

    pipe.unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        mid_block_type=None,
        norm_num_groups=16,
        cross_attention_dim=32,
    )
    pipe.save_pretrained(tmp_path / "plain")
    out = tmp_path / "e.safetensors"
    assert_one_line_error(capsys, edit_args(tmp_path / "plain", out), "no cross-attention", tmp_path)


def test_console_script_runs_and_errors_cleanly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mist_debias", "info", str(tmp_path / "none.safetensors")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: edit file not found: {tmp_path / 'none.safetensors'}"]


def test_only_user_errors_become_one_line_and_bugs_keep_their_traceback(monkeypatch, tmp_path, capsys):
    from mist_debias.core.errors import EditFileError

    def user_error(path):
        raise EditFileError(f"{path} is not an edit\nsecond line")

    monkeypatch.setattr(Edit, "load", staticmethod(user_error))
    code, _, err = run(capsys, "info", tmp_path / "x.safetensors")
    assert code == 2 and err == f"error: {tmp_path / 'x.safetensors'} is not an edit\n"

    def bug(path):
        raise ValueError("internal invariant broken")

    monkeypatch.setattr(Edit, "load", staticmethod(bug))
    with pytest.raises(ValueError, match="internal invariant broken"):
        main(["info", str(tmp_path / "x.safetensors")])
