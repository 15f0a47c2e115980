"""``mist app``: re-solve = ``mist edit``, save/load, run folders, refusals, and the page in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

from mist_debias.app.cli import main
from mist_debias.app.webapp import (
    AppOptions,
    EditSession,
    cell_phrases,
    distribution_table,
    load_edit_source,
    open_session,
    resolve_model,
    serve,
    split_weights,
)
from mist_debias.core.edit import Edit
from mist_debias.core.errors import EditFileError, MistError
from mist_debias.core.pipeline import load_pipeline
from mist_debias.core.spec import AttributeSpec
from mist_debias.loop.config import RunConfig
from mist_debias.world import WorldOracle, bundled_world_path

DOCTOR = "a photo of a doctor"
WAIT_MS = 60_000
"""How long the browser waits for the page (generation on busy shared cores can take tens of seconds)."""
GENDER = ["--attribute", "a photo of a man", "--attribute", "a photo of a woman"]


def run_cli(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
        raise SystemExit(0)
    return exit_info.value.code or 0, capsys.readouterr().err


def mist_edit(capsys, model, out: Path, weights: str, *extra) -> Edit:
    code, err = run_cli(capsys, "edit", model, "--concept", DOCTOR, *GENDER, "--weights", weights, "--out", out, *extra)
    assert code == 0, err
    return Edit.load(out)


def assert_same_edit(a: Edit, b: Edit) -> None:
    assert torch.equal(a.right, b.right)
    assert a.layer_names == b.layer_names
    assert all(torch.equal(a.left[name], b.left[name]) for name in a.layer_names)
    assert a.metadata() == b.metadata()


@pytest.fixture
def sd1_edit(sd1_dir, tmp_path, capsys) -> Path:
    path = tmp_path / "doctor.safetensors"
    mist_edit(capsys, sd1_dir, path, "0.4,-0.2", "--preserve", "a photo of a nurse", "--lam", "0.7")
    return path


def sd1_session(sd1_dir, path: Path) -> EditSession:
    return EditSession(
        load_pipeline(sd1_dir, device="cpu"),
        load_edit_source(path),
        WorldOracle(),
        resolve_model(str(sd1_dir)).generation,
    )


def test_resolve_equals_mist_edit_with_those_weights(sd1_dir, sd1_edit, tmp_path, capsys):
    session = sd1_session(sd1_dir, sd1_edit)
    assert session.initial_weights == [[0.4, -0.2]]
    assert session.reproduces_source()
    assert_same_edit(session.solve([[0.4, -0.2]]), Edit.load(sd1_edit))
    expected = mist_edit(
        capsys, sd1_dir, tmp_path / "other.safetensors", "-0.3,0.9", "--preserve", "a photo of a nurse", "--lam", "0.7"
    )
    solved = session.solve([[-0.3, 0.9]])
    assert_same_edit(solved, expected)
    assert not torch.equal(solved.left[solved.layer_names[0]], Edit.load(sd1_edit).left[solved.layer_names[0]])


def test_save_load_round_trip_and_refusals(sd1_dir, sd1_edit, tmp_path):
    session = sd1_session(sd1_dir, sd1_edit)
    out = tmp_path / "saved.safetensors"
    saved = session.save([[0.25, 0.5]], out)
    loaded = Edit.load(out)
    assert loaded.info["concepts"][0]["weights"] == [0.25, 0.5]
    assert_same_edit(loaded, saved)
    with pytest.raises(MistError, match="already exists"):
        session.save([[1.0, 1.0]], out)
    assert Edit.load(out).info["concepts"][0]["weights"] == [0.25, 0.5]
    session.save([[1.0, 1.0]], out, force=True)
    assert Edit.load(out).info["concepts"][0]["weights"] == [1.0, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doctor.safetensors", "saved.safetensors"]  # no temp files


def test_edit_of_another_model_is_refused_with_the_cli_message(sd1_dir, sd1_edit, tmp_path, capsys):
    from mist_debias.testing import build_pipeline, save_pipeline

    other = save_pipeline(build_pipeline("sd1", seed=123), tmp_path / "other")
    with pytest.raises(EditFileError) as refused:
        sd1_session(other, sd1_edit)
    code, export_err = run_cli(capsys, "export", other, sd1_edit, "--out", tmp_path / "x")
    assert code == 2
    code, app_err = run_cli(capsys, "app", other, "--edit", sd1_edit, "--port", "1")
    assert code == 2
    assert app_err == export_err == f"error: {refused.value}\n"
    assert "another base model" in app_err
    (tmp_path / "empty").mkdir()
    for edit, message in ((tmp_path / "missing.safetensors", "edit file not found"), (tmp_path / "empty", "not a run")):
        code, err = run_cli(capsys, "app", other, "--edit", edit)
        assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1


def test_run_folder_gives_its_spec_sampler_and_classifier(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    config = RunConfig.from_dict(
        {
            "concepts": [{"name": "doctor"}],
            "attributes": {"axes": {"gender": ["man", "woman"]}, "target": [0.3, 0.7]},
            "generation": {"steps": 7, "guidance": 1.25, "eta": 0.5},
            "classifier": {"drive": "oracle"},
        }
    )
    record = {"run": config.to_dict(), "model": str(bundled_world_path()), "model_fingerprint": "sign-sha256:0"}
    (run / "config.json").write_text(json.dumps(record))
    with pytest.raises(MistError, match=r"no edit\.safetensors"):
        load_edit_source(run)
    edit = mist_edit(capsys, bundled_world_path(), tmp_path / "plain.safetensors", "0.1,0.2")
    spec = config.spec(config.concepts[0])
    edit.info["concepts"][0].update(name="doctor", spec=spec.to_dict())
    edit.info["controller"] = {"name": "adaptive"}
    edit.save(run / "edit.safetensors")
    session = open_session(AppOptions("world", run, device="cpu"))
    assert session.concepts[0].name == "doctor"
    assert session.concepts[0].spec == spec
    assert (session.generation.steps, session.generation.guidance, session.generation.eta) == (7, 1.25, 0.5)
    assert isinstance(session.classifier, WorldOracle)
    assert "controller" not in session.solve([[0.0, 0.5]]).info  # hand-set weights are not the controller's
    (tmp_path / "empty").mkdir()
    with pytest.raises(MistError, match="not a run folder"):
        load_edit_source(tmp_path / "empty")


def test_compounded_edit_is_flagged(sd1_dir, sd1_edit, tmp_path):
    edit = Edit.load(sd1_edit)
    doubled = Edit(edit.right, {name: 2 * left for name, left in edit.left.items()}, edit.base_fingerprint, edit.info)
    doubled.save(tmp_path / "doubled.safetensors")
    assert not sd1_session(sd1_dir, tmp_path / "doubled.safetensors").reproduces_source()


def test_cell_phrases_and_weights():
    assert cell_phrases(DOCTOR, ["a photo of a man", "a photo of a woman"]) == ["man", "woman"]
    assert cell_phrases("a photo of an engineer", ["a photo of a young woman", "a photo of an old man"]) == [
        "young woman",
        "old man",
    ]
    assert cell_phrases("doctor", ["man", "woman"]) == ["man", "woman"]
    assert cell_phrases("a doctor", ["a doctor", "a doctor man"]) == ["a doctor", "a doctor man"]
    concepts = sd1_like_concepts()
    assert split_weights([1, 2, 3, 4, 5], concepts) == [[1.0, 2.0], [3.0, 4.0, 5.0]]
    with pytest.raises(MistError, match="5 weights expected"):
        split_weights([1, 2], concepts)
    with pytest.raises(MistError, match="finite"):
        split_weights([1, 2, 3, 4, float("nan")], concepts)


def sd1_like_concepts():
    from mist_debias.app.webapp import AppConcept
    from mist_debias.core.targets import ConceptPrompts

    return [
        AppConcept("a", ConceptPrompts("a", ("x", "y")), AttributeSpec.from_phrases(["x", "y"]), (0.0, 0.0)),
        AppConcept("b", ConceptPrompts("b", ("x", "y", "z")), AttributeSpec.from_phrases(["x", "y", "z"]), (0, 0, 0)),
    ]


def test_distribution_table_shows_shares_intervals_and_delta():
    from mist_debias.app.webapp import Comparison
    from mist_debias.measure.metrics import Distribution

    concept = sd1_like_concepts()[0]
    before = Distribution.from_counts([4, 0], [0.5, 0.5], n_invalid=1)
    after = Distribution.from_counts([1, 3], [0.5, 0.5])
    table = distribution_table(Comparison(concept, (3, 4, 5, 6, 7), [], [], [], [], before, after))
    lines = table.splitlines()
    assert lines[0].startswith("**a** — 5 images per side, seeds 3–7")
    after_x = f"25% ({100 * after.lower[0]:.0f}%–{100 * after.upper[0]:.0f}%)"
    x_row = f"| x | 50% | 100% ({100 * before.lower[0]:.0f}%–100%) | {after_x} |"
    assert x_row in lines
    assert "| unclassified | | 1 | 0 |" in lines
    assert "| Δ to target | | 1.000 | 0.500 |" in lines
    nothing = Distribution.from_counts([0, 0], [0.5, 0.5], n_invalid=5)  # no image could be classified
    lines = distribution_table(Comparison(concept, (0,), [], [], [], [], before, nothing)).splitlines()
    assert "| unclassified | | 1 | 5 |" in lines
    assert "| Δ to target | | 1.000 | – |" in lines
    assert lines[4].startswith("| x | 50% | 100% (") and lines[4].endswith(" | – (0%–100%) |")


# ------------------------------------------------------------------------------------------- browser


def chromium() -> str:
    """Debian's chromium and the playwright client; without them the test skips locally and fails in CI."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright  # noqa: F401
    except ImportError:
        executable = None
    if executable is None:
        message = "needs chromium (apt-get install -y chromium) and playwright (the dev extra)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return executable


LOADED_IMAGES = """gallery => {
    const images = [...document.querySelectorAll(`${gallery} img`)];
    return images.length === 8 && images.every(image => image.complete && image.naturalWidth >= 32);
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_page_in_chromium_change_weight_generate_save(tmp_path, capsys, monkeypatch):
    executable = chromium()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # the page's image files
    from playwright.sync_api import expect, sync_playwright

    start = mist_edit(capsys, bundled_world_path(), tmp_path / "doctor.safetensors", "0.3,0.6")
    saved = tmp_path / "chosen.safetensors"
    port = free_port()
    page = serve(AppOptions("world", tmp_path / "doctor.safetensors", out=saved, device="cpu", port=port), block=False)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
            tab = browser.new_page()
            tab.set_default_timeout(WAIT_MS)
            tab.goto(f"http://127.0.0.1:{port}/")
            for cell, value in (("0-0", "-1"), ("0-1", "1")):  # typed in quick succession
                box = tab.locator(f"#weight-{cell} input[type=number]")
                box.fill(value)
                box.press("Enter")
            expect(tab.locator("#solve-status")).to_contain_text("man -1.000, woman +1.000", timeout=WAIT_MS)
            tab.locator("#generate").click()
            table = tab.locator("#distribution-0")
            expect(table).to_contain_text("Δ to target", timeout=WAIT_MS)
            rows = {cells[0]: cells[1:] for cells in (row.split("\t") for row in table.inner_text().splitlines())}
            for gallery in ("#original-0", "#edited-0"):  # eight images each, every one loaded and drawn
                tab.wait_for_function(LOADED_IMAGES, arg=gallery, timeout=WAIT_MS)
                captions = tab.locator(f"{gallery} img").evaluate_all("images => images.map(i => i.alt)")
                assert captions == [caption for caption in captions if caption.startswith("seed ")]
                assert len(captions) == 8
            # the world's doctor is drawn as a man on these seeds; weights −1, +1 turn every image into a woman
            assert [cell.split(" ")[0] for cell in rows["man"]] == ["50%", "100%", "0%"]
            assert [cell.split(" ")[0] for cell in rows["woman"]] == ["50%", "0%", "100%"]
            tab.locator("#save").click()
            expect(tab.locator("#save-status")).to_contain_text(f"saved {saved}", timeout=WAIT_MS)
            browser.close()
    finally:
        page.close()
    chosen = Edit.load(saved)
    assert chosen.info["concepts"][0]["weights"] == [-1.0, 1.0]
    assert start.info["concepts"][0]["weights"] == [0.3, 0.6]
    assert_same_edit(chosen, mist_edit(capsys, bundled_world_path(), tmp_path / "cli.safetensors", "-1,1"))
