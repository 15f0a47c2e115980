"""``evaluate`` and ``report`` commands: a full run, resume, bad input (one line, exit 2, nothing written), and
the same evaluation split across two processes by torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mist_debias.app import evaluate_cli
from mist_debias.app.cli import main
from mist_debias.measure.classifiers import loading

SAMPLER = ["--steps", 2, "--height", 32, "--width", 32, "--batch-size", 4]
CELLS = ["--axis", "gender=man,woman"]


def run(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, " ".join(captured.err.split(" ")).replace(" \n", " ")


@pytest.fixture
def fake_classifier(monkeypatch, stripes):
    monkeypatch.setattr(loading, "load_classifier", lambda name, device, mode: stripes())


def evaluate_args(model, prompts, out, *extra):
    return ["evaluate", model, "--prompts", prompts, "--n", 2, *CELLS, "--classifier", "stripes", "--out", out]


def test_evaluate_then_resume_then_report(tiny_model, doctor_edit, prompt_file, tmp_path, capsys, fake_classifier):
    out = tmp_path / "eval"
    args = [*evaluate_args(tiny_model, prompt_file, out), "--edit", doctor_edit, "--concept", "doctor", *SAMPLER]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    assert "8 images, 8 generated now" in err
    assert {p.name for p in out.iterdir()} == {
        "run.json",
        "evaluation.json",
        "images",
        "metrics.json",
        "results.csv",
        "results.json",
    }
    rows = json.loads((out / "results.json").read_text())
    assert {r["concept"] for r in rows} == {"doctor"} and len(rows) == 2 * 2 * 2
    code, _, err = run(capsys, *args, "--resume")
    assert code == 0, err
    assert "0 generated now" in err
    code, _, err = run(capsys, *args)
    assert code == 2 and "already exists" in err
    report = tmp_path / "report.html"
    code, _, err = run(capsys, "report", out, "--out", report)
    assert code == 0, err
    text = report.read_text()
    assert text.startswith("<!DOCTYPE html>") and "Concept: doctor" in text and "data:image/png;base64," in text
    code, _, err = run(capsys, "report", out, "--out", report)
    assert code == 2 and "already exists" in err


BAD_INPUT = {
    "unknown prompt set": (["--prompts", "no-such-set"], "unknown prompt set"),
    "missing columns": (["--prompts", "{missing}"], "missing column(s) prompt"),
    "n zero": (["--n", 0], "--n must be positive"),
    "n negative": (["--n", -3], "--n must be positive"),
    "foreign edit": (["--edit", "{foreign}"], "another base model"),
    "bad axis": (["--axis", "gender"], "cannot parse axis"),
    "bad confusion": (["--confusion", "{missing}"], "not a matrix of numbers"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    case, tiny_model, prompt_file, foreign_edit, tmp_path, capsys, fake_classifier
):
    missing = tmp_path / "bad.csv"
    missing.write_text("text,concept\na photo of a doctor,doctor\n")
    extra, message = BAD_INPUT[case]
    extra = [str(x).format(missing=missing, foreign=foreign_edit) for x in extra]
    out = tmp_path / "eval"
    args = evaluate_args(tiny_model, prompt_file, out)
    for flag in ("--prompts", "--n"):  # a flag given in the case replaces the default one
        if flag in extra and flag in args:
            position = args.index(flag)
            del args[position : position + 2]
    code, _, err = run(capsys, *args, *extra, *SAMPLER)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_existing_folder_needs_resume_or_force(tiny_model, prompt_file, tmp_path, capsys, fake_classifier):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for flags in ([], ["--force"], ["--resume"]):
        code, _, err = run(capsys, *evaluate_args(tiny_model, prompt_file, out), *flags, *SAMPLER)
        assert code == 2 and err.count("\n") == 1, err
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_report_rejects_a_folder_that_is_neither(tmp_path, capsys):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    out = tmp_path / "report.html"
    code, _, err = run(capsys, "report", folder, "--out", out)
    assert code == 2 and "not an evaluation folder" in err and err.count("\n") == 1
    assert not out.exists()
    code, _, err = run(capsys, "report", tmp_path / "absent", "--out", out)
    assert code == 2 and "is not a folder" in err and not out.exists()


def torchrun(processes: int, args: list, env: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
    command += ["--standalone", "-m", "mist_debias", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)


def test_two_processes_give_the_single_process_table(tiny_model, doctor_edit, prompt_file, tiny_clip, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    common = ["--prompts", prompt_file, "--num-images", 3, "--axis", "gender=man,woman", "--classifier", tiny_clip]
    common += ["--edit", doctor_edit, "--device", "cpu", *SAMPLER]
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "mist_debias",
            "evaluate",
            tiny_model,
            *map(str, common),
            "--out",
            tmp_path / "one",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    double = torchrun(2, ["evaluate", tiny_model, *common, "--out", tmp_path / "two"], env)
    assert double.returncode == 0, double.stderr[-2000:]
    one, two = tmp_path / "one", tmp_path / "two"
    assert (one / "results.csv").read_text() == (two / "results.csv").read_text()
    assert (one / "results.json").read_text() == (two / "results.json").read_text()
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (one, two)]
    assert [m["run"]["processes"] for m in metrics] == [1, 2]
    shares = [p["images"] for p in metrics[1]["run"]["per_process"]]
    assert len(shares) == 2 and all(s > 0 for s in shares) and sum(shares) == 2 * 4 * 3
    assert [m["distributions"] for m in metrics[0:1]] == [metrics[1]["distributions"]]
    for row in json.loads((one / "results.json").read_text()):
        assert np.array_equal(np.asarray(Image.open(one / row["image"])), np.asarray(Image.open(two / row["image"])))


def test_edited_prompts_from_edit_metadata():
    info = {"concepts": [{"name": "doctor", "prompt": "a photo of a doctor"}, {"prompt": "a nurse"}, {}]}
    assert evaluate_cli.edited_prompts(info) == ("a photo of a doctor", "doctor", "a nurse")
    assert evaluate_cli.edited_prompts({}) == ()
