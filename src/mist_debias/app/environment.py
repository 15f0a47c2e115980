"""The process settings of the command line, made before torch, diffusers or transformers are imported (so
that ``mist --help`` imports none of them): quiet libraries and a thread count that suits the machine's load."""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import MutableMapping

QUIET_LIBRARIES = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def quiet_libraries(environ: MutableMapping[str, str] = os.environ) -> None:
    """diffusers and transformers log errors only and draw no download bars; Python warnings are silenced.
    A variable the user set is kept. Libraries this process already imported are quieted directly."""
    for name, value in QUIET_LIBRARIES.items():
        environ.setdefault(name, value)
    warnings.filterwarnings("ignore")
    if "diffusers" in sys.modules or "transformers" in sys.modules:
        quiet_loaded_libraries()


def quiet_loaded_libraries() -> None:
    """Silence diffusers' and transformers' progress bars and logs (imports both; call before loading a model)."""
    from mist_debias.core.pipeline import quiet_libraries as quiet

    quiet()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def thread_count(cores: int, load: float) -> int | None:
    """Threads for torch on ``cores`` cores with a one-minute load average of ``load`` runnable processes:
    the idle cores, ``max(1, ⌊cores − load + ½⌋)``, when other work keeps some busy, else ``None`` (torch's
    own default, one thread per physical core). torch's threads wait for each other at every operation, so on
    busy cores one slow thread stalls them all (64 world images on 2 cores at load 4: 19 s with one thread,
    295 s with two)."""
    idle = math.floor(cores - load + 0.5)
    return None if idle >= cores else max(1, idle)


def choose_threads(environ: MutableMapping[str, str] = os.environ) -> int | None:
    """Set ``OMP_NUM_THREADS`` (read by torch when it starts) from :func:`thread_count`, unless the user set
    it; returns the count set, or ``None``."""
    if any(name in environ for name in THREAD_VARIABLES) or not hasattr(os, "getloadavg"):
        return None
    threads = thread_count(usable_cores(), os.getloadavg()[0])
    if threads is not None:
        environ["OMP_NUM_THREADS"] = str(threads)
    return threads
