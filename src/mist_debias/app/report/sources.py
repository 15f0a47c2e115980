"""Read what a report shows: an evaluation folder (``mist evaluate``), a debias run folder (``mist debias``) or a
world benchmark folder (``mist world bench``).

An evaluation folder has ``evaluation.json`` (the plan), ``metrics.json`` and ``results.json``. A run folder
has ``summary.json`` and usually ``config.json`` (the resolved run config) and ``log.jsonl`` (one JSON object
per iteration: iteration, concept, mode, weights, counts, n_invalid, n_images, ratios, lower, upper,
images_total, unet_evaluations, wall_time_s). A benchmark folder has ``bench.json`` (settings, one flat row
per concept × method, and the full measurements). Optional keys may be missing; required ones are checked with
one-line errors.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mist_debias.core.errors import MistError
from mist_debias.core.run_folder import RunFolderError, read_jsonl
from mist_debias.measure.evaluation_files import FORMAT, MANIFEST_FILE, METRICS_FILE, RESULTS_JSON

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
BENCH_FILE = "bench.json"
BENCH_ROW_KEYS = ("concept", "method", "cells", "ratios", "lower", "upper")


class ReportSourceError(MistError):
    """A folder that is neither a finished evaluation nor a debias run; one-line message."""


@dataclass
class EvaluationSource:
    """A finished evaluation: its plan, metrics and per-image rows."""

    folder: Path
    plan: dict
    metrics: dict
    rows: list[dict]


@dataclass
class RunSource:
    """A debias run: its summary, and when present its config and per-iteration log."""

    folder: Path
    summary: dict
    config: dict = field(default_factory=dict)
    log: list[dict] = field(default_factory=list)

    def axes(self, concept: dict) -> list[tuple[str, list[str]]]:
        """The attribute axes of a summary concept: its own ``axes`` entry, else from the config (the concept's
        own attributes, else the shared ones); empty for explicit cells or when unknown."""
        axes = concept.get("axes")
        if axes is None:
            attributes = None
            for item in self.config.get("concepts") or []:
                if isinstance(item, dict) and item.get("name") == concept.get("name"):
                    attributes = item.get("attributes")
            attributes = attributes or self.config.get("attributes") or {}
            axes = attributes.get("axes") if isinstance(attributes, dict) else None
        if isinstance(axes, dict):
            return [(str(name), [str(v) for v in values]) for name, values in axes.items()]
        if isinstance(axes, list):
            return [(str(a.get("name")), [str(v) for v in a.get("values", [])]) for a in axes if isinstance(a, dict)]
        return []


@dataclass
class BenchSource:
    """A world benchmark: its settings, one row per concept × method, and the per-row measurements."""

    folder: Path
    settings: dict
    rows: list[dict]
    measurements: list[dict] = field(default_factory=list)

    def concepts(self) -> list[str]:
        """The benchmarked concepts in table order."""
        return list(dict.fromkeys(row["concept"] for row in self.rows))

    def target(self, concept: str) -> list[float]:
        """The concept's target distribution (from its measurements; uniform when none is recorded)."""
        for measurement in self.measurements:
            target = (measurement.get("distribution") or {}).get("target")
            if measurement.get("concept") == concept and target:
                return [number(t) for t in target]
        cells = next(row["cells"] for row in self.rows if row["concept"] == concept)
        return [1.0 / len(cells)] * len(cells)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ReportSourceError(f"cannot read {path}: {error.strerror or error}") from None
    except ValueError:
        raise ReportSourceError(f"{path} is not valid JSON") from None


def read_log(path: Path) -> list[dict]:
    """The run log (:func:`~mist_debias.core.run_folder.read_jsonl`: a torn last line is dropped)."""
    try:
        return read_jsonl(path)
    except RunFolderError as error:
        raise ReportSourceError(str(error)) from None


def read_evaluation(folder: Path) -> EvaluationSource:
    """Read a finished evaluation folder."""
    manifest = _read_json(folder / MANIFEST_FILE)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ReportSourceError(f"{folder / MANIFEST_FILE} is not an evaluation manifest")
    if not (folder / METRICS_FILE).is_file():
        raise ReportSourceError(f"{folder} is an unfinished evaluation (no {METRICS_FILE}); run it with --resume")
    metrics = _read_json(folder / METRICS_FILE)
    rows = _read_json(folder / RESULTS_JSON) if (folder / RESULTS_JSON).is_file() else []
    for key in ("cells", "distributions"):
        if key not in metrics:
            raise ReportSourceError(f"{folder / METRICS_FILE} has no {key!r}")
    return EvaluationSource(folder=folder, plan=manifest.get("plan", {}), metrics=metrics, rows=rows)


def read_run(folder: Path) -> RunSource:
    """Read a debias run folder (``summary.json`` required; config and log optional)."""
    summary = _read_json(folder / SUMMARY_FILE)
    if not isinstance(summary, dict) or not isinstance(summary.get("concepts"), list):
        raise ReportSourceError(f"{folder / SUMMARY_FILE} has no list of concepts")
    for index, concept in enumerate(summary["concepts"]):
        if not isinstance(concept, dict) or "name" not in concept or "cells" not in concept:
            raise ReportSourceError(f"{folder / SUMMARY_FILE}: concept {index} needs 'name' and 'cells'")
    config = _read_json(folder / CONFIG_FILE) if (folder / CONFIG_FILE).is_file() else {}
    log = read_log(folder / LOG_FILE) if (folder / LOG_FILE).is_file() else []
    return RunSource(folder=folder, summary=summary, config=config if isinstance(config, dict) else {}, log=log)


def read_bench(folder: Path) -> BenchSource:
    """Read a finished benchmark folder (``bench.json`` with its rows)."""
    payload = _read_json(folder / BENCH_FILE)
    rows = payload.get("rows") if isinstance(payload, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ReportSourceError(f"{folder / BENCH_FILE} has no rows")
    for index, row in enumerate(rows):
        missing = [key for key in BENCH_ROW_KEYS if not isinstance(row, dict) or key not in row]
        if missing:
            raise ReportSourceError(f"{folder / BENCH_FILE}: row {index} lacks {', '.join(missing)}")
    measurements = payload.get("measurements")
    return BenchSource(
        folder=folder,
        settings=payload.get("settings") if isinstance(payload.get("settings"), dict) else {},
        rows=rows,
        measurements=measurements if isinstance(measurements, list) else [],
    )


def read_source(folder: Path) -> EvaluationSource | RunSource | BenchSource:
    """An evaluation, a run or a benchmark, recognised by its files; anything else is a
    :class:`ReportSourceError`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReportSourceError(f"{folder} is not a folder")
    if (folder / MANIFEST_FILE).is_file():
        return read_evaluation(folder)
    if (folder / SUMMARY_FILE).is_file():
        return read_run(folder)
    if (folder / BENCH_FILE).is_file():
        return read_bench(folder)
    raise ReportSourceError(
        f"{folder} is not an evaluation folder ({MANIFEST_FILE}), a debias run folder ({SUMMARY_FILE}) "
        f"nor a benchmark folder ({BENCH_FILE})"
    )


def number(value: Any) -> float:
    """A JSON number as float; ``None`` and non-numbers become NaN."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        return math.nan
    return result
