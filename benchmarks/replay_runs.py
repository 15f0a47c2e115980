"""Which recorded runs would a controller change? Replay each run folder's log through today's controller.

For every run folder (``summary.json`` holds the controller's configuration, ``log.jsonl`` every batch with its
seeds and labels), the controller is rebuilt and fed the logged batches in order; before each one, what it
proposes now is compared with what the run generated (weights to 1e-9, images, seeds). A run whose every
batch is proposed again would be the same run today: its numbers still hold without generating an image.

    python benchmarks/replay_runs.py runs/doctor runs/ceo

With ``--looks`` it also prints, for every certificate look of a panel-controller run, what the controller
believed of the ratios there just before the look (the fit's prediction ± the spread that sized the look) and
what the look's fresh images read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mist_debias.core.run_folder import read_json, read_jsonl
from mist_debias.loop.control import PanelController, controller_from_dict
from mist_debias.loop.control.panel import FRESH_SEED_START

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


def looks(folder: Path) -> list[str]:
    """For every fresh-seed look of a panel run: the fit's prediction ± spread there before it, and what it read."""
    controller = controller_from_dict(read_json(folder / "summary.json")["controller"])
    lines = []
    panel = isinstance(controller, PanelController)
    for step, entry in enumerate(read_jsonl(folder / "log.jsonl")):
        look = panel and (entry.get("seed_start") or 0) >= FRESH_SEED_START
        belief = controller.belief(entry["concept"], entry["weights"]) if look else None
        if belief is not None:
            counts = np.asarray(entry["counts"], dtype=np.float64)
            read = counts / max(counts.sum(), 1.0)
            (predicted, spread), cells = belief, range(1 if len(counts) == 2 else len(counts))
            believed = " ".join(f"{predicted[j]:.3f}±{spread[j]:.3f}" for j in cells)
            lines.append(
                f"  batch {step}: look of {entry['n_images']} at {np.round(entry['weights'], 4).tolist()}: believed"
                f" {believed}, read {' '.join(f'{read[j]:.3f}' for j in cells)}"
            )
        controller.observe_logged(entry)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of `mist debias`")
    parser.add_argument("--looks", action="store_true", help="also print belief and reading at every look")
    args = parser.parse_args()
    for folder in args.runs:
        difference = first_difference(folder)
        print(f"{folder}: {'identical' if difference is None else 'differs at ' + difference}")
        if args.looks:
            print("\n".join(looks(folder)))


if __name__ == "__main__":
    main()
