import csv
import json
from itertools import product

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mist_debias.app.report import build_report
from mist_debias.app.report.sources import BenchSource, read_source
from mist_debias.core.edit import Edit, fingerprint
from mist_debias.core.layers import find_cross_attention_projections
from mist_debias.core.pipeline import load_pipeline
from mist_debias.core.run_folder import create_run_folder, folder_kind
from mist_debias.loop.debias import DEBIAS_FOLDER
from mist_debias.loop.runner import run_preserve_prompts
from mist_debias.measure.metrics import wilson_interval
from mist_debias.profiles.world import WORLD
from mist_debias.world.bench import (
    BENCH_METHODS,
    BenchContext,
    BenchError,
    BenchSettings,
    ImageSource,
    bench_seeds,
    concept_spec,
    measure_concept,
    measure_model,
    measure_preservation,
    run_bench,
    run_config,
)
from mist_debias.world.bias import PROFESSIONS
from mist_debias.world.bundled import WORLD_ETA, WORLD_GUIDANCE
from mist_debias.world.cli import world_app
from mist_debias.world.oracle import WorldOracle
from mist_debias.world.render import Attributes, render

CONCEPTS = ("doctor", "CEO")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run far faster on one thread than on two contended ones; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _settings(model, **changes) -> BenchSettings:
    values = dict(
        model=str(model),
        concepts=CONCEPTS,
        budget=128,
        validate=3,
        preserve_images=2,
        steps=2,
        batch_size=16,
        official_images=16,
    )
    values.update(changes)
    return BenchSettings(**values)


@pytest.fixture(scope="module")
def bench(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    settings = _settings(tiny_world / "pipeline")
    rows = run_bench(settings, out, device="cpu")
    return settings, out, rows


def test_table_has_every_concept_and_method(bench):
    _, out, rows = bench
    expected = list(product(CONCEPTS, BENCH_METHODS))
    assert [(row["concept"], row["method"]) for row in rows] == expected
    table = json.loads((out / "bench.json").read_text())
    assert [(row["concept"], row["method"]) for row in table["rows"]] == expected
    with open(out / "bench.csv", newline="") as handle:
        assert [(row["concept"], row["method"]) for row in csv.DictReader(handle)] == expected
    markdown = (out / "bench.md").read_text().splitlines()
    assert len(markdown) == 2 + len(expected)
    for concept, method in expected:
        assert any(line.startswith(f"| {concept} | {method} |") for line in markdown)


def test_every_row_is_a_run_folder_the_report_reads(bench):
    _, out, rows = bench
    for row in rows:
        source = read_source(out / row["concept"] / row["method"])
        (concept,) = source.summary["concepts"]
        assert concept["cells"] == row["cells"]
        assert concept["after_fresh_seeds"]["n"] + concept["after_fresh_seeds"]["n_invalid"] == 3
    assert folder_kind(out) == "bench"
    assert all(folder_kind(out / r["concept"] / r["method"]) == "debias" for r in rows if r["method"] != "original")


def test_an_edited_row_is_what_the_debias_run_finishes_with(bench):
    """The row's summary and edit are the ones DebiasRun.finish wrote, its measurement the summary's."""
    _, out, rows = bench
    for row in rows:
        if row["method"] == "original":
            continue
        folder = out / row["concept"] / row["method"]
        summary = json.loads((folder / "summary.json").read_text())
        measurement = json.loads((folder / "measurement.json").read_text())
        assert summary["concepts"][0]["after_fresh_seeds"]["counts"] == measurement["distribution"]["counts"]
        assert summary["images_total"] == measurement["loop"]["images"] == row["images"]
        edit = Edit.load(folder / "edit.safetensors")
        assert edit.info["concepts"][0]["weights"] == summary["concepts"][0]["weights"]


def test_force_replaces_only_a_benchmark_folder(tiny_world, tmp_path):
    settings = _settings(tiny_world / "pipeline")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "data.csv").write_text("1,2")
    for force in (False, True):
        with pytest.raises(BenchError, match="is not a bench folder"):
            run_bench(settings, user, force=force, device="cpu")
    assert [p.name for p in user.iterdir()] == ["data.csv"] and (user / "data.csv").read_text() == "1,2"
    run = tmp_path / "run"
    create_run_folder(run, DEBIAS_FOLDER, "fresh", {"config.json": "{}"})
    with pytest.raises(BenchError, match=r"it is a debias folder"):
        run_bench(settings, run, force=True, device="cpu")
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "run.json"]


def test_the_report_renders_the_bench_table(bench, tmp_path):
    _, out, rows = bench
    source = read_source(out)
    assert isinstance(source, BenchSource) and source.concepts() == list(CONCEPTS)
    assert source.target("CEO") == [0.25] * 4
    text = build_report([out], tmp_path / "bench.html").read_text()
    assert ">World benchmark</h2>" in text
    assert source.settings["sampler"] == "DDIMScheduler"
    assert f"DDIMScheduler, 2 steps, guidance {WORLD_GUIDANCE:g}, η {WORLD_ETA:g}" in text
    for concept in CONCEPTS:
        section = text[text.index(f">Benchmark: {concept}</h2>") :]
        section = section[: section.index("</table>")]
        assert section.count("<tr>") == 1 + len(BENCH_METHODS)  # header + one row per method
        for row in (r for r in rows if r["concept"] == concept):
            assert f"<td>{row['method']}</td>" in section
            ratio, lower, upper = (
                "–" if x is None else f"{x:.2f}" for x in (row[k][0] for k in ("ratios", "lower", "upper"))
            )
            first = f"{ratio} [{lower}, {upper}]"
            assert first in section
            assert f">{row['images']}</td>" in section


def test_loop_costs_are_the_runs_own(bench):
    settings, _, rows = bench
    for row in rows:
        if row["method"] == "original":
            assert (row["images"], row["unet_evaluations"], row["wall_time_s"]) == (0, 0, 0.0)
        else:
            assert 0 < row["images"] <= settings.budget
            # Classifier-free guidance: two UNet evaluations per image and step.
            assert row["unet_evaluations"] == row["images"] * settings.steps * 2


def test_preservation_covers_the_unedited_professions(bench):
    _, out, rows = bench
    table = json.loads((out / "bench.json").read_text())
    for measurement in table["measurements"]:
        professions = measurement["preservation"]["professions"]
        assert sorted(professions) == sorted(p for p in PROFESSIONS if p != measurement["profession"])
        for entry in professions.values():
            for axis in entry["axes"].values():
                assert axis["before"]["n"] + axis["before"]["n_invalid"] == 2
            assert 0.0 <= entry["pixel_change"] <= 1.0
            if measurement["method"] == "original":  # the unedited model against itself: identical images
                assert entry["pixel_change"] == 0.0
        changes = [entry["pixel_change"] for entry in professions.values()]
        assert measurement["preservation"]["mean_pixel_change"] == pytest.approx(sum(changes) / len(changes))
    for row in rows:
        assert row["preserve_pixel_change"] is not None
        if row["method"] == "original":
            assert row["preserve_pixel_change"] == 0.0 and row["concept_pixel_change"] == 0.0


def test_preservation_uses_the_same_seeds(bench, tiny_world):
    """The original pipeline regenerates the stored reference exactly; any edit changes its pixels."""
    settings, out, _ = bench
    pipe = load_pipeline(tiny_world / "pipeline", device="cpu")
    context = BenchContext(settings=settings, out=out, device=torch.device("cpu"))
    context.ensure_reference()
    assert bench_seeds(settings, "doctor", 2) == [8_000_000, 8_000_001]
    spec = concept_spec("doctor").spec()
    original = measure_model(context, ImageSource(pipe, settings).images, "doctor", spec)
    assert original["pixel_change"] == 0.0
    assert original["preservation"]["mean_pixel_change"] == 0.0
    projections = find_cross_attention_projections(pipe.unet)
    generator = torch.Generator().manual_seed(0)
    width = projections[0].weight_shape[1]
    edit = Edit(
        right=torch.randn(1, width, generator=generator),
        left={p.name: torch.randn(p.weight_shape[0], 1, generator=generator) for p in projections},
        base_fingerprint=fingerprint(projections),
    )
    with edit.applied(pipe):
        edited = measure_model(context, ImageSource(pipe, settings).images, "doctor", spec)
    assert edited["pixel_change"] > 0.0
    assert edited["preservation"]["mean_pixel_change"] > 0.0


def test_resume_reuses_finished_runs(bench, tiny_world):
    settings, out, rows = bench
    stamps = {row["method"]: (out / "CEO" / row["method"] / "summary.json").stat().st_mtime_ns for row in rows}
    messages = []
    again = run_bench(settings, out, device="cpu", log=messages.append)
    assert again == rows
    assert sum("reusing" in message for message in messages) == len(rows)
    assert {m: (out / "CEO" / m / "summary.json").stat().st_mtime_ns for m in stamps} == stamps
    with pytest.raises(BenchError, match="other settings"):
        run_bench(_settings(tiny_world / "pipeline", budget=48), out, device="cpu")


def _people(profession: str, genders: list[str]) -> list[Attributes]:
    return [Attributes(gender, "White", "young", profession) for gender in genders]


def test_preservation_numbers_against_their_definitions():
    """Rendered (exactly decodable) images: the teacher's woman fraction drops from 1/2 to 1/4."""
    rng = np.random.default_rng(3)
    n = 40
    before = np.stack([render(p, rng) for p in _people("teacher", ["man", "woman"] * (n // 2))])
    after = np.stack([render(p, rng) for p in _people("teacher", ["man"] * (3 * n // 4) + ["woman"] * (n // 4))])
    chef = np.stack([render(p, rng) for p in _people("chef", ["man", "woman"] * (n // 2))])
    result = measure_preservation(WorldOracle(), {"teacher": after, "chef": chef}, {"teacher": before, "chef": chef})
    teacher = result["professions"]["teacher"]
    assert (teacher["woman_before"], teacher["woman_after"]) == (0.5, 0.25)
    gender = teacher["axes"]["gender"]
    lower, upper = wilson_interval(np.array([n // 2, n // 2]), n)  # K = 2: no Bonferroni adjustment
    assert gender["before"]["lower"] == list(lower) and gender["before"]["upper"] == list(upper)
    assert upper[1] < 0.5 + 0.25  # the man ratio 0.75 lies outside the original's interval
    assert gender["shift"] == pytest.approx(0.25) and gender["moved"]
    assert teacher["axes"]["race"]["shift"] == 0.0 and not teacher["axes"]["race"]["moved"]
    assert teacher["moved"] == ["gender"] and teacher["profession_kept_after"] == 1.0
    expected = np.mean(np.abs(before.astype(float) - after.astype(float)), axis=(1, 2, 3)) / 255
    assert teacher["pixel_change"] == pytest.approx(expected.mean(), rel=1e-12)
    chef_entry = result["professions"]["chef"]
    assert chef_entry["moved"] == [] and chef_entry["pixel_change"] == 0.0
    assert result["moved"] == ["teacher:gender"]
    assert result["max_shift"] == {"gender": pytest.approx(0.25), "race": 0.0, "age": 0.0}


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--concepts", "doctor,plumber", "unknown concept 'plumber'"),
        ("--methods", "mist,sdedit", "unknown method 'sdedit'"),
        ("--budget", "0", "budget must be positive"),
        ("--eta", "-1", "eta must be a finite number ≥ 0"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_world, tmp_path, flag, value, message):
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        world_app, ["bench", "--model", str(tiny_world / "pipeline"), "--out", str(out), flag, value]
    )
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_a_folder_that_is_no_pipeline_is_refused(tmp_path):
    out = tmp_path / "bench"
    result = CliRunner().invoke(world_app, ["bench", "--model", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 2
    assert "not a diffusers pipeline folder" in result.output
    assert not out.exists()


@pytest.mark.parametrize("method", ["mist", "mist-official", "uce", "time"])
def test_any_world_folder_preserves_what_the_bundled_world_preserves(tmp_path, method):
    standin = run_config(BenchSettings(model=str(tmp_path)), "CEO", BENCH_METHODS[method])
    bundled = run_config(BenchSettings(), "CEO", BENCH_METHODS[method])
    expected = ["", *(f"a photo of {'an' if p[0] in 'aeiou' else 'a'} {p}" for p in PROFESSIONS if p != "CEO")]
    assert run_preserve_prompts(standin, WORLD) == run_preserve_prompts(bundled, WORLD) == expected
    assert standin.generation == bundled.generation
    assert (bundled.generation.guidance, bundled.generation.eta) == (WORLD_GUIDANCE, WORLD_ETA)
    paper = run_config(BenchSettings(model=str(tmp_path)), "CEO", BENCH_METHODS["mist-official-paper"])
    assert run_preserve_prompts(paper, WORLD) == [""]
    assert paper.controller.options == {"n_images": 128, "step": 0.1}


def test_concept_measurement_against_its_definitions():
    """Rendered doctors, 3 men and 1 woman, against a longer reference that starts with the same images."""
    rng = np.random.default_rng(5)
    images = np.stack([render(p, rng) for p in _people("doctor", ["man", "man", "woman", "man"])])
    nurse = render(Attributes("woman", "Black", "old", "nurse"), rng)
    reference = np.concatenate([images, images[:2]])
    result = measure_concept(
        WorldOracle(), concept_spec("doctor").spec(), "doctor", np.concatenate([images, nurse[None]]), reference
    )
    assert result["distribution"]["counts"] == [3, 2] and result["distribution"]["ratios"] == [0.6, 0.4]
    assert result["distribution"]["deviation"] == pytest.approx(0.1 / 0.5)
    assert result["profession_kept"] == pytest.approx(4 / 5)
    expected = np.abs(nurse.astype(float) - images[0].astype(float)).mean() / 255 / 5
    assert result["pixel_change"] == pytest.approx(expected, rel=1e-12)
