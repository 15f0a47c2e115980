"""CUDA / reduced-precision checks and throughput on a GPU machine (run on demand, not part of the tests).

    python benchmarks/device_check.py [--device cuda] [--out results.json]

1. Correctness per family (sd1, sd2, sdxl) and dtype (float32, float16, bfloat16): the edit changes every
   edited layer, revert restores it bit-exactly, a LoRA export loaded with ``load_lora_weights`` reproduces the
   in-memory edited images, and the same seed gives the same initial latent on the CPU and the device.
2. Speed on SD1.4's real shapes (random weights): one edit for 1 concept × 2 cells and 37 concepts × 8 cells,
   and generation throughput (512×512, 20 steps, classifier-free guidance) in float16.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mist_debias.core.edit import Edit
from mist_debias.core.generate import GenerationConfig, UNetEvaluationCounter, generate_images
from mist_debias.core.layers import find_cross_attention_projections
from mist_debias.core.targets import ConceptPrompts, EditProblem
from mist_debias.core.text import PromptEncoder
from mist_debias.testing import FAMILIES, build_pipeline

GENDER = ("a photo of a man", "a photo of a woman")


def solve_edit(pipe) -> Edit:
    layers = find_cross_attention_projections(pipe.unet)
    problem = EditProblem(PromptEncoder(pipe), [ConceptPrompts("a photo of a doctor", GENDER)])
    update = problem.solve({p.name: p.module.weight.detach() for p in layers}, [[1.5, -0.5]])
    return Edit.from_update(update, layers, {})


def images(pipe, config: GenerationConfig) -> np.ndarray:
    out = generate_images(pipe, ["a photo of a doctor"] * 2, [3, 4], config)
    return np.stack([np.asarray(image, dtype=np.float32) for image in out])


def correctness(family: str, dtype: torch.dtype, device: torch.device) -> dict:
    pipe = build_pipeline(family, seed=1).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    config = GenerationConfig(steps=3, guidance=5.0, height=32, width=32)
    edit = solve_edit(pipe)
    before = {p.name: p.module.weight.detach().clone() for p in find_cross_attention_projections(pipe.unet)}
    original_images = images(pipe, config)
    handle = edit.apply(pipe)
    changed = sum(not torch.equal(before[p.name], p.module.weight) for p in find_cross_attention_projections(pipe.unet))
    edited_images = images(pipe, config)
    handle.revert()
    bit_exact = all(torch.equal(before[p.name], p.module.weight) for p in find_cross_attention_projections(pipe.unet))
    with tempfile.TemporaryDirectory() as folder:
        edit.export_lora(pipe, Path(folder) / "lora")
        pipe.load_lora_weights(str(Path(folder) / "lora"))
        lora_images = images(pipe, config)
        pipe.unload_lora_weights()
    latent_cpu = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(5))
    from diffusers.utils.torch_utils import randn_tensor

    latent_dev = randn_tensor((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(5), device=device)
    return {
        "family": family,
        "dtype": str(dtype).removeprefix("torch."),
        "layers_changed": f"{changed}/{len(before)}",
        "revert_bit_exact": bit_exact,
        "edit_moves_images_max_abs": float(np.abs(edited_images - original_images).max()),
        "lora_vs_edit_max_abs": float(np.abs(lora_images - edited_images).max()),
        "same_seed_latent_cpu_vs_device": bool(torch.equal(latent_cpu, latent_dev.cpu())),
        "finite_images": bool(np.isfinite(edited_images).all()),
    }


def debias_loop(device: torch.device, dtype: str) -> dict:
    """A two-round debias run on a tiny pipeline with a tiny CLIP classifier, generating in ``dtype``."""
    from mist_debias.loop.config import AttributesConfig, RunConfig
    from mist_debias.loop.runner import prepare_run
    from mist_debias.testing import build_clip, save_clip, save_pipeline

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        save_pipeline(build_pipeline("sd1"), root / "sd1")
        save_clip(build_clip(0), root / "clip")
        config = RunConfig().with_overrides(
            {
                "model": str(root / "sd1"),
                "concepts": ["doctor"],
                "attributes": AttributesConfig.from_cli((), ("man", "woman"), ()),
                "classifier.drive": str(root / "clip"),
                "controller.name": "official",
                "controller.n_images": 32,
                "controller.step": 0.5,
                "budget": 64,
                "generation.steps": 3,
                "generation.dtype": dtype,
            }
        )
        start = time.perf_counter()
        run, _ = prepare_run(config, root / "run", device=str(device))
        run.run()
        summary = run.finish(validate=16)
        edit = Edit.load(root / "run" / "edit.safetensors")
        return {
            "dtype": dtype,
            "unet_dtype": str(run.pipe.unet.dtype),
            "images": summary["images_total"],
            "unet_evaluations": summary["unet_evaluations"],
            "seconds": round(time.perf_counter() - start, 2),
            "edit_rank": edit.rank,
            "validation_counts": summary["concepts"][0]["after_fresh_seeds"]["counts"],
        }


def throughput(device: torch.device) -> dict:
    pipe = build_pipeline("sd1", size="sd14").to(device, torch.float16)
    pipe.set_progress_bar_config(disable=True)
    counter = UNetEvaluationCounter(pipe.unet)
    config = GenerationConfig(steps=20, guidance=7.5, height=512, width=512, batch_size=8)
    generate_images(pipe, ["a photo of a doctor"] * 8, list(range(8)), config)  # warm-up
    torch.cuda.synchronize()
    counter.count = 0
    start = time.perf_counter()
    generate_images(pipe, ["a photo of a doctor"] * 16, list(range(16)), config)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "images": 16,
        "seconds": round(elapsed, 2),
        "images_per_second": round(16 / elapsed, 2),
        "unet_evaluations": counter.count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    from diffusers.utils import logging

    logging.disable_progress_bar()
    results: dict = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name()

    def record(key: str, value) -> None:
        """Print one result as it comes and rewrite ``--out``, so a run cut short keeps what it measured."""
        print(json.dumps({key: value}), flush=True)
        if args.out:
            args.out.write_text(json.dumps(results, indent=2))

    results["correctness"] = []
    for family in FAMILIES:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            results["correctness"].append(correctness(family, dtype, device))
            record("correctness", results["correctness"][-1])
    results["debias_loop"] = []
    for dtype in ("float16", "bfloat16"):
        results["debias_loop"].append(debias_loop(device, dtype))
        record("debias_loop", results["debias_loop"][-1])
    if device.type == "cuda" and not args.skip_throughput:
        results["throughput_sd14_fp16"] = throughput(device)
        record("throughput_sd14_fp16", results["throughput_sd14_fp16"])


if __name__ == "__main__":
    main()
