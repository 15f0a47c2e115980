"""The command line's process settings: thread count from the load, quiet libraries, the user's variables kept."""

import pytest

from mist_debias.app import environment
from mist_debias.app.environment import choose_threads, quiet_libraries, thread_count


@pytest.mark.parametrize(
    ("cores", "load", "expected"),
    [(2, 0.0, None), (2, 0.4, None), (2, 0.6, 1), (2, 4.4, 1), (2, 12.0, 1), (8, 3.2, 5), (8, 0.2, None)],
)
def test_thread_count_is_the_idle_cores(cores, load, expected):
    assert thread_count(cores, load) == expected


def test_threads_are_set_from_the_load_unless_the_user_chose(monkeypatch):
    monkeypatch.setattr(environment, "usable_cores", lambda: 2)
    monkeypatch.setattr(environment.os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    environ = {}
    assert choose_threads(environ) == 1 and environ == {"OMP_NUM_THREADS": "1"}
    environ = {"OMP_NUM_THREADS": "2"}
    assert choose_threads(environ) is None and environ == {"OMP_NUM_THREADS": "2"}
    monkeypatch.setattr(environment.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    environ = {}
    assert choose_threads(environ) is None and environ == {}


def test_quiet_libraries_keeps_what_the_user_set():
    environ = {"TRANSFORMERS_VERBOSITY": "info"}
    quiet_libraries(environ)
    assert environ["TRANSFORMERS_VERBOSITY"] == "info" and environ["DIFFUSERS_VERBOSITY"] == "error"
