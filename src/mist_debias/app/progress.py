"""Output of a debias run: a rich progress bar per concept on a terminal, one plain line per concept and round
elsewhere (a log file, CI, nohup), and the before/after table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from mist_debias.loop.debias import DebiasRun


def _ratios(ratios, lower, upper) -> str:
    return " ".join(f"{r:.2f}[{lo:.2f},{hi:.2f}]" for r, lo, hi in zip(ratios, lower, upper, strict=True))


def _state(run: DebiasRun, name: str) -> str:
    status = run.controller.status(name)
    return "converged" if status.converged else (status.reason if status.finished else "running")


def round_line(run: DebiasRun, name: str) -> str:
    """One concept's progress in plain text: iteration, images so far, the weights of its latest batch, that
    batch's ratios with 95% simultaneous intervals, and its state."""
    entries = [e for e in run.log if e["concept"] == name]
    last = entries[-1]
    weights = " ".join(f"{w:+.4f}" for w in last["weights"])
    return (
        f"{name}: it {len(entries)}, {sum(e['n_images'] for e in entries)} images, weights {weights}, "
        f"ratios {_ratios(last['ratios'], last['lower'], last['upper'])}, {_state(run, name)}"
    )


class DebiasProgress:
    """One progress row per concept (iteration, latest ratios with intervals, images used, state) on a terminal;
    elsewhere :func:`round_line` once per concept and round, with no carriage returns."""

    def __init__(self, run: DebiasRun, console: Console) -> None:
        self.run = run
        self.console = console
        self.plain = not console.is_terminal
        self.logged = len(run.log)
        budget = run.controller.budget
        self.progress = Progress(
            TextColumn("{task.fields[name]:>12}"),
            BarColumn(),
            TextColumn("{task.completed:>6.0f} img"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
            disable=self.plain,
        )
        self.tasks = {name: self.progress.add_task(name, total=budget, name=name, info="waiting") for name in run.order}

    def __enter__(self) -> DebiasProgress:
        self.progress.__enter__()
        self.update(self.run)
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def update(self, run: DebiasRun) -> None:
        if self.plain:
            fresh = dict.fromkeys(entry["concept"] for entry in run.log[self.logged :])
            self.logged = len(run.log)
            for name in fresh:
                self.console.print(round_line(run, name), highlight=False, markup=False)
            return
        for name, task in self.tasks.items():
            entries = [e for e in run.log if e["concept"] == name]
            if not entries:
                continue
            last = entries[-1]
            info = f"it {len(entries)}  {_ratios(last['ratios'], last['lower'], last['upper'])}  {_state(run, name)}"
            self.progress.update(task, completed=sum(e["n_images"] for e in entries), info=info)


def summary_table(summary: dict[str, Any]) -> Table:
    """Before/after per concept and cell: ratios with 95% simultaneous intervals, and Δ."""
    graded_by = {c.get("graded_by") for c in summary["concepts"]} - {None}
    fresh_title = "after (fresh seeds)" + (" graded by the grade classifier" if graded_by == {"grader"} else "")
    title = "mist debias: before → after (95% intervals; 'after' shows the one that decided, named in its Δ row)"
    table = Table(title=title)
    for column in ("concept", "cell", "target", "before", "after", fresh_title):
        table.add_column(column)

    def cell_text(distribution, index: int) -> str:
        if distribution is None:
            return "–"
        return (
            f"{distribution['ratios'][index]:.3f} "
            f"[{distribution['lower'][index]:.3f}, {distribution['upper'][index]:.3f}]"
        )

    def delta(distribution) -> str:
        if distribution is None:
            return "–"
        return f"Δ {distribution['deviation']:.3f}  n={sum(distribution['counts'])}  {distribution['method']}"

    def kept_text(share) -> str:
        return "–" if share is None else f"{share['share']:.3f} [{share['lower']:.3f}, {share['upper']:.3f}]"

    for concept in summary["concepts"]:
        fresh = concept.get("after_fresh_seeds")
        for index, phrase in enumerate(concept["cells"]):
            table.add_row(
                concept["name"] if index == 0 else "",
                phrase,
                f"{concept['target'][index]:.3f}",
                cell_text(concept["before"], index),
                cell_text(concept["after"], index),
                cell_text(fresh, index),
            )
        kept = concept.get("kept") or {}
        if kept:
            table.add_row(
                "", "concept kept", "", kept_text(kept.get("before")), "", kept_text(kept.get("after_fresh_seeds"))
            )
        state = "converged (certified)" if concept["converged"] else concept["reason"]
        table.add_row(
            "",
            state,
            f"{concept['images_used']} img",
            delta(concept["before"]),
            delta(concept["after"]),
            delta(fresh),
            end_section=True,
        )
    return table


def other_axes_table(summary: dict[str, Any]) -> Table | None:
    """The axes each concept was not balanced over, before → after the edit on the same fresh seeds, with the
    shift's 95% paired interval; ``None`` when no concept has any (see :mod:`mist_debias.loop.other_axes`)."""
    rows = [(concept["name"], shift) for concept in summary["concepts"] for shift in concept.get("other_axes", [])]
    if not rows:
        return None
    table = Table(title="axes not edited: before → after on the same fresh seeds (shift with 95% paired interval)")
    for column in ("concept", "axis", "value", "before", "after", "shift", "moved"):
        table.add_column(column)
    for name, shift in rows:
        table.add_row(
            name,
            shift["axis"],
            shift["value"],
            f"{shift['before']:.3f}",
            f"{shift['after']:.3f}",
            f"{shift['shift']:+.3f} [{shift['lower']:+.3f}, {shift['upper']:+.3f}]",
            "yes" if shift["shifted"] else "no",
        )
    return table
