"""What a loop driven by a learned classifier believes vs what is true, on the synthetic world.

A run driven by the world's own CLIP classifier stops when CLIP says the cells are balanced. This script takes
the run's edit, generates the concept on fresh seeds (the world's sampler), and grades the same images three
ways: the driving classifier (what the loop believes), the driving classifier corrected for its confusion
matrix estimated on rendered glyphs of known cells (CLEAM-style), and the exact pixel oracle (what is true).

    python benchmarks/circularity.py RUN_DIR --n 400

prints per cell and per axis marginal: believed, corrected and true shares (95% Wilson intervals for the true
ones), and the largest gap of each from the truth.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from mist_debias.core.edit import Edit
from mist_debias.core.generate import GenerationConfig, generate_images
from mist_debias.core.pipeline import load_pipeline
from mist_debias.core.spec import AttributeSpec, Axis
from mist_debias.measure.classifiers.clip import CLIPCellClassifier
from mist_debias.measure.metrics import cleam_correct, wilson_interval
from mist_debias.world.confusion import estimate_confusion
from mist_debias.world.oracle import WorldOracle


def shares(counts: np.ndarray) -> np.ndarray:
    return counts / max(counts.sum(), 1)


def marginal(values: np.ndarray, spec: AttributeSpec, axis: str) -> dict[str, float]:
    """Sum cell shares over every cell with the same value of ``axis``."""
    out: dict[str, float] = {}
    for cell, share in zip(spec.cells, values, strict=True):
        value = dict(cell.values)[axis]
        out[value] = out.get(value, 0.0) + float(share)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished `mist debias` run folder driven by a CLIP classifier")
    parser.add_argument("--n", type=int, default=400, help="fresh images of the concept")
    parser.add_argument("--seed", type=int, default=10_000_000, help="first fresh seed")
    parser.add_argument("--confusion-images", type=int, default=200, help="rendered glyphs per cell")
    args = parser.parse_args()
    torch.set_num_threads(1)

    record = json.loads((args.run / "config.json").read_text())
    run = record["run"]
    concept = run["concepts"][0]["name"]
    axes = [Axis(name, tuple(values)) for name, values in run["attributes"]["axes"].items()]
    spec = AttributeSpec.from_axes(axes)
    generation = run["generation"]
    config = GenerationConfig(
        steps=generation["steps"], guidance=generation["guidance"], eta=generation["eta"], batch_size=32
    )
    pipe = load_pipeline(record["model"], device="cpu")
    prompt = Edit.load(args.run / "edit.safetensors").info["concepts"][0]["prompt"]
    seeds = list(range(args.seed, args.seed + args.n))
    with Edit.load(args.run / "edit.safetensors").applied(pipe):
        images = generate_images(pipe, [prompt] * args.n, seeds, config)

    clip = CLIPCellClassifier.load(run["classifier"]["drive"], device="cpu")
    believed_labels = clip.classify(images, spec).labels
    truth = WorldOracle().classify(images, spec)
    true_counts = truth.counts()
    confusion = estimate_confusion(clip, spec, concept, n=args.confusion_images)
    believed = shares(np.bincount(believed_labels[believed_labels >= 0], minlength=spec.num_cells))
    believed_on_decodable = shares(np.bincount(believed_labels[truth.valid], minlength=spec.num_cells))
    corrected = cleam_correct(believed, confusion)
    true = shares(true_counts)
    n_true = int(true_counts.sum())

    print(f"{concept}: {args.n} fresh images, {n_true} decodable by the oracle; prompt {prompt!r}")
    print(f"{'cell':<16}{'believed':>10}{'corrected':>11}{'true':>8}  true 95%")
    for j, cell in enumerate(spec.cells):
        low, high = wilson_interval(true_counts[j], n_true, 0.05)
        print(f"{cell.phrase:<16}{believed[j]:>10.3f}{corrected[j]:>11.3f}{true[j]:>8.3f}  [{low:.3f}, {high:.3f}]")
    for axis in axes:
        b, c, t = (marginal(v, spec, axis.name) for v in (believed, corrected, true))
        for value in axis.values:
            print(f"{axis.name}={value:<9}{b[value]:>10.3f}{c[value]:>11.3f}{t[value]:>8.3f}")
    print(f"largest gap from the truth, believed:  {np.max(np.abs(believed - true)):.3f}")
    print(f"largest gap from the truth, corrected: {np.max(np.abs(corrected - true)):.3f}")
    gap = np.max(np.abs(believed_on_decodable - true))
    print(f"largest gap from the truth, believed, on the images the oracle decodes: {gap:.3f}")
    print("confusion (rows true, columns predicted):")
    print(np.array2string(confusion, precision=3, suppress_small=True))


if __name__ == "__main__":
    main()
