"""Assemble the HTML report from evaluation, run and benchmark folders."""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from mist_debias import __version__
from mist_debias.app.report import html
from mist_debias.app.report.grids import LEGEND_BASE, ConceptGrid, is_world_run, run_settings
from mist_debias.app.report.plots import (
    Panel,
    Series,
    deviation_chart,
    distribution_chart,
    heatmap_chart,
    trajectory_chart,
)
from mist_debias.app.report.sources import BenchSource, EvaluationSource, RunSource, number, read_source
from mist_debias.core.atomic import atomic_file


def build_report(sources: Sequence[Path], out: Path, grid_images: int = 8, force: bool = False) -> Path:
    """Read every source folder (see :func:`~mist_debias.app.report.sources.read_source`) and write one
    self-contained HTML file (figures and images embedded as base64 PNG) to ``out`` atomically.

    ``grid_images`` images per concept go into the image grids: an evaluation's own images, or for a debias run
    images generated anew with its model without and with its final edit (see
    :func:`~mist_debias.app.report.grids.run_grids`); 0 leaves the grids out and loads no model."""
    read = [read_source(Path(folder)) for folder in sources]
    sections = []
    for index, source in enumerate(read):
        anchor = f"s{index}"
        if isinstance(source, EvaluationSource):
            sections.extend(evaluation_sections(source, anchor, grid_images))
        elif isinstance(source, BenchSource):
            sections.extend(bench_sections(source, anchor))
        else:
            sections.extend(run_sections(source, anchor, grid_images))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = f"{', '.join(str(Path(s)) for s in sources)} · mist-debias {__version__} · {stamp}"
    document = html.page("mist-debias report", subtitle, sections)
    with atomic_file(Path(out), force=force) as temp:
        temp.write_text(document, encoding="utf-8")
    return Path(out)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _ratios_cell(distribution: dict | None, cells: list[str] | None = None) -> str:
    """One line per cell: ``ratio [lower, upper]``, after the cell's name when ``cells`` is given."""
    if not distribution:
        return "–"
    ratios, lower, upper = (distribution.get(key) or [] for key in ("ratios", "lower", "upper"))
    names = cells if cells and len(cells) == len(ratios) else [""] * len(ratios)
    parts = [
        (f"<span class='muted'>{html.escape(name)}</span> " if name else "") + html.ratio_with_interval(r, lo, hi)
        for name, r, lo, hi in zip(names, ratios, lower, upper, strict=False)
    ]
    return "<br>".join(parts) or "–"


def _series(label: str, distribution: dict) -> Series:
    k = len(distribution.get("ratios") or [])
    return Series(
        label,
        [number(x) for x in distribution.get("ratios") or []],
        [number(x) for x in distribution.get("lower") or [math.nan] * k],
        [number(x) for x in distribution.get("upper") or [math.nan] * k],
    )


# ---------------------------------------------------------------------------------------------- evaluation


def evaluation_sections(source: EvaluationSource, anchor: str, grid_images: int) -> list[tuple[str, str, str]]:
    """Overview, summary, preservation, and one section per concept (charts, heatmaps, image grids)."""
    plan, metrics = source.plan, source.metrics
    cells = list(metrics["cells"])
    target = [number(t) for t in metrics.get("target") or [1.0 / len(cells)] * len(cells)]
    axes = [(a["name"], list(a["values"])) for a in metrics.get("axes") or [] if "name" in a]
    models = list(metrics.get("models") or dict.fromkeys(e["model"] for e in metrics["distributions"]))
    concepts = list(metrics.get("concepts") or dict.fromkeys(e["concept"] for e in metrics["distributions"]))
    entries = {(e["concept"], e["model"]): e for e in metrics["distributions"]}
    variants = {v.get("name"): v for v in plan.get("variants") or []}
    generation = plan.get("generation") or {}
    run = metrics.get("run") or {}

    overview = html.meta_table(
        [
            ("folder", html.escape(source.folder)),
            ("model", html.escape(plan.get("model", "–"))),
            ("models compared", "<br>".join(_variant_line(name, variants.get(name, {})) for name in models)),
            ("classifier", html.escape(plan.get("classifier", "–"))),
            ("cells", html.escape(", ".join(cells))),
            ("target", html.escape(", ".join(f"{t:.3g}" for t in target))),
            (
                "images",
                html.escape(
                    f"{len(plan.get('prompts') or [])} prompts × {plan.get('n', '?')} seeds × {len(models)} models"
                    f" = {len(source.rows)} images; {len(concepts)} concepts"
                ),
            ),
            (
                "sampler",
                html.escape(", ".join(f"{key} {value}" for key, value in generation.items() if value is not None)),
            ),
            (
                "intervals",
                html.escape(
                    f"{100 * (1 - number(metrics.get('alpha', 0.05))):.0f}% simultaneous over cells "
                    f"({(metrics['distributions'][0]['joint'].get('method') if metrics['distributions'] else '–')})"
                ),
            ),
            (
                "processes / wall time",
                html.escape(f"{run.get('processes', '–')} / {html.fmt(run.get('wall_time_s'), 1)} s"),
            ),
        ]
    )
    summary_rows = []
    for concept in concepts:
        for model in models:
            entry = entries.get((concept, model))
            if not entry:
                continue
            joint = entry["joint"]
            cleam = entry.get("cleam") or {}
            summary_rows.append(
                [
                    html.escape(concept),
                    html.escape(model) + (" <b>(edited)</b>" if entry.get("edited") else ""),
                    html.fmt(joint.get("n")),
                    html.fmt(joint.get("n_invalid")),
                    _ratios_cell(joint, cells),
                    html.fmt(joint.get("deviation")),
                    html.fmt(joint.get("kl")),
                    html.fmt(cleam.get("deviation")) if cleam else "–",
                    html.fmt(entry.get("clip_score_mean"), 2),
                ]
            )
    summary = html.table(
        [
            "concept",
            "model",
            "n valid",
            "invalid",
            "ratios [95% interval] per cell",
            "Δ",
            "KL",
            "CLEAM Δ",
            "CLIP score",
        ],
        summary_rows,
        numeric=(2, 3, 5, 6, 7, 8),
    )
    deltas = [
        Series(model, [number((entries.get((c, model)) or {}).get("joint", {}).get("deviation")) for c in concepts])
        for model in models
    ]
    summary += html.figure(deviation_chart(concepts, deltas, "Δ per concept and model", None), "deviation ratios")
    summary += (
        f"<p class='note'>Cells: {html.escape(', '.join(cells))}. Intervals hold jointly over the cells. "
        "Δ = max_j |r_j − t_j| / max_j max(t_j, 1 − t_j); KL(r‖t) in nats.</p>"
    )

    sections = [(f"{anchor}-overview", "Evaluation", overview), (f"{anchor}-summary", "Summary", summary)]
    preservation = metrics.get("preservation") or []
    if preservation:
        sections.append((f"{anchor}-preservation", "Preservation", _preservation_table(preservation)))
    for concept in concepts:
        body = []
        series = [_series(model, entries[(concept, model)]["joint"]) for model in models if (concept, model) in entries]
        body.append(html.figure(distribution_chart([Panel(f"{concept}: joint", cells, series, target)]), concept))
        if len(axes) >= 2:
            body.append(html.figure(heatmap_chart(axes, series, target, f"{concept}: intersectional ratios"), concept))
            panels = [_marginal_panel(concept, name, values, models, entries) for name, values in axes]
            body.append(html.figure(distribution_chart([p for p in panels if p.series]), f"{concept} marginals"))
        if grid_images > 0 and source.rows:
            body.append(_image_grid(source, concept, models, grid_images))
        sections.append((f"{anchor}-{_slug(concept)}", f"Concept: {concept}", "".join(body)))
    return sections


def _marginal_panel(concept: str, axis: str, values: list[str], models: list[str], entries: dict) -> Panel:
    found = [
        (model, entries[(concept, model)]["marginals"][axis])
        for model in models
        if axis in entries.get((concept, model), {}).get("marginals", {})
    ]
    target = [number(t) for t in found[0][1].get("target") or []] if found else []
    return Panel(f"marginal: {axis}", values, [_series(m, d) for m, d in found], target)


def _variant_line(name: str, variant: dict) -> str:
    line = html.escape(f"{name}: {variant.get('edit') or 'no edit'}")
    edited = variant.get("edited_prompts")
    return line + (f" <span class='muted'>(edits {html.escape('; '.join(edited))})</span>" if edited else "")


def _preservation_table(entries: list[dict]) -> str:
    rows = []
    for entry in entries:
        threshold = entry.get("change_threshold")
        moved = entry.get("moved")
        rows.append(
            [
                html.escape(entry.get("model", "–")),
                html.escape(entry.get("concept", "–")) + (" <b>(edited)</b>" if entry.get("edited") else ""),
                html.fmt(entry.get("n_pairs")),
                html.fmt(entry.get("pixel_change_mean"), 4),
                html.fmt(entry.get("fraction_changed"), 2),
                html.fmt(entry.get("label_flips")),
                html.fmt(entry.get("clip_score_change_mean"), 2),
                html.fmt(entry.get("max_ratio_change"), 3),
                html.verdict(
                    None if entry.get("outside_interval") is None else not entry["outside_interval"],
                    "inside",
                    "outside",
                ),
                html.fmt(entry.get("mcnemar_p_adjusted"), 3),
                "<span class='muted'>edited</span>"
                if entry.get("edited")
                else html.verdict(None if moved is None else not moved, "kept", "moved"),
            ]
        )
    note = (
        "<p class='note'>Same prompt and seed, original vs edited model. Pixel change: mean |Δ| / 255 per image; "
        f"changed: fraction of images above {html.fmt(entries[0].get('change_threshold'), 3)}. "
        "Interval: the edited ratios against the original's 95% simultaneous intervals. Paired p: exact McNemar "
        "test per cell on the same-seed label pairs, Bonferroni-adjusted over cells; “moved” when below α. "
        "Preservation concerns the concepts an edit did not target.</p>"
        if entries and threshold is not None
        else ""
    )
    header = [
        "model",
        "concept",
        "pairs",
        "pixel change",
        "changed",
        "label flips",
        "Δ CLIP score",
        "max |Δratio|",
        "interval",
        "paired p",
        "verdict",
    ]
    return html.table(header, rows, numeric=(2, 3, 4, 5, 6, 7, 9)) + note


def _image_grid(source: EvaluationSource, concept: str, models: list[str], count: int) -> str:
    """Rows: models; columns: the first ``count`` (prompt, seed) pairs of the concept — the same seeds."""
    by_key = {(r["model"], r["prompt_index"], r["seed"]): r for r in source.rows if r.get("concept") == concept}
    keys = sorted({(p, s) for (_, p, s) in by_key})[:count]
    if not keys:
        return ""
    header = "".join(
        f"<th>{html.escape(_prompt_of(by_key, p, s))}<br><span class='muted'>seed {s}</span></th>" for p, s in keys
    )
    rows = []
    for model in models:
        cells = []
        for p, s in keys:
            row = by_key.get((model, p, s))
            path = source.folder / row["image"] if row else None
            if not row or not path.is_file():
                cells.append("<td class='muted'>missing</td>")
                continue
            with Image.open(path) as image:
                thumb = html.thumbnail(image)
            label = row.get("predicted_cell") if row.get("valid") else "invalid"
            cells.append(f"<td>{thumb}{html.escape(label)}</td>")
        rows.append(f"<tr><th>{html.escape(model)}</th>{''.join(cells)}</tr>")
    return (
        f"<h3>Images on the same seeds</h3><table class='grid'><thead><tr><th></th>{header}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _prompt_of(by_key: dict, prompt_index: int, seed: int) -> str:
    for (_, p, s), row in by_key.items():
        if (p, s) == (prompt_index, seed):
            text = row.get("prompt", "")
            return text if len(text) <= 28 else text[:27] + "…"
    return ""


# ---------------------------------------------------------------------------------------------- run


def run_sections(source: RunSource, anchor: str, grid_images: int = 0) -> list[tuple[str, str, str]]:
    """Overview with every setting, before/after summary, Δ chart, the world's glyph legend (world runs only),
    and per concept: charts, heatmaps, the loop trajectory and the before/after image grid."""
    summary, config = source.summary, source.config
    settings = run_settings(config)
    concepts = summary["concepts"]
    tolerance = settings.get("tolerance")
    world = bool(config) and is_world_run(config)
    overview = html.meta_table(_run_overview(source, settings, world))
    rows = []
    for concept in concepts:
        before, after = concept.get("before") or {}, concept.get("after") or {}
        fresh = concept.get("after_fresh_seeds") or {}
        rows.append(
            [
                html.escape(concept["name"]),
                "<br>".join(html.escape(c) for c in concept["cells"]),
                "<br>".join(html.fmt(t, 3) for t in concept.get("target") or before.get("target") or []),
                _ratios_cell(before),
                _ratios_cell(after),
                _ratios_cell(concept.get("after_fresh_seeds")),
                f"{html.fmt(before.get('deviation'))} → {html.fmt(after.get('deviation'))}"
                + (f" ({html.fmt(fresh.get('deviation'))} fresh)" if fresh else ""),
                _run_status_cell(concept.get("converged"), concept.get("reason")),
                html.fmt(concept.get("images_used")),
                _weights_cell(concept.get("weights"), concept["cells"]),
            ]
        )
    table = html.table(
        [
            "concept",
            "cells",
            "target",
            "before [95%]",
            "after [95%]",
            "after, fresh seeds",
            "Δ before → after",
            "status",
            "images",
            "weight per cell",
        ],
        rows,
        numeric=(8,),
    )
    names = [c["name"] for c in concepts]
    deltas = [
        Series(label, [number((c.get(key) or {}).get("deviation")) for c in concepts])
        for label, key in (("before", "before"), ("after", "after"))
    ]
    tol = number(tolerance)
    table += html.figure(
        deviation_chart(
            names,
            deltas,
            "Δ before and after debiasing",
            None if math.isnan(tol) else _tolerance_as_delta(tol, concepts),
        ),
        "deviation before and after",
    )
    sections = [(f"{anchor}-run", "Debias run", overview), (f"{anchor}-run-summary", "Before and after", table)]
    if world:
        sections.append((f"{anchor}-legend", "World glyphs", _legend_html()))
    grids, grid_note = _run_grids(source, grid_images)
    for concept in concepts:
        body = _run_concept(source, concept)
        if grid_images > 0:
            grid = grids.get(concept["name"])
            body += _grid_html(grid) if grid else f"<p class='muted'>no image grid: {html.escape(grid_note)}</p>"
        sections.append((f"{anchor}-run-{_slug(concept['name'])}", f"Run: {concept['name']}", body))
    return sections


def _quoted(prompt) -> str:
    """A prompt as a JSON string literal, so the empty prompt shows as ``""``."""
    return html.escape(json.dumps(str(prompt), ensure_ascii=False))


def _setting_value(value) -> str:
    """A setting for the overview: ``–`` for unset, lists joined, nested mappings as ``key value`` pairs."""
    if value is None:
        return "–"
    if isinstance(value, dict):
        return ", ".join(f"{html.escape(key)} {_setting_value(item)}" for key, item in value.items()) or "–"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_setting_value(item) for item in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and value == "":
        return '""'
    return html.escape(value)


def _controller_value(controller) -> str:
    """``adaptive`` or ``adaptive (option value, …)``."""
    if not isinstance(controller, dict):
        return _setting_value(controller)
    options = {key: value for key, value in controller.items() if key != "name"}
    name = html.escape(controller.get("name") or "–")
    return name + (f" <span class='muted'>({_setting_value(options)})</span>" if options else "")


def _run_overview(source: RunSource, settings: dict, world: bool) -> list[tuple[str, str]]:
    """Every setting of the run (``config.json``) and its totals (``summary.json``)."""
    summary, config = source.summary, source.config
    model = config.get("model") or settings.get("model")
    shown = {"model", "concepts", "controller", "tolerance", "budget", "seed"}
    items = [
        ("folder", html.escape(source.folder)),
        (
            "model",
            html.escape(model or ("bundled world" if world else "–")) + (" (the synthetic world)" if world else ""),
        ),
        ("concepts", html.escape(", ".join(c["name"] for c in summary["concepts"]))),
        ("controller", _controller_value(settings.get("controller"))),
        (
            "tolerance",
            html.fmt(settings.get("tolerance"), 3) + " <span class='muted'>(largest |r − t| per cell)</span>",
        ),
        ("budget", html.fmt(settings.get("budget")) + " <span class='muted'>images</span>"),
        ("seed", html.fmt(settings.get("seed"))),
    ]
    items += [(key, _setting_value(value)) for key, value in settings.items() if key not in shown]
    if config.get("classifier"):
        items.append(("classifier used", html.escape(config["classifier"])))
    if config.get("model_fingerprint"):
        items.append(("model fingerprint", html.escape(str(config["model_fingerprint"])[:16]) + "…"))
    preserved = summary.get("preserved_concepts") or config.get("preserve_prompts") or []
    items += [
        ("preserved prompts", ", ".join(_quoted(p) for p in preserved) or "–"),
        ("images generated", html.fmt(summary.get("images_total"))),
        ("UNet evaluations", html.fmt(summary.get("unet_evaluations"))),
        ("wall time", f"{html.fmt(summary.get('wall_time_s'), 1)} s"),
        ("iterations logged", html.fmt(len(source.log))),
        ("library version", html.escape(summary.get("library_version") or config.get("library_version") or "–")),
    ]
    return items


def _run_status_cell(converged: bool | None, reason: str | None) -> str:
    """The verdict word, and the controller's reason below it unless it only repeats the verdict."""
    word = html.verdict(converged, "converged", "not converged")
    repeats = (reason or "").strip().lower() in {"", "converged", "not converged"}
    return word + ("" if repeats else f"<br><span class='muted'>{html.escape(reason)}</span>")


def _weights_cell(weights, cells: list[str]) -> str:
    """One line per cell: ``cell  weight``."""
    if not weights:
        return "–"
    names = cells if len(cells) == len(weights) else [f"cell {j}" for j in range(len(weights))]
    return "<br>".join(
        f"<span class='muted'>{html.escape(name)}</span> {html.fmt(w, 3)}"
        for name, w in zip(names, weights, strict=True)
    )


def _run_grids(source: RunSource, count: int) -> tuple[dict[str, ConceptGrid], str]:
    """The run's before/after grids by concept, or none and why."""
    if count <= 0:
        return {}, "grids were not asked for (--grid-images 0)"
    if not source.config:
        return {}, "the run folder has no config.json"
    from mist_debias.app.report.grids import run_grids
    from mist_debias.core.errors import MistError

    try:
        return {grid.concept: grid for grid in run_grids(source.folder, source.config, count)}, ""
    except MistError as error:
        return {}, str(error)


def _grid_html(grid: ConceptGrid) -> str:
    """Two rows (original, final edit) of the same seeds, each image captioned with its classifier cell."""
    header = "".join(f"<th>seed {seed}</th>" for seed in grid.seeds)
    rows = []
    for name, images in (("original", grid.original), ("final edit", grid.edited)):
        cells = "".join(
            f"<td>{html.thumbnail(item.image)}{html.escape(item.label) if item.label else ''}</td>" for item in images
        )
        rows.append(f"<tr><th>{name}</th>{cells}</tr>")
    return (
        f"<h3>Images on the same seeds: {_quoted(grid.prompt)}</h3><table class='grid'><thead><tr><th></th>"
        f"{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        "<p class='note'>Generated for this report with the run's model and sampler settings, without and with "
        "the run's final edit; captions are the cells the run's classifier assigns.</p>"
    )


def _legend_html() -> str:
    """Each attribute value of the synthetic world drawn once (one row per attribute), with the colour that
    marks it where the cue is a colour."""
    from mist_debias.app.report.grids import world_legend

    rows: dict[tuple[str, str], list[str]] = {}
    for entry in world_legend():
        swatch = "" if entry.colour is None else f"<span class='swatch' style='background: rgb{entry.colour}'></span>"
        rows.setdefault((entry.axis, entry.cue), []).append(
            f"<td>{html.thumbnail(entry.image, 72)}{swatch}{html.escape(entry.value)}</td>"
        )
    body = "".join(
        f"<tr><th>{html.escape(axis)}<br><span class='muted'>{html.escape(cue)}</span></th>{''.join(cells)}</tr>"
        for (axis, cue), cells in rows.items()
    )
    base = ", ".join(f"{key} {value}" for key, value in LEGEND_BASE.items())
    return (
        f"<table class='grid legend'><tbody>{body}</tbody></table><p class='note'>How the synthetic world draws each "
        f"attribute value: every glyph is the same person ({html.escape(base)}) with one attribute changed.</p>"
    )


def _tolerance_as_delta(tolerance: float, concepts: list[dict]) -> float | None:
    """The Δ that a ratio error of ``tolerance`` gives when every concept has the same target (else ``None``)."""
    targets = {tuple(c.get("target") or (c.get("before") or {}).get("target") or []) for c in concepts}
    if len(targets) != 1 or not next(iter(targets)):
        return None
    target = next(iter(targets))
    return tolerance / max(max(t, 1 - t) for t in target)


def _run_concept(source: RunSource, concept: dict) -> str:
    cells = list(concept["cells"])
    before, after = concept.get("before") or {}, concept.get("after") or {}
    target = [number(t) for t in concept.get("target") or before.get("target") or after.get("target") or []]
    fresh = concept.get("after_fresh_seeds") or {}
    measured = (("before", before), ("after", after), ("after, fresh seeds", fresh))
    series = [_series(label, d) for label, d in measured if d.get("ratios")]
    body = []
    if series and len(target) == len(cells):
        body.append(
            html.figure(
                distribution_chart([Panel(f"{concept['name']}: before and after", cells, series, target)]), "bars"
            )
        )
        axes = source.axes(concept)
        if len(axes) >= 2 and math.prod(len(v) for _, v in axes) == len(cells):
            body.append(
                html.figure(heatmap_chart(axes, series, target, f"{concept['name']}: intersectional"), "heatmap")
            )
    shifts = concept.get("other_axes") or []
    if shifts:
        body.append(
            "<p>Axes not edited, before → after on the same fresh seeds (shift with its 95% paired interval):</p>"
            + html.table(
                ["axis", "value", "before", "after", "shift [95%]", "moved"],
                [
                    [
                        html.escape(shift["axis"]),
                        html.escape(shift["value"]),
                        html.fmt(shift["before"]),
                        html.fmt(shift["after"]),
                        f"{shift['shift']:+.3f} [{shift['lower']:+.3f}, {shift['upper']:+.3f}]",
                        html.verdict(not shift["shifted"], "kept", "moved"),
                    ]
                    for shift in shifts
                ],
                numeric=(2, 3),
            )
        )
    entries = [e for e in source.log if e.get("concept") == concept["name"]]
    if entries:
        body.append(
            html.figure(
                trajectory_chart(entries, cells, target or None, f"{concept['name']}: debias loop"), "trajectory"
            )
        )
        rows = [
            [
                html.fmt(e.get("iteration")),
                html.escape(e.get("mode", "–")),
                html.fmt(e.get("n_images")),
                html.fmt(e.get("n_invalid")),
                ", ".join(html.fmt(r, 2) for r in e.get("ratios") or []) or "–",
                ", ".join(html.fmt(w, 3) for w in e.get("weights") or []) or "–",
                html.fmt(e.get("images_total")),
                html.fmt(e.get("unet_evaluations")),
                html.fmt(e.get("wall_time_s"), 1),
            ]
            for e in entries
        ]
        body.append(
            html.table(
                [
                    "iteration",
                    "mode",
                    "images",
                    "invalid",
                    "ratios",
                    "weights",
                    "images total",
                    "UNet evals",
                    "time (s)",
                ],
                rows,
                numeric=(0, 2, 3, 6, 7, 8),
            )
        )
    return "".join(body) or "<p class='muted'>no measurements</p>"


# ---------------------------------------------------------------------------------------------- benchmark


def _shifts_cell(row: dict) -> str:
    """Largest shift of each axis over the unedited professions, in points (``gender 1.2 / race 0.4 …``)."""
    parts = []
    for key, value in row.items():
        if key.startswith("preserve_max_") and key.endswith("_shift"):
            axis = key.removeprefix("preserve_max_").removesuffix("_shift")
            parts.append(f"{html.escape(axis)} {html.fmt(None if value is None else 100 * number(value), 1)}")
    return "<br>".join(parts) or "–"


def _status_cell(row: dict) -> str:
    converged, reason = row.get("converged"), row.get("reason") or ""
    if converged is None:
        return f"<span class='muted'>{html.escape(reason or '–')}</span>"
    word = html.verdict(bool(converged), "converged", "not converged")
    return word + (f"<br><span class='muted'>{html.escape(reason)}</span>" if reason and not converged else "")


def bench_sections(source: BenchSource, anchor: str) -> list[tuple[str, str, str]]:
    """Overview of the settings, Δ per concept and method, and per concept: the table and the cell bars."""
    settings = source.settings
    overview = html.meta_table(
        [
            ("folder", html.escape(source.folder)),
            ("model", html.escape(settings.get("model") or "bundled world")),
            ("image budget per run", html.fmt(settings.get("budget"))),
            ("tolerance", html.fmt(settings.get("tolerance"), 3)),
            ("measured images per concept", html.fmt(settings.get("validate"))),
            ("images per unedited profession", html.fmt(settings.get("preserve_images") or settings.get("validate"))),
            (
                "sampler",
                f"{html.escape(str(settings.get('sampler', 'DDIMScheduler')))}, "
                f"{html.fmt(settings.get('steps'))} steps, guidance {settings.get('guidance', 0.0):g}, "
                f"η {settings.get('eta', 0.0):g}",
            ),
            ("seed", html.fmt(settings.get("seed"))),
        ]
    )
    concepts = source.concepts()
    methods = list(dict.fromkeys(row["method"] for row in source.rows))
    by_key = {(row["concept"], row["method"]): row for row in source.rows}
    deltas = [
        Series(method, [number((by_key.get((concept, method)) or {}).get("deviation")) for concept in concepts])
        for method in methods
    ]
    overview += html.figure(deviation_chart(concepts, deltas, "Δ after each method (oracle)", None), "deviation")
    sections = [(f"{anchor}-bench", "World benchmark", overview)]
    for concept in concepts:
        rows = [row for row in source.rows if row["concept"] == concept]
        cells = list(rows[0]["cells"])
        table = html.table(
            [
                "method",
                "oracle distribution [95%]",
                "Δ",
                "status",
                "images",
                "UNet evals",
                "wall s",
                "profession kept",
                "unedited: max shift (pts)",
                "unedited: moved",
                "unedited: pixel Δ",
            ],
            [
                [
                    html.escape(row["method"]),
                    _ratios_cell(row, cells),
                    html.fmt(row.get("deviation")),
                    _status_cell(row),
                    html.fmt(row.get("images")),
                    html.fmt(row.get("unet_evaluations")),
                    html.fmt(row.get("wall_time_s"), 1),
                    html.fmt(row.get("profession_kept")),
                    _shifts_cell(row),
                    html.escape(", ".join(row.get("preserve_moved") or []) or "none"),
                    html.fmt(row.get("preserve_pixel_change"), 4),
                ]
                for row in rows
            ],
            numeric=(2, 4, 5, 6, 7, 10),
        )
        panel = Panel(
            f"{concept}: oracle distribution per method",
            cells,
            [_series(r["method"], r) for r in rows],
            source.target(concept),
        )
        table += html.figure(distribution_chart([panel]), f"{concept} distributions")
        sections.append((f"{anchor}-bench-{_slug(concept)}", f"Benchmark: {concept}", table))
    return sections
