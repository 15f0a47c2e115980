"""Before/after image grids of a debias run: regenerated with the run's model, edit, sampler and classifier."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from mist_debias.app.report import build_report, html
from mist_debias.core.edit import Edit, fingerprint
from mist_debias.core.generate import GenerationConfig, generate_images
from mist_debias.core.layers import find_cross_attention_projections
from mist_debias.core.pipeline import load_pipeline
from mist_debias.core.spec import AttributeSpec

from .conftest import CELLS, write_run_folder

SAMPLER = {"steps": 2, "guidance": 2.0, "eta": 0.5, "batch_size": 4, "dtype": "float32", "scheduler": None}
SEED = 5


def save_random_edit(pipe, path, concepts: dict[str, str]) -> Edit:
    """A strong random rank-1 edit of every cross-attention projection, recorded as the loop records it."""
    projections = find_cross_attention_projections(pipe.unet)
    generator = torch.Generator().manual_seed(0)
    right = torch.randn(1, projections[0].weight_shape[1], generator=generator)
    left = {p.name: 2.0 * torch.randn(p.weight_shape[0], 1, generator=generator) for p in projections}
    spec = AttributeSpec.from_phrases(CELLS).to_dict()
    info = {
        "concepts": [
            {"name": name, "prompt": prompt, "weights": [0.0] * 4, "spec": spec} for name, prompt in concepts.items()
        ]
    }
    edit = Edit(right, left, fingerprint(projections), info)
    edit.save(path)
    return edit


@pytest.fixture
def edited_run(tmp_path, sd1_dir, tiny_clip_dir):
    """The shared run folder made on the tiny SD1 model, with a final edit and the tiny CLIP as classifier."""
    folder = write_run_folder(tmp_path / "run")
    config = json.loads((folder / "config.json").read_text())
    config["model"] = config["run"]["model"] = str(sd1_dir)
    config["run"]["generation"] = SAMPLER
    config["run"]["classifier"] = {"drive": str(tiny_clip_dir), "mode": "joint", "batch_size": 8}
    config["run"]["seed"] = SEED
    (folder / "config.json").write_text(json.dumps(config))
    pipe = load_pipeline(sd1_dir, device="cpu")
    concepts = {"doctor": "a photo of a doctor", "nurse": "a photo of a nurse"}
    return folder, pipe, save_random_edit(pipe, folder / "edit.safetensors", concepts), concepts


def grid_rows(section: str) -> dict[str, list[tuple[str, str]]]:
    """``{row name: [(thumbnail src, caption), …]}`` of the image grid in a concept section."""
    grid = section[section.index("<table class='grid'>") :]
    rows = {}
    for name, cells in re.findall(r"<tr><th>(original|final edit)</th>(.*?)</tr>", grid):
        rows[name] = re.findall(r'<td><img alt="" [^>]*src="([^"]+)">([^<]*)</td>', cells)
    return rows


def test_run_report_has_before_after_grids_on_the_same_seeds(edited_run, tmp_path, screenshot):
    folder, pipe, edit, concepts = edited_run
    page = build_report([folder], tmp_path / "report.html", grid_images=2)
    text = page.read_text()
    sampler = GenerationConfig(steps=2, guidance=2.0, eta=0.5, batch_size=4)
    for name, prompt in concepts.items():
        start = text.index(f">Run: {name}</h2>")
        section = text[start : text.find("<section", start)]
        assert "seed 5</th><th>seed 6</th>" in section and f"&quot;{prompt}&quot;" in section
        rows = grid_rows(section)
        assert [len(rows["original"]), len(rows["final edit"])] == [2, 2]
        # the same images as the run's sampler gives on seeds 5 and 6, without and with the final edit
        original = generate_images(pipe, [prompt] * 2, [SEED, SEED + 1], sampler)
        with edit.applied(pipe):
            edited = generate_images(pipe, [prompt] * 2, [SEED, SEED + 1], sampler)
        expected = {"original": original, "final edit": edited}
        for row, images in expected.items():
            assert [src for src, _ in rows[row]] == [re.search(r'src="([^"]+)"', html.thumbnail(i))[1] for i in images]
            assert all(caption in CELLS for _, caption in rows[row])  # labelled by the run's classifier
        difference = np.abs(np.asarray(original[0], dtype=np.int64) - np.asarray(edited[0], dtype=np.int64))
        assert difference.mean() > 1.0  # the edit changes the image on the same seed
    assert text.count("<table class='grid'>") == 2 and "World glyphs" not in text
    png = tmp_path / "report.png"
    result = screenshot(page, png, height=2400)
    assert result.returncode == 0, result.stderr[-2000:]
    shot = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
    assert np.mean(shot.max(axis=2) - shot.min(axis=2) > 60) > 0.005


def test_grids_can_be_turned_off_or_missing(edited_run, tmp_path):
    folder, *_ = edited_run
    text = build_report([folder], tmp_path / "none.html", grid_images=0).read_text()
    assert "<table class='grid'>" not in text and "no image grid" not in text
    (folder / "edit.safetensors").unlink()
    text = build_report([folder], tmp_path / "unfinished.html", grid_images=2).read_text()
    assert "<table class='grid'>" not in text
    assert text.count("no image grid:") == 2 and "has no final edit (edit.safetensors)" in text


def test_world_run_grids_are_labelled_by_the_oracle(tmp_path):
    """A run on the bundled world (no model in its settings): the grids use the shipped pipeline, the world's
    sampler from config.json and the oracle's cells; the glyph legend comes first."""
    from mist_debias.core.spec import Axis
    from mist_debias.world.bundled import bundled_world_path

    folder = write_run_folder(tmp_path / "run")
    config = json.loads((folder / "config.json").read_text())
    world = str(bundled_world_path())
    config["run"]["model"], config["model"] = None, world
    config["run"]["generation"] = {"steps": 20, "guidance": 1.5, "eta": 0.75, "batch_size": 8}
    config["run"]["classifier"] = {"drive": None}
    (folder / "config.json").write_text(json.dumps(config))
    pipe = load_pipeline(world, device="cpu")
    spec = AttributeSpec.from_axes([Axis("gender", ("man", "woman")), Axis("age", ("young", "old"))])
    projections = find_cross_attention_projections(pipe.unet)
    edit = Edit(
        torch.zeros(1, projections[0].weight_shape[1]),
        {p.name: torch.zeros(p.weight_shape[0], 1) for p in projections},
        fingerprint(projections),
        {"concepts": [{"name": "doctor", "prompt": "a photo of a doctor", "spec": spec.to_dict()}]},
    )
    edit.save(folder / "edit.safetensors")
    text = build_report([folder], tmp_path / "report.html", grid_images=2).read_text()
    assert text.index(">World glyphs</h2>") < text.index(">Run: doctor</h2>")
    start = text.index(">Run: doctor</h2>")
    rows = grid_rows(text[start : text.find("<section", start)])
    assert rows["original"] == rows["final edit"]  # a zero edit: the same images on the same seeds
    assert all(caption in (*spec.phrases, "invalid") for _, caption in rows["original"])
    sampler = GenerationConfig(steps=20, guidance=1.5, eta=0.75)
    images = generate_images(pipe, ["a photo of a doctor"] * 2, [0, 1], sampler)
    assert [src for src, _ in rows["original"]] == [re.search(r'src="([^"]+)"', html.thumbnail(i))[1] for i in images]
