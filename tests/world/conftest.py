"""Shared fixtures of the world tests: one tiny trained world per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from mist_debias.world.models import WorldConfig
from mist_debias.world.train import train_world


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Output folder of a tiny training run (seed 0): ``pipeline/``, ``clip/``, ``stages/``."""
    out_dir = tmp_path_factory.mktemp("world") / "run"
    train_world(out_dir, seed=0, config=WorldConfig.tiny())
    return out_dir
