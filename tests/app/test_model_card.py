"""The model card written next to an exported LoRA: hub front matter, measurements, usage; atomic with the LoRA."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from mist_debias.app.cli import main
from mist_debias.app.model_card import RunRecord, model_card, run_record_of
from mist_debias.core.edit import Edit, fingerprint
from mist_debias.core.layers import find_cross_attention_projections
from mist_debias.core.pipeline import load_pipeline
from mist_debias.core.spec import AttributeSpec
from mist_debias.measure.metrics import Distribution

CELLS = ["man", "woman"]


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text[4 : text.index("\n---\n", 4)])


def metadata(weights=(-0.7, 0.7)) -> dict:
    spec = AttributeSpec.from_phrases(CELLS).to_dict()
    return {
        "rank": 1,
        "layers": ["a.to_k", "a.to_v"],
        "method": "mist",
        "keys": "eos",
        "hyperparameters": {"lam": 0.5},
        "preserve_prompts": ["", "a photo of a nurse"],
        "base_fingerprint": "f" * 64,
        "library_version": "0.1.0",
        "concepts": [{"name": "doctor", "prompt": "a photo of a doctor", "weights": list(weights), "spec": spec}],
    }


def run_record() -> RunRecord:
    before = Distribution.from_counts([62, 2], [0.5, 0.5])
    after = Distribution.from_counts([30, 34], [0.5, 0.5])
    summary = {
        "concepts": [
            {
                "name": "doctor",
                "cells": CELLS,
                "target": [0.5, 0.5],
                "before": before.to_dict(),
                "after": after.to_dict(),
                "converged": True,
                "reason": "converged",
            }
        ]
    }
    config = {"run": {"model": "owner/base", "generation": {"guidance": 1.5, "eta": 0.75}}, "classifier": "Oracle"}
    return RunRecord(summary=summary, config=config)


def test_card_front_matter_and_body_from_a_run():
    card = model_card(metadata(), "owner/base", "out/doctor-lora", run=run_record(), license_name="mit")
    front = front_matter(card)
    assert front == {
        "base_model": "owner/base",
        "library_name": "diffusers",
        "tags": ["lora", "mist-debias", "text-to-image", "debiasing"],
        "license": "mit",
    }
    record = run_record().summary["concepts"][0]
    for key in ("before", "after"):
        d = record[key]
        for j in range(2):  # every cell's measured ratio and its interval, as the summary has them
            assert f"{d['ratios'][j]:.2f} [{d['lower'][j]:.2f}, {d['upper'][j]:.2f}]" in card
    assert "| doctor | a photo of a doctor | man | 0.500 | -0.700 |" in card and "| woman | 0.500 | 0.700 |" in card
    assert "measured by `Oracle`" in card and "before n = 64, after n = 64; converged" in card
    assert 'pipe = DiffusionPipeline.from_pretrained("owner/base"' in card
    assert 'pipe.load_lora_weights("out/doctor-lora")' in card
    assert 'image = pipe("a photo of a doctor", guidance_scale=1.5, eta=0.75)' in card
    assert '"", "a photo of a nurse"' in card and "## Limitations" in card


def test_card_without_measurements_or_hub_id(tmp_path):
    card = model_card(metadata(), str(tmp_path), "lora")
    front = front_matter(card)
    assert "base_model" not in front and "license" not in front  # a local folder is no hub id; licence unknown
    assert front["library_name"] == "diffusers" and "set `base_model`" in card
    assert "Not recorded with this edit" in card and "[" not in card.split("## Measured distributions")[1][:200]


@pytest.fixture
def run_edit(tmp_path, sd1_dir):
    """A run folder on the tiny SD1 model: edit.safetensors, summary.json, config.json."""
    folder = tmp_path / "run"
    folder.mkdir()
    pipe = load_pipeline(sd1_dir, device="cpu")
    projections = find_cross_attention_projections(pipe.unet)
    generator = torch.Generator().manual_seed(0)
    right = torch.randn(1, projections[0].weight_shape[1], generator=generator)
    left = {p.name: torch.randn(p.weight_shape[0], 1, generator=generator) for p in projections}
    info = {key: value for key, value in metadata().items() if key not in ("rank", "layers", "base_fingerprint")}
    Edit(right, left, fingerprint(projections), info).save(folder / "edit.safetensors")
    record = run_record()
    (folder / "summary.json").write_text(json.dumps(record.summary))
    (folder / "config.json").write_text(json.dumps(record.config))
    return folder / "edit.safetensors"


def run_cli(*args) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
        raise SystemExit(0)
    return exit_info.value.code or 0


def test_export_lora_writes_the_card_with_the_adapter(run_edit, sd1_dir, tmp_path):
    model = shutil.copytree(sd1_dir, tmp_path / "base")
    (model / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    out = tmp_path / "lora"
    assert run_cli("export", model, run_edit, "--format", "lora", "--out", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "pytorch_lora_weights.safetensors"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    card = (out / "README.md").read_text()
    assert front_matter(card)["license"] == "apache-2.0" and front_matter(card)["library_name"] == "diffusers"
    assert "measured by `Oracle`" in card and f'pipe.load_lora_weights("{out}")' in card
    assert run_record_of(run_edit) is not None and run_record_of(tmp_path / "other.safetensors") is None
    pipe = load_pipeline(model, device="cpu")
    pipe.load_lora_weights(str(out))  # the folder, card included, loads as diffusers documents it


def test_failed_export_writes_no_card(run_edit, tmp_path, capsys):
    from mist_debias.testing import build_pipeline, save_pipeline

    other = save_pipeline(build_pipeline("sd1", seed=123), tmp_path / "other")
    out = tmp_path / "lora"
    assert run_cli("export", other, run_edit, "--format", "lora", "--out", out) == 2
    assert "another base model" in capsys.readouterr().err
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
