"""Time one closed-form edit on SD1.4's real shapes (random weights) and report memory.

    python benchmarks/edit_speed.py [--device cpu|cuda] [--dtype float32|float16] [--threads N]

Cases: 1 concept × 2 cells, and 37 concepts × 8 cells (gender × race × age phrases). For each: encoding the
prompts + factorising A (``EditProblem``), solving every layer's L (``solve``), fingerprinting the edited
tensors, and applying the edit in place. Peak memory is reported relative to the loaded pipeline.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import time

import torch

from mist_debias.core.edit import Edit
from mist_debias.core.layers import find_cross_attention_projections
from mist_debias.core.prompts import PROFESSIONS
from mist_debias.core.targets import ConceptPrompts, EditProblem
from mist_debias.core.text import PromptEncoder
from mist_debias.testing import build_pipeline


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cells_8() -> list[str]:
    return [
        f"a photo of a {age} {race} {gender}"
        for age, race, gender in itertools.product(("young", "old"), ("White", "Black"), ("man", "woman"))
    ]


def run_case(pipe, concepts: list[ConceptPrompts], device: torch.device) -> dict:
    layers = find_cross_attention_projections(pipe.unet)
    weights = {p.name: p.module.weight.detach() for p in layers}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    problem = EditProblem(PromptEncoder(pipe), concepts)
    sync()
    built = time.perf_counter()
    num_cells = len(concepts[0].attributes)
    update = problem.solve(weights, [[0.1] * num_cells for _ in concepts])
    sync()
    solved = time.perf_counter()
    edit = Edit.from_update(update, layers, {})
    sync()
    fingerprinted = time.perf_counter()
    handle = edit.apply(pipe, check=False)
    sync()
    applied = time.perf_counter()
    handle.revert()
    return {
        "concepts": len(concepts),
        "cells": num_cells,
        "layers": len(layers),
        "rank": problem.rank_bound,
        "encode_and_factor_s": round(built - start, 3),
        "solve_all_layers_s": round(solved - built, 3),
        "fingerprint_s": round(fingerprinted - solved, 3),
        "apply_s": round(applied - fingerprinted, 3),
        "total_s": round(applied - start, 3),
        "edit_file_kb": round((edit.right.numel() + sum(t.numel() for t in edit.left.values())) * 4 / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.set_grad_enabled(False)
    pipe = build_pipeline("sd1", size="sd14").to(device, getattr(torch, args.dtype))
    loaded_rss = rss_mb()
    results = {"device": str(device), "dtype": args.dtype, "threads": torch.get_num_threads()}
    results["pipeline_rss_mb"] = round(loaded_rss, 1)
    man_woman = ("a photo of a man", "a photo of a woman")
    cases = {
        "1x2": [ConceptPrompts("a photo of a doctor", man_woman)],
        "37x8": [ConceptPrompts(f"a photo of a {p}", tuple(cells_8())) for p in PROFESSIONS[:37]],
    }
    run_case(pipe, cases["1x2"], device)  # warm-up
    for name, concepts in cases.items():
        results[name] = run_case(pipe, concepts, device)
    results["peak_rss_mb"] = round(peak_mb(), 1)
    results["peak_over_pipeline_mb"] = round(peak_mb() - loaded_rss, 1)
    if device.type == "cuda":
        results["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
