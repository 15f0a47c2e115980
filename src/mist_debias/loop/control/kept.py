"""The concept kept: is an edit surely losing the concept it debiases?

An edit that balances the cells by turning doctors into something else has not debiased doctors. Each
batch may report how many of its valid images still show the concept (``kept`` of ``n``). A weight is
*lost* when its share kept falls surely below ``floor`` (95%) of the unedited model's:

    U_α(kept_w / n_w) < floor · L_α(kept_0 / n_0),

with ``U_α``, ``L_α`` the upper and lower Wilson bounds at level 1 − α (so a weight is called lost only
when both intervals agree; a weight with too few images to tell is not lost).
"""

from __future__ import annotations

from mist_debias.measure.metrics import wilson_interval

KEPT_FLOOR = 0.95


def share_bounds(kept: int, n: int, alpha: float) -> tuple[float, float]:
    """Wilson interval of the share kept (vacuous [0, 1] for n = 0)."""
    lower, upper = wilson_interval(kept, n, alpha)
    return float(lower), float(upper)


def surely_lost(
    kept: int, n: int, kept_unedited: int, n_unedited: int, alpha: float, floor: float = KEPT_FLOOR
) -> bool:
    """True when the share kept at a weight is surely below ``floor`` times the unedited share."""
    if n == 0 or n_unedited == 0:
        return False
    return share_bounds(kept, n, alpha)[1] < floor * share_bounds(kept_unedited, n_unedited, alpha)[0]
