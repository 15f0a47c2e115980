"""Which recorded runs would a controller change? Replay each run folder's log through today's controller.

For every run folder (``summary.json`` holds the controller's configuration, ``log.jsonl`` every batch with its
seeds and labels), the controller is rebuilt and fed the logged batches in order; before each one, what it
proposes now is compared with what the run generated (weights to 1e-9, images, seeds). A run whose every
batch is proposed again would be the same run today: its numbers still hold without generating an image.

    python benchmarks/replay_runs.py runs/doctor runs/ceo
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mist_debias.core.run_folder import read_json, read_jsonl
from mist_debias.loop.control import controller_from_dict

# The same weights up to floating-point summation order (BLAS threads may reorder the fit's sums).
WEIGHT_TOLERANCE = 1e-9


def first_difference(folder: Path) -> str | None:
    """None when today's controller proposes every logged batch again, else where it first departs."""
    controller = controller_from_dict(read_json(folder / "summary.json")["controller"])
    for step, entry in enumerate(read_jsonl(folder / "log.jsonl")):
        proposal = {p.concept: p for p in controller.propose()}.get(entry["concept"])
        logged = (np.round(entry["weights"], 4).tolist(), entry["n_images"], entry.get("seed_start"))
        if proposal is None:
            return f"batch {step}: the run generated {logged}, the controller now stops"
        now = (np.round(proposal.weights, 4).tolist(), proposal.n_images, proposal.seed_start)
        gap = float(np.max(np.abs(proposal.weights - np.asarray(entry["weights"]))))
        same = gap <= WEIGHT_TOLERANCE * (1.0 + float(np.max(np.abs(proposal.weights)))) and now[1:] == logged[1:]
        if not same:
            return f"batch {step}: the run generated {logged}, the controller now proposes {now}"
        controller.observe_logged(entry)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of `mist debias`")
    for folder in parser.parse_args().runs:
        difference = first_difference(folder)
        print(f"{folder}: {'identical' if difference is None else 'differs at ' + difference}")


if __name__ == "__main__":
    main()
