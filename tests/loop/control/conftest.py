import numpy as np
import pytest

from mist_debias.loop.control.simulate import SoftmaxPlant


@pytest.fixture
def plants() -> dict[str, SoftmaxPlant]:
    """Two-cell plants starting at 85% / 15%, differing only in the weight scale of their response.

    ``easy``: the official step 0.1 reaches the tolerance in a few iterations; ``small``: the response is
    so weak that step 0.1 barely moves it; ``large``: so strong that step 0.1 overshoots to the other side.
    """
    start = np.array([0.85, 0.15])
    return {
        "easy": SoftmaxPlant.from_ratios(start, scale=12.0),
        "small": SoftmaxPlant.from_ratios(start, scale=0.3),
        "large": SoftmaxPlant.from_ratios(start, scale=150.0),
    }
