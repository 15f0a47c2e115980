"""What a two-cell certificate costs once the weight is chosen: images and success chance of valid test designs.

A certificate proves ``|r − t| < ε`` on fresh images at one weight, falsely at most α of the time when the truth
is outside. Whatever the search did, it pays this. Three designs, each valid at the α the panel controller
gives its first certification weight (``α s`` with ``s`` = ``first_look_share``):

- ``looks``: the panel controller's own (:mod:`mist_debias.loop.control.certify`): a look of ``n₁`` images sized
  by :func:`~mist_debias.loop.control.certify.plan_look`, then pooled looks at ``n₁ · 2^k`` with exact
  group-sequential boundaries, look k spending ``f (1 − f)^(k−1)`` of the site's α;
- ``sprt``: Wald's sequential probability ratio test of each side (``r = t + ε`` and ``r = t − ε`` against
  ``r = t``), checked after every ``--batch`` images; each likelihood ratio is a nonnegative supermartingale
  under its null, so by Ville's inequality stopping when both exceed ``1/α`` is a valid intersection–union test;
- ``plug-in``: the same with the alternative replaced by the running estimate (shrunk toward ``t`` by
  ``--prior`` pseudo-images), a predictable plug-in likelihood ratio (an e-process), which adapts to a truth
  away from ``t``.

Every design gets at most as many images as the looks' last pooled look. The first table gives, per true ratio,
the chance to certify and the mean images spent (certified or not); the ratio ``t + ε`` row is the false
certificate rate. Wald's bound ``log(1/α) / KL(t ‖ t + ε)`` is what any valid test needs in expectation at
``r = t`` when it almost surely certifies.

The second table is the looks design when the search has placed the weight with error ``τ`` on the ratio
(the truth ``t + N(0, τ²)``; ``τ = 0.5 / √N`` is the best a search on N seeds near the root can do): how often
the first look and the site certify, and the images they spend.

    python benchmarks/certificate_cost.py
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from mist_debias.loop.control import ConceptTarget, PanelController
from mist_debias.loop.control.certify import SITE_FIRST_LOOK_SHARE, crossing_boundaries, look_alpha, plan_look
from mist_debias.measure.metrics import kl_divergence

POOLED_LOOKS = 4  # the looks design: n₁, 2n₁, 4n₁, 8n₁


def log_likelihood_ratio(successes: np.ndarray, trials: int, alternative: np.ndarray, null: float) -> np.ndarray:
    """``log Π (q/p₀)^x ((1 − q)/(1 − p₀))^(1 − x)`` over ``trials`` Bernoulli draws with ``successes`` ones:
    alternative ``q`` against null ``p₀``."""
    return successes * np.log(alternative / null) + (trials - successes) * np.log((1 - alternative) / (1 - null))


class Setting:
    """Target, tolerance and the panel controller's look sizes and α for its first certification weight."""

    def __init__(self, target: float, tolerance: float) -> None:
        controller = PanelController([ConceptTarget("concept", (target, 1.0 - target), tolerance)])
        self.target, self.tolerance = target, tolerance
        self.alpha = look_alpha(controller.alpha, controller.first_look_share, 1)
        self.look_sizes = np.arange(controller.min_look, controller.max_look + 1, controller.batch_multiple)
        self.look_alphas = [look_alpha(self.alpha, SITE_FIRST_LOOK_SHARE, k + 1) for k in range(POOLED_LOOKS)]

    def first_look(self, spread: float) -> int:
        """The first look's size, as the controller sizes it when it believes the ratio is ``t ± spread``."""
        t = np.array([self.target, 1.0 - self.target])
        n, _ = plan_look(t, np.full(2, spread), t, self.tolerance, self.look_alphas[0], self.look_sizes)
        return n


def looks_design(setting: Setting, ratios: np.ndarray, first: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(certified, certified at the first look, images) per replicate whose true ratio is ``ratios[i]``."""
    t, eps = setting.target, setting.tolerance
    sizes = [first * 2**k for k in range(POOLED_LOOKS)]
    low = crossing_boundaries(sizes, setting.look_alphas, t - eps)  # count ≥ low[k] rejects r ≤ t − ε
    high = crossing_boundaries(sizes, setting.look_alphas, 1.0 - t - eps)  # others ≥ high[k] rejects r ≥ t + ε
    count = np.zeros(len(ratios))
    images = np.zeros(len(ratios))
    certified = np.zeros(len(ratios), dtype=bool)
    previous = 0
    for k, size in enumerate(sizes):
        open_ = ~certified
        count = count + rng.binomial(size - previous, ratios)
        images[open_] = size
        certified |= open_ & (count >= low[k]) & (size - count >= high[k])
        if k == 0:
            at_first = certified.copy()
        previous = size
    return certified, at_first, images


def likelihood_ratio_design(
    setting: Setting, ratios: np.ndarray, max_images: int, batch: int, prior: float | None, rng
) -> tuple[np.ndarray, np.ndarray]:
    """(certified, images): both sides' likelihood ratios checked every ``batch`` images; the alternative is ``t``
    (``prior`` None: the SPRT) or the running estimate shrunk toward ``t`` by ``prior`` pseudo-images."""
    t, eps = setting.target, setting.tolerance
    threshold = math.log(1.0 / setting.alpha)
    log_above = np.zeros(len(ratios))  # against r ≥ t + ε
    log_below = np.zeros(len(ratios))  # against r ≤ t − ε
    count = np.zeros(len(ratios))
    images = np.full(len(ratios), float(max_images))
    certified = np.zeros(len(ratios), dtype=bool)
    for seen in range(0, max_images, batch):
        guess = np.full(len(ratios), t) if prior is None else (count + prior * t) / (seen + prior)
        above = np.clip(guess, 1e-6, t + eps)
        below = np.clip(guess, t - eps, 1.0 - 1e-6)
        new = rng.binomial(batch, ratios)
        log_above += log_likelihood_ratio(new, batch, above, t + eps)
        log_below += log_likelihood_ratio(new, batch, below, t - eps)
        count += new
        now = ~certified & (log_above >= threshold) & (log_below >= threshold)
        images[now] = seen + batch
        certified |= now
    return certified, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--replicates", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=16, help="images between checks of the likelihood ratios")
    parser.add_argument("--prior", type=float, default=256.0, help="pseudo-images at t of the plug-in estimate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    setting = Setting(args.target, args.tolerance)
    rng = np.random.default_rng(args.seed)
    first = setting.first_look(0.0)
    most = first * 2 ** (POOLED_LOOKS - 1)
    t, eps, reps = args.target, args.tolerance, args.replicates
    wald = math.log(1.0 / setting.alpha) / kl_divergence((t, 1.0 - t), (t + eps, 1.0 - t - eps))
    print(f"t = {t}, ε = {eps}, α = {setting.alpha:.4f}, {reps} replicates; at most {most} images per design")
    print(f"Wald's bound at r = t: {wald:.0f} images in expectation for any valid test that surely certifies\n")
    print(
        f"{'true r':>7s}  {'looks (' + str(first) + ' …)':>22s}  {'sprt':>18s}  {'plug-in':>18s}   P(certify), images"
    )
    for offset in np.arange(0.0, eps + 1e-9, 0.01):
        ratios = np.full(reps, t + offset)
        certified, _, images = looks_design(setting, ratios, first, rng)
        cells = [f"{certified.mean():6.3f} {images.mean():6.0f}"]
        for prior in (None, args.prior):
            certified, images = likelihood_ratio_design(setting, ratios, most, args.batch, prior, rng)
            cells.append(f"{certified.mean():6.3f} {images.mean():6.0f}")
        print(f"{t + offset:7.2f}  {cells[0]:>22s}  {cells[1]:>18s}  {cells[2]:>18s}")

    print("\nthe looks design when the weight's true ratio is t + N(0, τ²) (τ = 0.5/√N: a search on N seeds)")
    print(f"{'τ':>6s} {'N':>6s} {'first look':>10s} {'P(first)':>9s} {'P(site)':>8s} {'images':>7s} {'per cert.':>9s}")
    for seeds in (None, 2048, 1024, 512, 256, 128):
        spread = 0.0 if seeds is None else 0.5 / math.sqrt(seeds)
        ratios = np.clip(t + spread * rng.standard_normal(reps), 0.0, 1.0)
        size = setting.first_look(spread)
        certified, at_first, images = looks_design(setting, ratios, size, rng)
        label = "–" if seeds is None else str(seeds)
        print(
            f"{spread:6.3f} {label:>6s} {size:10d} {at_first.mean():9.3f} {certified.mean():8.3f} "
            f"{images.mean():7.0f} {images.mean() / certified.mean():9.0f}"
        )


if __name__ == "__main__":
    main()
