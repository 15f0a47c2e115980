"""Official vs adaptive controller on simulated plants, over many replicates.

For each plant and controller: how often the run ends converged (the official loop on point estimates,
the adaptive one on its certificate), the images it used, and how good the final edit really is — the
true ratios at the final weights (known for a simulated plant) and a fresh sample of images there.

    python benchmarks/controllers.py --replicates 100
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mist_debias.loop.control import AdaptiveController, ConceptTarget, OfficialController
from mist_debias.loop.control.simulate import SoftmaxPlant, simulate
from mist_debias.measure.metrics import confidence_sequence, wilson_interval

FRESH_IMAGES = 2000


def benchmark_plants() -> dict[str, tuple[SoftmaxPlant, tuple[float, ...]]]:
    """Named plants with their targets: two cells from 85/15, at weight scales where the official step
    0.1 is about right, too weak, far too weak, or far too strong; a saturating response; eight cells."""
    start = np.array([0.85, 0.15])
    half = (0.5, 0.5)
    eight = np.array([0.30, 0.05, 0.15, 0.04, 0.20, 0.06, 0.12, 0.08])
    return {
        "K2 easy (scale 12)": (SoftmaxPlant.from_ratios(start, 12.0), half),
        "K2 moderate (scale 3)": (SoftmaxPlant.from_ratios(start, 3.0), half),
        "K2 weak (scale 0.3)": (SoftmaxPlant.from_ratios(start, 0.3), half),
        "K2 strong (scale 150)": (SoftmaxPlant.from_ratios(start, 150.0), half),
        "K2 saturating": (SoftmaxPlant.from_ratios(start, 3.0, saturation=0.4), half),
        "K8 moderate, cross-talk": (
            SoftmaxPlant.from_ratios(eight, 2.0, cross=0.3, seed=3, invalid_rate=0.02),
            tuple(np.full(8, 1 / 8)),
        ),
    }


def certificate_floor(target: float, tolerance: float = 0.05, alpha: float = 0.05) -> tuple[int, int]:
    """Images a certificate needs when the ratio is exactly on target (the best any search can do):
    (anytime-valid confidence sequence as the adaptive controller uses it, fixed-n Wilson looked at once)."""
    strength = target * (1 - target) / (0.25 * tolerance) ** 2
    floors = []
    for interval in (
        lambda n: confidence_sequence(target * n, n, alpha, target, strength),
        lambda n: wilson_interval(target * n, n, alpha),
    ):
        n = 10
        while True:
            lower, upper = interval(n)
            if lower >= target - tolerance and upper <= target + tolerance:
                break
            n += 1
        floors.append(n)
    return floors[0], floors[1]


def run(controller_name: str, plant: SoftmaxPlant, target, seed: int, budget: int) -> dict:
    concept = ConceptTarget("concept", target)
    cls = AdaptiveController if controller_name == "adaptive" else OfficialController
    controller = cls([concept], budget=budget)
    result = simulate(controller, {"concept": plant}, seed=seed)
    status = controller.status("concept")
    final = result.final_weights["concept"]
    true_dev = float(np.max(np.abs(plant.ratios(final) - concept.target_array)))
    counts, _ = plant.sample(final, FRESH_IMAGES, np.random.default_rng(10_000 + seed))
    fresh_dev = float(np.max(np.abs(counts / counts.sum() - concept.target_array)))
    return {
        "converged": status.converged,
        "images": status.images_used,
        "true_dev": true_dev,
        "fresh_dev": fresh_dev,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=20000)
    args = parser.parse_args()

    header = (
        f"{'plant':26s} {'controller':10s} {'stopped':>8s} {'images med':>10s} {'mean':>6s} "
        f"{'true ok':>8s} {'|r−t| true med':>14s} {'max':>6s} {'fresh med':>10s} {'time/run':>9s}"
    )
    print(f"{args.replicates} replicates per row; tolerance 0.05; fresh check: {FRESH_IMAGES} new images")
    anytime, fixed = certificate_floor(0.5)
    print(f"floor at exactly 50/50: {anytime} images (anytime-valid, α = 0.05), {fixed} (fixed-n Wilson, one look)")
    print(header)
    for name, (plant, target) in benchmark_plants().items():
        medians = {}
        for controller_name in ("official", "adaptive"):
            start = time.perf_counter()
            rows = [run(controller_name, plant, target, args.seed + r, args.budget) for r in range(args.replicates)]
            elapsed = (time.perf_counter() - start) / args.replicates
            images = np.array([r["images"] for r in rows])
            true_dev = np.array([r["true_dev"] for r in rows])
            fresh_dev = np.array([r["fresh_dev"] for r in rows])
            stopped = np.mean([r["converged"] for r in rows])
            medians[controller_name] = np.median(images)
            print(
                f"{name:26s} {controller_name:10s} {stopped:8.0%} {np.median(images):10.0f} {images.mean():6.0f} "
                f"{np.mean(true_dev < 0.05):8.0%} {np.median(true_dev):14.3f} {true_dev.max():6.3f} "
                f"{np.median(fresh_dev):10.3f} {elapsed:8.2f}s"
            )
        print(f"{'':26s} adaptive / official median images: {medians['adaptive'] / medians['official']:.2f}")


if __name__ == "__main__":
    main()
