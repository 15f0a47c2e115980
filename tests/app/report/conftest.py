"""Fixtures for report tests: a synthetic debias run folder and a headless Chromium screenshot helper."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mist_debias.measure.metrics import Distribution

CELLS = ["young man", "old man", "young woman", "old woman"]
TARGET = [0.25] * 4


def write_run_folder(folder: Path, log_lines: list[str] | None = None) -> Path:
    """A run folder as the debias loop writes it: config.json (the settings under "run"), log.jsonl and
    summary.json (no final edit, so no image grids).

    Two concepts over gender × age; "doctor" converges in three iterations, "nurse" stops on its budget.
    """
    folder.mkdir(parents=True)
    config = {
        "run": {
            "model": "tiny/world",
            "concepts": [{"name": "doctor"}, {"name": "nurse"}],
            "attributes": {"axes": {"gender": ["man", "woman"], "age": ["young", "old"]}, "target": "uniform"},
            "controller": {"name": "adaptive", "gain": 0.7},
            "tolerance": 0.05,
            "budget": 4000,
            "classifier": {"drive": None, "mode": "joint"},
            "generation": {"steps": 20, "guidance": 1.5, "negative_prompt": None, "eta": 0.75},
            "edit": {"method": "mist", "lam": None, "preserve_scale": 0.2},
            "seed": 0,
        },
        "model": "tiny/world",
        "model_fingerprint": "0123456789abcdef" * 4,
        "preserve_prompts": ["", "a photo of a teacher", "a photo of a chef"],
        "classifier": "CLIPCellClassifier",
        "library_version": "0.1.0",
    }
    (folder / "config.json").write_text(json.dumps(config))
    trajectories = {
        "doctor": [[60, 30, 8, 2], [40, 28, 20, 12], [27, 25, 24, 24]],
        "nurse": [[5, 5, 50, 40], [10, 12, 40, 38]],
    }
    lines, total = [], 0
    for iteration in range(3):
        for concept, history in trajectories.items():
            if iteration >= len(history):
                continue
            counts = history[iteration]
            total += sum(counts)
            d = Distribution.from_counts(counts, TARGET)
            entry = {
                "iteration": iteration,
                "concept": concept,
                "mode": "adaptive",
                "weights": [0.1 * iteration * (j - 1.5) for j in range(4)],
                "counts": counts,
                "n_invalid": 1,
                "n_images": sum(counts) + 1,
                "ratios": list(d.ratios),
                "lower": list(d.lower),
                "upper": list(d.upper),
                "images_total": total,
                "unet_evaluations": total * 40,
                "wall_time_s": 1.5 * (iteration + 1),
            }
            lines.append(json.dumps(entry))
    (folder / "log.jsonl").write_text("\n".join(log_lines if log_lines is not None else lines) + "\n")
    concepts = []
    for concept, history in trajectories.items():
        concepts.append(
            {
                "name": concept,
                "cells": CELLS,
                "target": TARGET,
                "before": Distribution.from_counts(history[0], TARGET).to_dict(),
                "after": Distribution.from_counts(history[-1], TARGET).to_dict(),
                "converged": concept == "doctor",
                "reason": "converged" if concept == "doctor" else "budget exhausted",
                "images_used": int(np.sum(history)),
                "weights": [0.2, 0.1, -0.1, -0.2],
                "axes": [{"name": "gender", "values": ["man", "woman"]}, {"name": "age", "values": ["young", "old"]}],
            }
        )
    concepts[0]["after_fresh_seeds"] = Distribution.from_counts([26, 24, 25, 25], TARGET).to_dict()
    concepts[1]["before"] = None  # a run resumed past its first measurement has no "before"
    summary = {
        "concepts": concepts,
        "images_total": total,
        "unet_evaluations": total * 40,
        "wall_time_s": 12.5,
        "preserved_concepts": ["", "a photo of a teacher", "a photo of a chef"],
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture
def run_folder(tmp_path) -> Path:
    return write_run_folder(tmp_path / "run")


@pytest.fixture
def screenshot():
    """``screenshot(page, png)`` renders ``page`` in headless Chromium (Debian's ``chromium`` package) and
    saves a 1200-pixel-wide screenshot. Without Chromium the test skips on a developer machine and fails in CI
    (``CI`` set), where ``.ci/run`` installs it."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")

    def render(page: Path, png: Path, height: int = 2000) -> subprocess.CompletedProcess:
        command = [
            executable,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={png.parent / 'chromium-profile'}",
            f"--screenshot={png}",
            f"--window-size=1200,{height}",
            page.resolve().as_uri(),
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    return render
