"""The CLI end to end, in process: outputs, manifests, and one-line errors with exit code 2 for bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

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


# ------------------------------------------------------------------------------- model profiles (the world)

WORLD_SAMPLER_LINE = (
    "using the world's sampler: 20 steps, guidance 1.5, η 0.75 (override with --guidance/--eta/--steps)"
)


def test_generate_on_the_world_uses_the_loops_sampler(tmp_path, capsys):
    from mist_debias.core.generate import GenerationConfig, generate_images
    from mist_debias.core.pipeline import load_pipeline
    from mist_debias.world.bundled import bundled_world_path

    out = tmp_path / "images"
    code, _, err = run(
        capsys, "generate", "world", "--prompt", "a photo of a doctor", "--n", 2, "--seed", 7, "--out", out
    )
    assert code == 0, err
    assert err.splitlines()[0] == WORLD_SAMPLER_LINE
    manifest = json.loads((out / "manifest.json").read_text())
    loop_sampler = GenerationConfig(steps=20, guidance=1.5, eta=0.75, batch_size=64)  # the README's main job
    assert manifest["generation"] == loop_sampler.to_dict()
    pipe = load_pipeline(bundled_world_path(), device="cpu")
    expected = generate_images(pipe, ["a photo of a doctor"] * 2, [7, 8], loop_sampler)
    for image, entry in zip(expected, manifest["images"], strict=True):
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(out / entry["file"])))


def test_explicit_sampler_flags_win_on_the_world(tmp_path, capsys):
    out = tmp_path / "images"
    args = ["generate", "world", "--prompt", "a photo of a nurse", "--n", 1, "--out", out]
    code, _, err = run(capsys, *args, "--steps", 2, "--guidance", 7.5, "--eta", 0, "--batch-size", 4)
    assert code == 0, err
    assert "using the" not in err
    generation = json.loads((out / "manifest.json").read_text())["generation"]
    assert (generation["steps"], generation["guidance"], generation["eta"], generation["batch_size"]) == (2, 7.5, 0, 4)


def test_without_a_profile_generate_keeps_its_own_defaults(sd1_dir, tmp_path, capsys):
    out = tmp_path / "images"
    code, _, err = run(
        capsys, "generate", sd1_dir, "--prompt", "a doctor", "--n", 1, "--height", 32, "--width", 32, "--out", out
    )
    assert code == 0, err
    assert "using the" not in err
    generation = json.loads((out / "manifest.json").read_text())["generation"]
    assert (generation["steps"], generation["guidance"], generation["eta"], generation["batch_size"]) == (20, 7.5, 0, 8)


def test_the_world_alias_in_edit_export_and_evaluate(tmp_path, capsys):
    from mist_debias.world.bundled import bundled_world_path

    edit = tmp_path / "doctor.safetensors"
    gender = ["--attribute", "a photo of a man", "--attribute", "a photo of a woman"]
    code, _, err = run(
        capsys, "edit", "world", "--concept", "a photo of a doctor", *gender, "--weights", "0.1,-0.1", "--out", edit
    )
    assert code == 0, err
    assert Edit.load(edit).info["base_model"] == str(bundled_world_path())
    code, _, err = run(capsys, "export", "world", edit, "--out", tmp_path / "lora", "--format", "lora")
    assert code == 0, err
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,concept\na photo of a doctor,doctor\n")
    out = tmp_path / "eval"
    code, _, err = run(
        capsys,
        "evaluate",
        "world",
        "--prompts",
        prompts,
        "--n",
        2,
        "--axis",
        "gender=man,woman",
        "--steps",
        2,
        "--out",
        out,
    )
    assert code == 0, err
    assert "using the world's sampler: 2 steps, guidance 1.5, η 0.75" in err
    manifest = json.loads((out / "evaluation.json").read_text())
    assert manifest["plan"]["classifier"] == "oracle"
    assert manifest["plan"]["generation"]["guidance"] == 1.5


def test_the_oracle_of_a_model_without_one_is_refused(sd1_dir, tmp_path, capsys):
    args = ["evaluate", sd1_dir, "--prompts", "professions", "--n", 1, "--axis", "gender=man,woman"]
    assert_one_line_error(capsys, [*args, "--classifier", "oracle", "--out", tmp_path / "e"], "has no oracle", tmp_path)
    args = ["debias", sd1_dir, "--concept", "doctor", "--axis", "gender=man,woman", "--classifier", "oracle"]
    assert_one_line_error(capsys, [*args, "--out", tmp_path / "d"], "has no oracle", tmp_path)


def test_a_mistyped_hub_id_is_one_complete_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mist_debias",
            "generate",
            "CompVis/stable-difusion-v1-4",
            "--prompt",
            "a doctor",
            "--out",
            str(tmp_path / "g"),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: cannot load model 'CompVis/stable-difusion-v1-4': not a local folder and the hub is unreachable or "
        "has no such repository"
    ]
    assert not (tmp_path / "g").exists()


def test_debias_without_a_terminal_prints_plain_lines_and_wide_tables(tmp_path):
    out = tmp_path / "run"
    args = ["debias", "world", "--budget", "64", "--batch-size", "32", "--steps", "5", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "mist_debias", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TERM": "dumb"},
    )
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "\x1b" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert lines[0] == WORLD_SAMPLER_LINE.replace("20 steps", "5 steps")
    rounds = [line for line in lines if line.startswith("doctor: it ")]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(rounds) == len(log) >= 1
    for line, entry in zip(rounds, log, strict=True):
        weights = " ".join(f"{w:+.4f}" for w in entry["weights"])
        assert f"it {entry['iteration'] + 1}, {entry['images_total']} images, weights {weights}, ratios " in line
        assert f"{entry['ratios'][0]:.2f}[{entry['lower'][0]:.2f},{entry['upper'][0]:.2f}]" in line
    table = result.stdout.splitlines()
    assert max(map(len, table)) > 80  # not squeezed to 80 columns
    assert sum(line.lstrip("│ ").startswith("doctor") for line in table) == 1  # one row, not wrapped
