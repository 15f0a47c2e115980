"""``mist world …``: train the synthetic world and measure its quality."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from mist_debias.world.bundled import WORLD_ETA, WORLD_GUIDANCE

world_app = typer.Typer(help="The synthetic world: a tiny text-to-image model with planted bias.")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@world_app.command()
def train(
    out: Path = typer.Option(..., "--out", help="Output folder (pipeline/, clip/, stages/, training.json)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same model."),
    force: bool = typer.Option(False, "--force", help="Erase OUT first if it exists."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in OUT."),
    device: str = typer.Option("cpu", "--device", help="torch device to train on (cpu, cuda, mps)."),
) -> None:
    """Train the world from scratch on the CPU (autoencoder, tiny CLIP, UNet) into OUT."""
    from mist_debias.world.train import TrainingError, train_world

    if seed < 0:
        _fail("--seed must be ≥ 0")
    try:
        pipeline = train_world(out, seed=seed, force=force, resume=resume, log=Console().print, device=device)
    except TrainingError as error:
        _fail(str(error))
    Console().print(f"pipeline written to {pipeline}")


@world_app.command()
def quality(
    model: Path = typer.Option(None, "--model", help="Pipeline folder (default: the bundled world)."),
    out: Path = typer.Option(..., "--out", help="JSON file to write."),
    num_images: int = typer.Option(200, "--num-images", help="Images per prompt."),
    steps: int = typer.Option(20, "--steps", help="Sampling steps."),
    guidance: float = typer.Option(WORLD_GUIDANCE, "--guidance", help="Classifier-free guidance scale."),
    eta: float = typer.Option(WORLD_ETA, "--eta", help="DDIM η (0: deterministic DDIM)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first image."),
    device: str = typer.Option("cpu", "--device", help="torch device to generate on."),
    clip: Path = typer.Option(None, "--clip", help="Also grade the world's CLIP zero-shot gender (folder)."),
) -> None:
    """Measure the world's quality bar with the exact oracle and write it as JSON."""
    from mist_debias.world.bundled import bundled_world_path
    from mist_debias.world.quality import measure_quality, write_quality

    if num_images < 1 or steps < 1 or not (guidance >= 0 and eta >= 0):
        _fail("--num-images and --steps must be ≥ 1, --guidance and --eta ≥ 0")
    model = model or bundled_world_path()
    if not (model / "model_index.json").is_file():
        _fail(f"{model} is not a diffusers pipeline folder")
    report = measure_quality(
        model, num_images=num_images, steps=steps, guidance=guidance, eta=eta, seed=seed, device=device
    )
    write_quality(out, report)
    Console().print_json(json.dumps(report["summary"]))


@world_app.command()
def bench(
    model: Path = typer.Option(None, "--model", help="World pipeline folder (default: the bundled world)."),
    out: Path = typer.Option(Path("runs/world-bench"), "--out", help="Benchmark folder (one run folder per row)."),
    concepts: str = typer.Option("doctor,CEO", "--concepts", help="Comma-separated: doctor, nurse, CEO, CEO-race."),
    methods: str = typer.Option(
        None, "--methods", help="Comma-separated (default: every method: original, mist, mist-official-paper, …)."
    ),
    budget: int = typer.Option(2048, "--budget", help="Image budget of each debias run."),
    seed: int = typer.Option(0, "--seed", help="Seed of the loops and of the measurement images."),
    validate: int = typer.Option(200, "--validate", help="Images of each concept measured after the loop."),
    preserve_images: int = typer.Option(None, "--preserve-images", help="Images per unedited profession."),
    steps: int = typer.Option(20, "--steps", help="Sampling steps."),
    guidance: float = typer.Option(WORLD_GUIDANCE, "--guidance", help="Classifier-free guidance scale."),
    eta: float = typer.Option(WORLD_ETA, "--eta", help="DDIM η (0: deterministic DDIM)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per generation batch."),
    official_images: int = typer.Option(128, "--official-images", help="Images per official-loop iteration."),
    force: bool = typer.Option(
        False, "--force", help="Replace OUT, a benchmark folder (default: reuse its finished runs)."
    ),
    device: str = typer.Option(None, "--device", help="torch device (default: CUDA, MPS or CPU)."),
) -> None:
    """Benchmark MIST (panel, official), UCE and TIME against the exact oracle; write bench.json/csv/md."""
    from mist_debias.core.errors import MistError
    from mist_debias.world.bench import BenchSettings, markdown_table, run_bench

    console = Console(stderr=True)
    try:
        chosen = {} if methods is None else {"methods": tuple(n.strip() for n in methods.split(",") if n.strip())}
        settings = BenchSettings(
            model=None if model is None else str(model),
            concepts=tuple(name.strip() for name in concepts.split(",") if name.strip()),
            **chosen,
            budget=budget,
            seed=seed,
            validate=validate,
            preserve_images=preserve_images,
            steps=steps,
            guidance=guidance,
            eta=eta,
            batch_size=batch_size,
            official_images=official_images,
        )
        rows = run_bench(settings, out, force=force, device=device, log=console.print)
    except MistError as error:
        _fail(str(error).strip().splitlines()[0])
    typer.echo(markdown_table(rows))
    console.print(f"table written to {out / 'bench.md'} (also bench.json, bench.csv)")
