"""The HTML report: reading run and evaluation folders, the page's content, and rendering in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mist_debias.app.report import EvaluationSource, ReportSourceError, RunSource, build_report, read_source
from mist_debias.app.report.sources import read_log
from mist_debias.measure.evaluate import (
    FORMAT,
    MANIFEST_FILE,
    METRICS_FILE,
    ORIGINAL,
    RESULTS_JSON,
    image_path,
)
from mist_debias.measure.metrics import Distribution

CELLS = ["young man", "old man", "young woman", "old woman"]


def write_evaluation_folder(folder, n_seeds: int = 3):
    """A finished evaluation folder written by hand: two models, three concepts (one whose images the
    classifier could not read at all), gender × age cells."""
    target = [0.25] * 4
    counts = {
        ("doctor", ORIGINAL): [2, 1, 0, 0],
        ("doctor", "fair"): [1, 1, 1, 0],
        ("chef", ORIGINAL): [1, 1, 1, 0],
        ("chef", "fair"): [1, 1, 1, 0],
        ("scene", ORIGINAL): [0, 0, 0, 0],
        ("scene", "fair"): [0, 0, 0, 0],
    }
    distributions, rows = [], []
    for p, concept in enumerate(("doctor", "chef", "scene")):
        for model in (ORIGINAL, "fair"):
            d = Distribution.from_counts(
                counts[(concept, model)], target, n_invalid=n_seeds - sum(counts[(concept, model)])
            )
            marginal = {
                "gender": Distribution.from_counts([d.counts[0] + d.counts[1], d.counts[2] + d.counts[3]], [0.5] * 2),
                "age": Distribution.from_counts([d.counts[0] + d.counts[2], d.counts[1] + d.counts[3]], [0.5] * 2),
            }
            distributions.append(
                {
                    "concept": concept,
                    "model": model,
                    "edited": concept == "doctor" and model == "fair",
                    "n_images": n_seeds,
                    "joint": d.to_dict(),
                    "marginals": {name: m.to_dict() for name, m in marginal.items()},
                    "cleam": None,
                }
            )
            labels = [j for j, c in enumerate(d.counts) for _ in range(c)] or [-1] * n_seeds
            for seed, label in zip(range(p * n_seeds, (p + 1) * n_seeds), labels, strict=True):
                path = folder / image_path(model, p, seed)
                path.parent.mkdir(parents=True, exist_ok=True)
                shade = 40 * max(label, 0) + (0 if model == ORIGINAL else 20)
                Image.fromarray(np.full((32, 32, 3), shade, dtype=np.uint8)).save(path)
                rows.append(
                    {
                        "model": model,
                        "concept": concept,
                        "prompt": f"a photo of a {concept}",
                        "prompt_index": p,
                        "seed": seed,
                        "image": image_path(model, p, seed),
                        "predicted_cell": CELLS[label] if label >= 0 else None,
                        "valid": label >= 0,
                    }
                )
    plan = {
        "model": "tiny/model",
        "variants": [
            {"name": ORIGINAL, "edit": None, "edited_prompts": []},
            {"name": "fair", "edit": "fair.safetensors", "edited_prompts": ["a photo of a doctor"]},
        ],
        "prompts": [{"prompt": "a photo of a doctor", "concept": "doctor"}],
        "n": n_seeds,
        "classifier": "oracle",
    }
    (folder / MANIFEST_FILE).write_text(json.dumps({"format": FORMAT, "plan": plan}))
    metrics = {
        "models": [ORIGINAL, "fair"],
        "concepts": ["doctor", "chef", "scene"],
        "cells": CELLS,
        "axes": [{"name": "gender", "values": ["man", "woman"]}, {"name": "age", "values": ["young", "old"]}],
        "target": target,
        "distributions": distributions,
        "preservation": [
            {"model": "fair", "concept": "doctor", "edited": True, "pixel_change_mean": 0.2, "moved": True},
            {"model": "fair", "concept": "chef", "edited": False, "pixel_change_mean": 0.01, "moved": False},
        ],
    }
    (folder / METRICS_FILE).write_text(json.dumps(metrics))
    (folder / RESULTS_JSON).write_text(json.dumps(rows))
    return folder


def embedded_pngs(text: str) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(data)))
        for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    ]


def test_read_run_folder(run_folder):
    source = read_source(run_folder)
    assert isinstance(source, RunSource)
    assert [c["name"] for c in source.summary["concepts"]] == ["doctor", "nurse"]
    assert len(source.log) == 5 and source.log[0]["concept"] == "doctor"
    doctor = source.summary["concepts"][0]
    assert source.axes(doctor) == [("gender", ["man", "woman"]), ("age", ["young", "old"])]
    legacy = RunSource(source.folder, source.summary, {"attributes": {"axes": {"gender": ["man", "woman"]}}})
    assert legacy.axes({"name": "doctor"}) == [("gender", ["man", "woman"])]  # a summary without axes
    assert source.axes({**doctor, "axes": [{"name": "race", "values": ["A", "B"]}]}) == [("race", ["A", "B"])]


def test_run_folder_without_optional_files(run_folder):
    (run_folder / "config.json").unlink()
    (run_folder / "log.jsonl").unlink()
    summary = json.loads((run_folder / "summary.json").read_text())
    for concept in summary["concepts"]:
        for key in ("converged", "reason", "weights", "images_used", "target", "axes"):
            concept.pop(key)
    summary["concepts"][1].pop("after")
    (run_folder / "summary.json").write_text(json.dumps({"concepts": summary["concepts"]}))
    source = read_source(run_folder)
    assert source.log == [] and source.axes(source.summary["concepts"][0]) == []
    out = build_report([run_folder], run_folder.parent / "r.html")
    assert "Run: nurse" in out.read_text()


def test_torn_last_log_line_is_ignored(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"iteration": 0}\n{"iteration": 1}\n{"iterat')
    assert read_log(log) == [{"iteration": 0}, {"iteration": 1}]
    log.write_text('{"iteration": 0}\nnot json\n{"iteration": 1}\n')
    with pytest.raises(ReportSourceError, match="line 2"):
        read_log(log)


def test_unusable_folders(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"concepts": [{"cells": ["a", "b"]}]}))
    with pytest.raises(ReportSourceError, match="needs 'name' and 'cells'"):
        read_source(tmp_path)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / MANIFEST_FILE).write_text(json.dumps({"format": FORMAT, "plan": {}}))
    with pytest.raises(ReportSourceError, match="unfinished evaluation"):
        read_source(unfinished)
    (unfinished / MANIFEST_FILE).write_text("{")
    with pytest.raises(ReportSourceError, match="not valid JSON"):
        read_source(unfinished)


def test_evaluation_report_content(tmp_path):
    folder = write_evaluation_folder(tmp_path / "eval")
    assert isinstance(read_source(folder), EvaluationSource)
    out = build_report([folder], tmp_path / "report.html", grid_images=2)
    text = out.read_text()
    for heading in ("Evaluation", "Summary", "Preservation", "Concept: doctor", "Concept: chef", "Concept: scene"):
        assert f">{heading}</h2>" in text
    assert text.count("fair <b>(edited)</b>") == 1  # summary: the doctor edit on doctor only
    assert text.count("doctor <b>(edited)</b>") == 1  # preservation: the edited concept is marked
    assert "src=" in text and "http://" not in text and "https://" not in text  # nothing fetched from outside
    images = embedded_pngs(text)
    # Δ chart + per concept (joint bars, heatmap, marginals) + a 2 × 2 image grid per concept
    assert len(images) == 1 + 3 * 3 + 3 * 4
    thumbnails = [image for image in images if image.size == (128, 128)]
    assert len(thumbnails) == 12
    scene = text[text.index(">Concept: scene</h2>") :]
    assert scene.count("invalid</td>") == 4  # grid captions of images the classifier could not read
    doctor_grid = text[text.index(">Concept: doctor</h2>") : text.index(">Concept: chef</h2>")]
    assert doctor_grid.count("seed 0") == 1 and doctor_grid.count("seed 1") == 1 and "seed 2" not in doctor_grid


def test_report_of_evaluation_and_run_renders_in_chromium(tmp_path, run_folder, screenshot):
    evaluation = write_evaluation_folder(tmp_path / "eval")
    page = build_report([evaluation, run_folder], tmp_path / "report.html", grid_images=3)
    text = page.read_text()
    for heading in ("Debias run", "Before and after", "Run: doctor", "Run: nurse"):
        assert f">{heading}</h2>" in text
    assert "budget exhausted" in text
    assert "0.467 → 0.027 (0.013 fresh)" in text  # Δ before → after (on fresh seeds)
    png = tmp_path / "report.png"
    result = screenshot(page, png, height=3000)
    assert result.returncode == 0, result.stderr[-2000:]
    shot = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
    assert shot.shape == (3000, 1200, 3)
    # the page is drawn: a white background with a substantial amount of dark text, lines and coloured plots
    ink = np.mean(shot.min(axis=2) < 200)
    colour = np.mean(shot.max(axis=2) - shot.min(axis=2) > 60)
    assert 0.02 < ink < 0.6 and colour > 0.005


def test_text_from_folders_is_escaped(run_folder, tmp_path):
    summary = json.loads((run_folder / "summary.json").read_text())
    summary["concepts"][0]["name"] = "<script>alert(1)</script>"
    summary["concepts"][0]["cells"] = ["a & b", "<i>", "c", "d"]
    (run_folder / "summary.json").write_text(json.dumps(summary))
    text = build_report([run_folder], tmp_path / "r.html").read_text()
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "a &amp; b" in text and "<i>" not in text


def test_unusable_bench_folder(tmp_path):
    (tmp_path / "bench.json").write_text(json.dumps({"settings": {}, "rows": []}))
    with pytest.raises(ReportSourceError, match="has no rows"):
        read_source(tmp_path)
    (tmp_path / "bench.json").write_text(json.dumps({"rows": [{"concept": "doctor", "method": "uce"}]}))
    with pytest.raises(ReportSourceError, match="row 0 lacks cells, ratios, lower, upper"):
        read_source(tmp_path)


def _overview_value(text: str, key: str) -> str:
    """The value cell of ``key`` in a run overview table."""
    match = re.search(rf"<tr><td>{re.escape(key)}</td><td>(.*?)</td></tr>", text)
    assert match, f"no {key!r} row"
    return match.group(1)


def test_run_overview_shows_every_setting(run_folder, tmp_path):
    text = build_report([run_folder], tmp_path / "r.html", grid_images=0).read_text()
    assert _overview_value(text, "controller").startswith("adaptive") and "gain 0.7" in text
    assert _overview_value(text, "tolerance").startswith("0.050")
    assert _overview_value(text, "budget").startswith("4000")
    assert _overview_value(text, "seed") == "0"
    assert "steps 20, guidance 1.5, negative_prompt –, eta 0.75" in _overview_value(text, "generation")
    assert "method mist, lam –, preserve_scale 0.2" in _overview_value(text, "edit")
    assert _overview_value(text, "classifier used") == "CLIPCellClassifier"
    # the empty prompt is shown as "" instead of as nothing before the first comma
    assert _overview_value(text, "preserved prompts") == (
        "&quot;&quot;, &quot;a photo of a teacher&quot;, &quot;a photo of a chef&quot;"
    )


def test_run_table_status_and_cell_labelled_weights(run_folder, tmp_path):
    text = build_report([run_folder], tmp_path / "r.html", grid_images=0).read_text()
    summary = text[text.index(">Before and after</h2>") : text.index(">Run: doctor</h2>")]
    rows = re.findall(r"<tr>(.*?)</tr>", summary[summary.index("<tbody>") :])
    doctor, nurse = rows[0], rows[1]
    assert doctor.count("converged") == 1  # the verdict, not the controller's reason "converged" again
    assert "not converged" in nurse and "budget exhausted" in nurse
    weights = re.findall(r"<span class='muted'>([^<]+)</span> (-?\d\.\d{3})", doctor.split("</td>")[-2])
    assert weights == [("young man", "0.200"), ("old man", "0.100"), ("young woman", "-0.100"), ("old woman", "-0.200")]


def test_small_deviation_bar_is_visible():
    from mist_debias.app.report.plots import PALETTE, Series, deviation_chart

    after = np.array([int(PALETTE[1][i : i + 2], 16) for i in (1, 3, 5)])

    def after_pixels(delta: float) -> int:
        png = deviation_chart(["doctor"], [Series("before", [0.6]), Series("after", [delta])], "Δ", None)
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int64)
        return int(np.sum(np.abs(pixels - after).max(axis=2) < 8))

    # beyond the legend's patch (drawn in both), a Δ of 0.0005 still draws a visible sliver of a bar
    assert after_pixels(0.0005) - after_pixels(math.nan) >= 40


def _world_run(folder):
    """The shared run folder, with config.json naming the bundled world as its model."""
    from mist_debias.world.bundled import bundled_world_path

    config = json.loads((folder / "config.json").read_text())
    config["run"]["model"] = None
    config["model"] = str(bundled_world_path())
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_world_legend_only_for_world_runs(run_folder, tmp_path):
    from mist_debias.world.render import AGES, BACKGROUND_COLORS, GENDERS, RACES

    plain = build_report([run_folder], tmp_path / "plain.html", grid_images=0).read_text()
    assert "World glyphs" not in plain and "class='grid legend'" not in plain
    world = build_report([_world_run(run_folder)], tmp_path / "world.html", grid_images=0).read_text()
    legend = world[world.index(">World glyphs</h2>") : world.index(">Run: doctor</h2>")]
    values = [*GENDERS, *RACES, *AGES, *BACKGROUND_COLORS]
    assert len(embedded_pngs(legend)) == len(values) == 15
    for value in values:
        assert f"{value}</td>" in legend
    assert "skin colour" in legend and "hair colour" in legend and "background colour" in legend


def test_report_without_grids_loads_no_model(run_folder, tmp_path):
    """A non-world run with --grid-images 0: neither torch, the world's oracle nor the model, edit
    and pipeline loaders are imported (the grids' imports are all inside ``run_grids``; finding the run's profile
    reads only the registered profiles' constants)."""
    modules = (
        "torch",
        "mist_debias.world.oracle",
        "mist_debias.loop.debias",
        "mist_debias.core.edit",
        "mist_debias.core.pipeline",
    )
    script = (
        "import sys; from pathlib import Path; from mist_debias.app.report import build_report; "
        f"build_report([Path({str(run_folder)!r})], Path({str(tmp_path / 'r.html')!r}), grid_images=0); "
        f"print([m for m in {modules!r} if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
