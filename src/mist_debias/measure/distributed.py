"""Splitting work across processes: one process, or several under ``torchrun`` / ``accelerate launch``.

A launcher sets ``WORLD_SIZE`` (and ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``…) in every process. When it is
above 1, :func:`current_processes` joins the process group through accelerate's ``PartialState`` — NCCL on
CUDA, gloo on CPU (``PartialState(cpu=True)``) — and each process takes a contiguous share of the work with
``split_between_processes``; :meth:`Processes.gather` concatenates the per-process results in process order,
so a list split and gathered back is the original list. Without a launcher everything runs in this process
and accelerate is never imported.

On a CPU-only machine ``accelerate launch --cpu --num_processes N`` starts one process; use
``torchrun --nproc_per_node N -m mist_debias …`` there. On GPUs ``accelerate launch`` works as usual.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Processes:
    """This process's place among ``count`` cooperating processes (``index`` 0 is the main process)."""

    index: int = 0
    count: int = 1
    device: torch.device | None = None
    state: Any = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def share(self, items: Sequence) -> list:
        """This process's contiguous share of ``items`` (shares differ in length by at most one)."""
        if self.count == 1:
            return list(items)
        with self.state.split_between_processes(list(items)) as mine:
            return list(mine)

    def gather(self, results: list) -> list:
        """Every process's ``results`` concatenated in process order, returned to every process."""
        if self.count == 1:
            return list(results)
        from accelerate.utils import gather_object

        return list(gather_object(list(results)))

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.count > 1:
            self.state.wait_for_everyone()


def launched_processes() -> int:
    """The number of processes a launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def current_processes(device: str | None = None) -> Processes:
    """This process's :class:`Processes`; joins the launcher's process group when there is one.

    ``device`` is honoured in a single process (``None`` lets the pipeline loader choose). Under a launcher each
    process uses accelerate's device (its own GPU, or the CPU when CUDA is absent or ``device`` is ``"cpu"``).
    """
    if launched_processes() == 1:
        return Processes(device=torch.device(device) if device else None)
    from accelerate import PartialState

    cpu = device == "cpu" or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    target = torch.device("cpu") if cpu else state.device
    return Processes(index=state.process_index, count=state.num_processes, device=target, state=state)
