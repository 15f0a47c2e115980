"""The debias loop on a real-format pipeline: rounds, log, summary, compounding, and kill-and-resume."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors import safe_open

from mist_debias.app.cli import main
from mist_debias.core.edit import Edit
from mist_debias.core.errors import ModelLoadError
from mist_debias.core.layers import find_cross_attention_projections
from mist_debias.core.pipeline import load_pipeline
from mist_debias.loop.config import AttributesConfig, RunConfig
from mist_debias.loop.runner import prepare_run
from mist_debias.measure.classifiers.base import CellPredictions

CELLS = ["--cell", "man", "--cell", "woman"]


def config(sd1_dir, classifier, controller="adaptive", budget=128, **options):
    return RunConfig().with_overrides(
        {
            "model": str(sd1_dir),
            "concepts": ["doctor", "nurse"],
            "attributes": AttributesConfig.from_cli((), ("man", "woman"), ()),
            "classifier.drive": str(classifier),
            "controller.name": controller,
            "budget": budget,
            "generation.steps": 2,
            "generation.batch_size": 32,
            **{f"controller.{k}": v for k, v in options.items()},
        }
    )


def test_adaptive_run_writes_log_summary_and_a_loadable_edit(sd1_dir, tiny_clip_dir, tmp_path):
    run, replayed = prepare_run(config(sd1_dir, tiny_clip_dir), tmp_path / "run", device="cpu")
    assert replayed == 0
    run.run()
    summary = run.finish(validate=16)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {entry["concept"] for entry in log} == {"doctor", "nurse"}
    assert sum(entry["n_images"] for entry in log) == summary["images_total"] <= 128
    assert log[0]["weights"] == [0.0, 0.0] and log[0]["seeds"][0] == 0
    assert all(e["unet_evaluations"] > 0 and len(e["ratios"]) == 2 for e in log)
    # each image: 2 steps × 2 (classifier-free guidance) UNet evaluations
    assert log[-1]["unet_evaluations"] == 4 * summary["images_total"]
    doctor = summary["concepts"][0]
    assert doctor["cells"] == ["man", "woman"] and doctor["before"]["counts"] == log[0]["counts"]
    assert sum(doctor["after_fresh_seeds"]["counts"]) + doctor["after_fresh_seeds"]["n_invalid"] == 16
    assert "a photo of a teacher" in summary["preserved_concepts"]
    assert "a photo of a doctor" not in summary["preserved_concepts"]
    edit = Edit.load(tmp_path / "run" / "edit.safetensors")
    assert [c["name"] for c in edit.info["concepts"]] == ["doctor", "nurse"]
    assert edit.info["concepts"][0]["attributes"] == ["a photo of a man", "a photo of a woman"]
    pipe = load_pipeline(sd1_dir, device="cpu")
    edit.apply(pipe).revert()  # the fingerprint matches the original model
    # the controller knows each concept's coupling, computed from the original weights
    original = {p.name: p.module.weight.detach() for p in find_cross_attention_projections(pipe.unet)}
    for index, name in enumerate(["doctor", "nurse"]):
        coupling = np.asarray(run.controller.concepts[name].coupling)
        np.testing.assert_allclose(coupling, run.problem.coupling(original, index), atol=1e-12)
        assert coupling.shape == (2, 2) and coupling[0, 1] < 1.0


def test_official_run_compounds_and_replays_exactly(sd1_dir, tiny_clip_dir, tmp_path):
    settings = config(sd1_dir, tiny_clip_dir, controller="official", budget=4 * 32, n_images=32, step=0.5)
    run, _ = prepare_run(settings, tmp_path / "run", device="cpu")
    seen = []

    def on_disk_after_round(done):
        # after every round the folder holds the edit and summary of the rounds so far, not only the log
        on_disk = Edit.load(done.folder.edit)
        current = done.final_edit()
        assert torch.equal(on_disk.right, current.right)
        assert all(torch.equal(on_disk.left[name], current.left[name]) for name in current.left)
        summary = json.loads(done.folder.summary.read_text())
        assert summary["images_total"] == done.controller.images_used == done.log[-1]["images_total"]
        seen.append(summary["images_total"])

    run.run(on_round=on_disk_after_round)
    assert seen == [64, 128]
    run.finish()
    assert all(entry["mode"] == "increment" for entry in run.log)
    assert len({entry["round"] for entry in run.log}) == 2
    edit = Edit.load(tmp_path / "run" / "edit.safetensors")
    # the final edit is the sum of the per-round increments, each solved from the weights the earlier rounds left:
    # compounded here from the log with the problem's solve (itself checked against a dense solve in tests/core)
    current = dict(run.original)
    for round_index in sorted({entry["round"] for entry in run.log}):
        logged = {e["concept"]: e["weights"] for e in run.log if e["round"] == round_index}
        increments = [logged.get(name, [0.0] * c.spec.num_cells) for name, c in run.concepts.items()]
        step = run.problem.solve(current, increments)
        current = {name: w + step.delta(name) for name, w in current.items()}
    for name in edit.layer_names:
        expected = (current[name] - run.original[name]).float()
        assert expected.abs().max() > 0
        torch.testing.assert_close(edit.left[name] @ edit.right, expected, rtol=1e-5, atol=1e-6)
    replayed, rounds = prepare_run(settings, tmp_path / "run", resume=True, device="cpu")
    assert rounds == 2 and replayed.controller.propose() == []
    for name in edit.layer_names:
        expected = (current[name] - run.original[name]).float()
        torch.testing.assert_close(replayed.compounded.delta(name).float(), expected, rtol=1e-5, atol=1e-6)
    # the loop leaves the pipeline as it found it
    fresh = {p.name: p.module.weight for p in find_cross_attention_projections(load_pipeline(sd1_dir).unet)}
    assert all(torch.equal(p.module.weight, fresh[p.name]) for p in find_cross_attention_projections(run.pipe.unet))


def test_generation_scheduler_replaces_the_sampler_and_keeps_the_noise_schedule(sd1_dir, tiny_clip_dir, tmp_path):
    settings = config(sd1_dir, tiny_clip_dir).with_overrides({"generation.scheduler": "EulerDiscreteScheduler"})
    run, _ = prepare_run(settings, tmp_path / "run", device="cpu")
    original = load_pipeline(sd1_dir).scheduler
    assert type(run.pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert torch.equal(run.pipe.scheduler.alphas_cumprod, original.alphas_cumprod)
    unknown = config(sd1_dir, tiny_clip_dir).with_overrides({"generation.scheduler": "NoSuchScheduler"})
    with pytest.raises(ModelLoadError, match="unknown scheduler 'NoSuchScheduler'"):
        prepare_run(unknown, tmp_path / "other", device="cpu")
    assert not (tmp_path / "other").exists()


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
        raise SystemExit(0)
    return info.value.code or 0, capsys.readouterr().err


def test_bad_debias_inputs(sd1_dir, tiny_clip_dir, tmp_path, capsys):
    base = ["debias", sd1_dir, "--concept", "doctor", "--classifier", tiny_clip_dir]
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    cases = [
        ([*base, "--axis", "gender", "--out", tmp_path / "a"], "cannot parse axis"),
        ([*base, "--axis", "gender=man", "--out", tmp_path / "a"], "at least 2 values"),
        ([*base, "--cell", "man", "--cell", "man", "--out", tmp_path / "a"], "duplicate cell"),
        ([*base, *CELLS, "--target", "0.2,0.2", "--out", tmp_path / "a"], "sum to 1"),
        ([*base, *CELLS, "--target", "0.2,0.3,0.5", "--out", tmp_path / "a"], "3 values for 2 cells"),
        ([*base, *CELLS, "--tolerance", "0.5", "--out", tmp_path / "a"], "tolerance"),
        ([*base, *CELLS, "--tolerance", "0", "--out", tmp_path / "a"], "tolerance"),
        ([*base, *CELLS, "--budget", "0", "--out", tmp_path / "a"], "budget"),
        ([*base, *CELLS, "--budget", "10", "--out", tmp_path / "a"], "budget 10 cannot hold the first round"),
        ([*base, *CELLS, "--grade-classifier", tmp_path / "nope", "--out", tmp_path / "a"], "model not found"),
        ([*base, *CELLS, "--out", existing], "is not a debias folder; refusing to use it"),
        ([*base, *CELLS, "--out", existing, "--resume"], "not a debias folder"),
        ([*base, *CELLS, "--out", existing, "--force"], "is not a debias folder; refusing to replace it"),
        ([*base, *CELLS, "--out", existing, "--force", "--resume"], "not both"),
        (
            ["debias", sd1_dir, "--concept", "doctor", *CELLS, "--classifier", sd1_dir, "--out", tmp_path / "a"],
            "not a CLIP model",
        ),
    ]
    for args, message in cases:
        code, err = run_cli(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], (args, err)
        assert not (tmp_path / "a").exists()
        assert [p.name for p in existing.iterdir()] == ["notes.txt"] and (existing / "notes.txt").read_text() == "mine"


def test_resume_refuses_other_settings(sd1_dir, tiny_clip_dir, tmp_path, capsys):
    prepare_run(config(sd1_dir, tiny_clip_dir, budget=128), tmp_path / "run", device="cpu")
    code, err = run_cli(
        capsys,
        "debias",
        sd1_dir,
        "--concept",
        "doctor",
        *CELLS,
        "--classifier",
        tiny_clip_dir,
        "--out",
        tmp_path / "run",
        "--resume",
    )
    assert code == 2 and "other settings" in err


def cli_command(sd1_dir, clip_dir, out, *extra):
    return [
        sys.executable,
        "-m",
        "mist_debias",
        "debias",
        str(sd1_dir),
        "--concept",
        "doctor",
        "--concept",
        "nurse",
        *CELLS,
        "--classifier",
        str(clip_dir),
        "--controller",
        "official",
        "--budget",
        "384",
        "--steps",
        "2",
        "--out",
        str(out),
        *extra,
    ]


def edit_contents(path):
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata(), {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118


def test_killed_run_resumes_to_the_same_edit(sd1_dir, tiny_clip_dir, tmp_path):
    config_file = tmp_path / "controller.yaml"
    config_file.write_text("controller: {name: official, n_images: 32, step: 0.5, max_iterations: 3}\n")
    extra = ("--config", str(config_file))
    straight = subprocess.run(cli_command(sd1_dir, tiny_clip_dir, tmp_path / "straight", *extra), capture_output=True)
    assert straight.returncode == 0, straight.stderr.decode()
    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(cli_command(sd1_dir, tiny_clip_dir, killed_dir, *extra), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (killed_dir / "log.jsonl").exists():
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    logged = (killed_dir / "log.jsonl").read_text().splitlines()
    assert len(logged) >= 1 and len(logged) < len((tmp_path / "straight" / "log.jsonl").read_text().splitlines())
    resumed = subprocess.run(cli_command(sd1_dir, tiny_clip_dir, killed_dir, *extra, "--resume"), capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()
    # the same tensors bit for bit and the same metadata (safetensors orders the header's metadata by hash, so the
    # file bytes of equal edits can differ between two processes)
    straight_metadata, straight_tensors = edit_contents(tmp_path / "straight" / "edit.safetensors")
    killed_metadata, killed_tensors = edit_contents(killed_dir / "edit.safetensors")
    assert straight_metadata == killed_metadata and straight_tensors.keys() == killed_tensors.keys()
    assert all(torch.equal(straight_tensors[name], killed_tensors[name]) for name in straight_tensors)

    def logged(folder):
        entries = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
        return [{k: v for k, v in entry.items() if k != "wall_time_s"} for entry in entries]

    assert logged(tmp_path / "straight") == logged(killed_dir)


class FirstCell:
    """A grader that puts every image in the first cell."""

    def classify(self, images, spec):
        probs = np.zeros((len(images), spec.num_cells))
        probs[:, 0] = 1.0
        return CellPredictions(probs=probs, valid=np.ones(len(images), dtype=bool))


def test_an_independent_grader_grades_the_fresh_seeds(sd1_dir, tiny_clip_dir, tiny_clip_factory, tmp_path):
    """The loop is driven by one classifier and graded by another: the fresh-seed numbers are the grader's."""
    settings = config(sd1_dir, tiny_clip_dir, budget=128).with_overrides(
        {"classifier.evaluate": str(tiny_clip_factory(5))}
    )
    run, _ = prepare_run(settings, tmp_path / "run", device="cpu")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["grader"] == "CLIPCellClassifier"
    run.run()
    by_clip_grader = run.validate(12).distributions["doctor"].counts
    run.grader = FirstCell()
    summary = run.finish(validate=12)
    doctor = summary["concepts"][0]
    assert doctor["graded_by"] == "grader"
    assert doctor["after_fresh_seeds"]["counts"] == [12, 0] != list(by_clip_grader)


def test_world_run_reports_the_axes_it_did_not_edit(tmp_path, capsys):
    """On the world (the oracle reads gender, race and age) a gender run's summary and printed tables show race
    and age before and after on the same fresh seeds."""
    out = tmp_path / "run"
    args = ["debias", "world", "--concept", "doctor", "--axis", "gender=man,woman", "--budget", 64]
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in (*args, "--validate", 16, "--grade-classifier", "oracle", "--out", out)])
        raise SystemExit(0)
    stdout, err = capsys.readouterr()
    assert (info.value.code or 0) == 0, err
    doctor = json.loads((out / "summary.json").read_text())["concepts"][0]
    assert doctor["graded_by"] == "grader"
    shifts = doctor["other_axes"]
    assert {(s["axis"], s["value"]) for s in shifts} == {
        ("race", "White"),
        ("race", "Asian"),
        ("race", "Black"),
        ("age", "young"),
        ("age", "old"),
    }
    for axis in ("race", "age"):
        assert sum(s["before"] for s in shifts if s["axis"] == axis) == pytest.approx(1.0)
        assert sum(s["after"] for s in shifts if s["axis"] == axis) == pytest.approx(1.0)
    assert all(s["lower"] <= s["shift"] <= s["upper"] and 0 < s["pairs"] <= 16 for s in shifts)
    assert "axes not edited" in stdout
    assert doctor["kept"]["before"]["n"] > 0 and 0 <= doctor["kept"]["after_fresh_seeds"]["share"] <= 1


def interval_text(distribution, index):
    return (
        f"{distribution['ratios'][index]:.3f} [{distribution['lower'][index]:.3f}, {distribution['upper'][index]:.3f}]"
    )


def test_the_printed_table_shows_what_summary_json_holds(tmp_path, capsys):
    """Every interval in the printed table — before, the one that decided, fresh seeds, the concept kept — is the
    one in summary.json, and the Δ row names the kind of the deciding interval."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["debias", "world", "--concept", "doctor", "--axis", "gender=man,woman", "--budget", "64",
              "--validate", "16", "--out", str(out)])  # fmt: skip
        raise SystemExit(0)
    stdout, err = capsys.readouterr()
    assert (info.value.code or 0) == 0, err
    doctor = json.loads((out / "summary.json").read_text())["concepts"][0]
    rows = {line.split("│")[2].strip(): line for line in stdout.splitlines() if line.count("│") >= 6}
    for index, cell in enumerate(doctor["cells"]):
        for key in ("before", "after", "after_fresh_seeds"):
            assert interval_text(doctor[key], index) in rows[cell]
    assert f"Δ {doctor['after']['deviation']:.3f}  n={doctor['after']['n']}  {doctor['after']['method']}" in stdout
    kept = doctor["kept"]["before"]
    assert f"{kept['share']:.3f} [{kept['lower']:.3f}, {kept['upper']:.3f}]" in rows["concept kept"]
