"""Process splitting without a launcher: one process holds all the work (two-process runs: test_evaluate_cli)."""

from mist_debias.measure.distributed import Processes, current_processes, launched_processes


def test_single_process_without_a_launcher(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launched_processes() == 1
    processes = current_processes("cpu")
    assert (processes.index, processes.count, processes.is_main, str(processes.device)) == (0, 1, True, "cpu")
    items = list(range(7))
    assert processes.share(items) == items and processes.gather(items) == items
    processes.barrier()
    assert current_processes(None).device is None


def test_world_size_is_read_from_the_launcher(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launched_processes() == 4
    monkeypatch.setenv("WORLD_SIZE", "nonsense")
    assert launched_processes() == 1
    assert Processes(index=1, count=2).is_main is False
