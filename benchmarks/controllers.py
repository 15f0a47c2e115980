"""Official, adaptive and panel controllers on simulated plants with common random numbers, over replicates.

Every plant is a :class:`~mist_debias.loop.control.simulate.SeededPlant`: each replicate draws a new
population of seeds, each seed has its own cell at every weight (as on the world), and controllers that
name no seeds get fresh ones (independent batches). For each plant and controller: how often the run
certifies (the official loop: stops on point estimates), the images it used (median over all runs and over
certified runs), how good the final edit really is (the true ratios at the final weights, known for a
simulated plant, and 2,000 fresh images there), and how often a certified run is truly within tolerance.
A last table checks honesty where certifying would be wrong: the ratio sits just outside the tolerance and
no weight moves it, and a plant where the target needs edits that lose the concept.

    python benchmarks/controllers.py --replicates 40
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

from mist_debias.loop.control import CONTROLLERS, ConceptTarget
from mist_debias.loop.control.simulate import SeededPlant, simulate
from mist_debias.measure.metrics import confidence_sequence, wilson_interval

FRESH_IMAGES = 2000
FRESH_SEED = 90_000_000


def benchmark_plants() -> dict[str, tuple[SeededPlant, tuple[float, ...], int]]:
    """Named plants with their targets and budgets.

    Two cells from 85/15 at weight scales where the official step 0.1 is about right, too weak, far too weak
    or far too strong; a saturating response; the doctor's response (steeper near balance than
    logit-linear); eight cells with cross-talk; the CEO's steepness (0.25 in weight
    moves a batch from 27/19/9/5 to 1/10/18/19) with four and twelve cells, undecodable images beyond
    |w| = 5 and the concept fading for large edits; cells that are products of axes (gender × age,
    gender × race × age) under an edit that moves each axis and not their interaction, as on the world,
    with the controller told the cells' coupling or not; non-uniform targets.
    """
    start = np.array([0.85, 0.15])
    half = (0.5, 0.5)
    eight = np.array([0.30, 0.05, 0.15, 0.04, 0.20, 0.06, 0.12, 0.08])
    ceo4 = np.array([0.45, 0.33, 0.14, 0.08])
    ceo12 = np.array([0.22, 0.16, 0.12, 0.09, 0.08, 0.07, 0.06, 0.06, 0.05, 0.04, 0.03, 0.02])
    steep = {"cross": 0.3, "invalid_rate": 0.05, "decodable_limit": 5.0, "loss_radius": 10.0}
    gender_age = axes_plant([(0.8, 0.2), (0.3, 0.7)])
    gender_race_age = axes_plant([(0.8, 0.2), (0.6, 0.25, 0.15), (0.3, 0.7)])
    return {
        "K2 easy (scale 12)": (SeededPlant.from_ratios(start, 12.0), half, 20000),
        "K2 moderate (scale 3)": (SeededPlant.from_ratios(start, 3.0), half, 20000),
        "K2 weak (scale 0.3)": (SeededPlant.from_ratios(start, 0.3), half, 20000),
        "K2 strong (scale 150)": (SeededPlant.from_ratios(start, 150.0), half, 20000),
        "K2 saturating": (SeededPlant.from_ratios(start, 3.0, saturation=0.4), half, 20000),
        "K2 doctor-steep": (doctor_steep(), half, 20000),
        "K8 moderate, cross-talk": (
            SeededPlant.from_ratios(eight, 2.0, cross=0.3, seed=3, invalid_rate=0.02),
            tuple(np.full(8, 1 / 8)),
            20000,
        ),
        "K4 CEO-steep": (SeededPlant.from_ratios(ceo4, 8.0, seed=5, **steep), tuple(np.full(4, 1 / 4)), 8000),
        "K12 CEO-steep": (SeededPlant.from_ratios(ceo12, 8.0, seed=6, **steep), tuple(np.full(12, 1 / 12)), 12000),
        "K4 axes, coupling known": (gender_age, tuple(np.full(4, 1 / 4)), 8000),
        "K4 axes, coupling unknown": (replace(gender_age, coupling=None), tuple(np.full(4, 1 / 4)), 8000),
        "K12 axes, coupling known": (gender_race_age, tuple(np.full(12, 1 / 12)), 12000),
        "K12 axes, coupling unknown": (replace(gender_race_age, coupling=None), tuple(np.full(12, 1 / 12)), 12000),
        "K2 target 30/70": (SeededPlant.from_ratios(start, 3.0), (0.3, 0.7), 20000),
        "K4 target 40/30/20/10": (
            SeededPlant.from_ratios(ceo4[::-1], 8.0, seed=5, **steep),
            (0.4, 0.3, 0.2, 0.1),
            8000,
        ),
    }


def honesty_plants() -> dict[str, tuple[SeededPlant, tuple[float, ...], int]]:
    """Plants where a certificate would be false: the ratio 0.005 outside the tolerance whatever the
    weight; a target reachable only by edits that lose the concept (kept < 95% of unedited); and product
    cells whose dependence the edit cannot change (:func:`dependent_axes`)."""
    return {
        "K2 stuck at 0.555": (SeededPlant.from_ratios([0.555, 0.445], 0.0), (0.5, 0.5), 3000),
        "K4 stuck 0.005 outside": (
            SeededPlant.from_ratios([0.305, 0.25, 0.25, 0.195], 0.0),
            (0.25, 0.25, 0.25, 0.25),
            3000,
        ),
        "K2 concept lost": (SeededPlant.from_ratios([0.95, 0.05], 0.5, loss_radius=3.0), (0.5, 0.5), 6000),
        "K4 axes, dependence": (dependent_axes(), tuple(np.full(4, 1 / 4)), 8000),
    }


def doctor_steep() -> SeededPlant:
    """The world's doctor over gender: 95% men unedited, 83% of seeds flipping within a narrow band around
    w ≈ 0.76 (the mixture fitted to the doctor's measured shares at w = 0, 0.5, 0.74–0.78 and 1.12)."""
    return SeededPlant(np.array([0.437, -0.437]), 0.575 * np.eye(2), steep_share=0.83, steep_scale=0.065)


def axes_plant(axis_ratios) -> SeededPlant:
    """Product cells as steep as the world's CEO (an edit that moves each axis), undecodable images beyond
    |w| = 5 and the concept fading for large edits."""
    return SeededPlant.from_axes(axis_ratios, 8.0, invalid_rate=0.05, decodable_limit=5.0, loss_radius=10.0)


def dependent_axes() -> SeededPlant:
    """Gender × age cells under an edit that moves each axis, with a gender–age dependence (log odds ratio
    1.16) the edit cannot change: at balanced marginals the cells are 0.18 / 0.32 / 0.32 / 0.18, so no weight
    brings every cell within 0.05 of 25%."""
    plant = axes_plant([(0.8, 0.2), (0.3, 0.7)])
    return replace(plant, offsets=plant.offsets - 0.29 * np.array([1.0, -1.0, -1.0, 1.0]))


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


def run(controller_name: str, plant: SeededPlant, target, replicate: int, budget: int) -> dict:
    concept = ConceptTarget(
        "concept", target, coupling=None if plant.coupling is None else tuple(map(tuple, plant.coupling))
    )
    controller = CONTROLLERS[controller_name]([concept], budget=budget)
    population = plant.with_noise_seed(replicate)
    result = simulate(controller, {"concept": population}, seed=replicate)
    status = controller.status("concept")
    final = result.final_weights["concept"]
    true_dev = float(np.max(np.abs(population.ratios(final) - concept.target_array)))
    counts, _, _ = population.sample_seeds(final, np.arange(FRESH_SEED, FRESH_SEED + FRESH_IMAGES))
    fresh_dev = float(np.max(np.abs(counts / max(counts.sum(), 1) - concept.target_array)))
    return {
        "converged": status.converged,
        "reason": status.reason,
        "images": status.images_used,
        "true_dev": true_dev,
        "fresh_dev": fresh_dev,
        "kept": population.kept_share(final),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=40)
    parser.add_argument("--honesty-replicates", type=int, default=200)
    parser.add_argument("--controllers", default="official,adaptive,panel")
    parser.add_argument("--plants", default="", help="comma-separated substrings of plant names (default: all)")
    args = parser.parse_args()
    names = args.controllers.split(",")
    wanted = [w for w in args.plants.split(",") if w]

    print(f"{args.replicates} replicates per row; tolerance 0.05; fresh check: {FRESH_IMAGES} new images")
    anytime, fixed = certificate_floor(0.5)
    print(f"floor at exactly 50/50: {anytime} images (anytime-valid, α = 0.05), {fixed} (fixed-n Wilson, one look)")
    print(
        f"{'plant':26s} {'controller':10s} {'certified':>9s} {'images med':>10s} {'cert. med':>9s} "
        f"{'true ok|cert':>12s} {'|r−t| true med':>14s} {'max':>6s} {'fresh med':>10s} {'time/run':>9s}"
    )
    for name, (plant, target, budget) in benchmark_plants().items():
        if not args.replicates or (wanted and not any(w in name for w in wanted)):
            continue
        medians = {}
        for controller_name in names:
            start = time.perf_counter()
            rows = [run(controller_name, plant, target, r, budget) for r in range(args.replicates)]
            elapsed = (time.perf_counter() - start) / args.replicates
            images = np.array([r["images"] for r in rows])
            certified = np.array([r["converged"] for r in rows])
            true_dev = np.array([r["true_dev"] for r in rows])
            fresh_dev = np.array([r["fresh_dev"] for r in rows])
            cert_images = np.median(images[certified]) if certified.any() else np.nan
            ok = np.mean(true_dev[certified] < 0.05) if certified.any() else np.nan
            medians[controller_name] = cert_images
            print(
                f"{name:26s} {controller_name:10s} {certified.mean():9.0%} {np.median(images):10.0f} "
                f"{cert_images:9.0f} {ok:12.0%} {np.median(true_dev):14.3f} {true_dev.max():6.3f} "
                f"{np.median(fresh_dev):10.3f} {elapsed:8.2f}s"
            )
        if "adaptive" in medians and "panel" in medians:
            ratio = medians["panel"] / medians["adaptive"]
            print(f"{'':26s} panel / adaptive median images to a certificate: {ratio:.2f}")

    print(f"\nhonesty: {args.honesty_replicates} replicates; a certificate here is false (α = 0.05)")
    print(f"{'plant':26s} {'controller':10s} {'false cert.':>11s} {'reasons'}  (false: |r−t| > ε or kept < 95%)")
    for name, (plant, target, budget) in honesty_plants().items():
        if not args.honesty_replicates or (wanted and not any(w in name for w in wanted)):
            continue
        for controller_name in [n for n in names if n != "official"]:
            rows = [run(controller_name, plant, target, r, budget) for r in range(args.honesty_replicates)]
            false = np.mean([r["converged"] and (r["true_dev"] > 0.05 or r["kept"] < 0.95) for r in rows])
            reasons = {}
            for r in rows:
                reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
            print(f"{name:26s} {controller_name:10s} {false:11.1%} {reasons}")


if __name__ == "__main__":
    main()
