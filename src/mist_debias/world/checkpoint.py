"""Mid-stage training checkpoints: everything needed to continue a training loop bit-identically.

A checkpoint is a folder with two files, written atomically (the folder replaces the previous one in one
rename):

* ``tensors.safetensors``: model weights (``model.*``), EMA shadow weights (``ema.*``), the optimizer's
  per-parameter tensors (``optimizer.<index>.<name>``) and the torch generator state (``generator``),
* ``state.json``: the step, the loss history, the numpy generator state, the optimizer's parameter groups,
  the learning-rate schedule and the EMA counters.

No pickle is involved anywhere: a checkpoint can be loaded from an untrusted folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

from mist_debias.core.atomic import atomic_directory

TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"


@dataclass
class TrainingLoop:
    """The mutable state of one training loop: what a checkpoint saves and restores."""

    model: torch.nn.Module
    ema: EMAModel
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    rng: np.random.Generator
    generator: torch.Generator


def save_checkpoint(folder: Path, loop: TrainingLoop, step: int, losses: list[float]) -> None:
    """Write ``loop`` after ``step`` finished steps into ``folder`` (atomically replaced)."""
    tensors = {f"model.{name}": value.detach().cpu() for name, value in loop.model.state_dict().items()}
    ema_state = loop.ema.state_dict()
    shadow = ema_state.pop("shadow_params")
    tensors.update({f"ema.{index}": value.detach().cpu() for index, value in enumerate(shadow)})
    optimizer_state = loop.optimizer.state_dict()
    for index, values in optimizer_state["state"].items():
        tensors.update({f"optimizer.{index}.{name}": value.detach().cpu() for name, value in values.items()})
    tensors["generator"] = loop.generator.get_state()
    state = {
        "step": step,
        "losses": losses,
        "rng": loop.rng.bit_generator.state,
        "optimizer_groups": optimizer_state["param_groups"],
        "schedule": loop.schedule.state_dict(),
        "ema": ema_state,
    }
    with atomic_directory(Path(folder), force=True) as tmp:
        save_file({name: value.contiguous() for name, value in tensors.items()}, tmp / TENSORS_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")


def load_checkpoint(folder: Path, loop: TrainingLoop) -> tuple[int, list[float]]:
    """Restore ``loop`` in place from ``folder``; returns (finished steps, loss history)."""
    folder = Path(folder)
    state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    tensors = load_file(folder / TENSORS_FILE)
    loop.model.load_state_dict({name[6:]: value for name, value in tensors.items() if name.startswith("model.")})
    shadow = [tensors[f"ema.{index}"] for index in range(len(loop.ema.shadow_params))]
    loop.ema.load_state_dict({**state["ema"], "shadow_params": shadow})
    per_parameter: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            per_parameter.setdefault(int(index), {})[key] = value
    groups = [
        {**group, "betas": tuple(group["betas"])} if "betas" in group else group for group in state["optimizer_groups"]
    ]
    loop.optimizer.load_state_dict({"state": per_parameter, "param_groups": groups})
    loop.schedule.load_state_dict(state["schedule"])
    loop.rng.bit_generator.state = state["rng"]
    loop.generator.set_state(tensors["generator"])
    return int(state["step"]), [float(value) for value in state["losses"]]
