"""Run folders: kind marker first, atomic creation, fresh / resume / force rules, and the tolerant log reader."""

import json

import pytest

from mist_debias.core.run_folder import (
    MARKER_FILE,
    FolderKind,
    RunFolderError,
    check_run_folder,
    create_run_folder,
    folder_kind,
    mark_legacy,
    read_jsonl,
    run_mode,
    settings_differences,
)

KIND = FolderKind("debias", "config.json", settings_key="run", legacy=lambda data: "run" in data)
OTHER = FolderKind("evaluation", "evaluation.json")
SETTINGS = {"seed": 0, "generation": {"steps": 20, "guidance": 7.5}, "concepts": ["doctor"]}


def make(path, kind=KIND, settings=SETTINGS):
    create_run_folder(path, kind, "fresh", {kind.settings_file: json.dumps({"run": settings})})


def tree(path):
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else None) for p in path.rglob("*"))


def test_created_folder_has_the_marker_and_settings_and_no_temporary_leftovers(tmp_path):
    out = tmp_path / "nested" / "run"
    assert check_run_folder(out, KIND, "fresh", SETTINGS) is True
    assert not out.exists()
    make(out)
    marker = json.loads((out / MARKER_FILE).read_text())
    assert marker["kind"] == "debias" and marker["format_version"] == 1
    assert json.loads((out / "config.json").read_text()) == {"run": SETTINGS}
    assert folder_kind(out) == "debias"
    assert [p.name for p in out.parent.iterdir()] == ["run"]


def test_resume_compares_settings_and_names_the_first_differences(tmp_path):
    out = tmp_path / "run"
    make(out)
    assert check_run_folder(out, KIND, "resume", json.loads(json.dumps(SETTINGS))) is False
    changed = {**SETTINGS, "seed": 1, "generation": {"steps": 30, "guidance": 7.5}}
    with pytest.raises(RunFolderError, match=r"other settings \(generation.steps: 20 → 30; seed: 0 → 1\)"):
        check_run_folder(out, KIND, "resume", changed)
    assert check_run_folder(out, KIND, "resume", changed, ignore=("generation.steps", "seed")) is False
    with pytest.raises(RunFolderError, match=r"is not an evaluation folder \(it is a debias folder\)"):
        check_run_folder(out, OTHER, "resume", SETTINGS)
    with pytest.raises(RunFolderError, match="does not exist"):
        check_run_folder(tmp_path / "absent", KIND, "resume", SETTINGS)


def test_fresh_refuses_an_existing_run_and_force_replaces_it(tmp_path):
    out = tmp_path / "run"
    make(out)
    (out / "log.jsonl").write_text("{}\n")
    with pytest.raises(RunFolderError, match="already exists"):
        check_run_folder(out, KIND, "fresh", SETTINGS)
    assert check_run_folder(out, KIND, "force", SETTINGS) is True
    create_run_folder(out, KIND, "force", {"config.json": json.dumps({"run": {"seed": 5}})})
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER_FILE, "config.json"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("mode", ["fresh", "force", "resume"])
def test_a_user_folder_a_file_and_another_kind_are_never_touched(tmp_path, mode):
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    (user / "config.json").write_text('{"unrelated": true}')
    file = tmp_path / "file.txt"
    file.write_text("data")
    other = tmp_path / "evaluation"
    make(other, OTHER)
    before = tree(tmp_path)
    for path in (user, file, other):
        with pytest.raises(RunFolderError) as error:
            check_run_folder(path, KIND, mode, SETTINGS)
        assert "\n" not in str(error.value)
        if mode != "resume":
            with pytest.raises(RunFolderError):
                create_run_folder(path, KIND, mode, {"config.json": "{}"})
    assert tree(tmp_path) == before


def test_force_refuses_the_home_folder_and_the_working_folder(tmp_path, monkeypatch):
    home = tmp_path / "home"
    make(home)  # even with a marker inside: a home folder is never replaced
    work = home / "project"
    work.mkdir()
    (work / "notes.txt").write_text("keep")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    before = tree(tmp_path)
    for path in (home, work):
        with pytest.raises(RunFolderError, match="home folder or holds the working folder"):
            check_run_folder(path, KIND, "force", SETTINGS)
    assert tree(tmp_path) == before


def test_an_empty_folder_is_used_and_a_legacy_folder_is_recognised_by_its_settings(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_run_folder(empty, KIND, "fresh", SETTINGS) is True
    make(empty)
    assert folder_kind(empty) == "debias"
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps({"run": SETTINGS}))
    assert folder_kind(legacy) is None and folder_kind(legacy, [KIND]) == "debias"
    assert check_run_folder(legacy, KIND, "resume", SETTINGS) is False
    mark_legacy(legacy, KIND)
    assert folder_kind(legacy) == "debias"


def test_run_mode():
    assert [run_mode(False, False), run_mode(True, False), run_mode(False, True)] == ["fresh", "resume", "force"]
    with pytest.raises(RunFolderError, match="not both"):
        run_mode(True, True)


def test_settings_differences_lists_at_most_three_keys():
    stored = {f"k{i}": i for i in range(5)}
    assert settings_differences(stored, stored) == ""
    text = settings_differences(stored, {f"k{i}": i + 1 for i in range(5)})
    assert text == "k0: 0 → 1; k1: 1 → 2; k2: 2 → 3; 2 more"
    assert settings_differences({"a": [1, 2]}, {"a": (1, 2)}) == ""
    assert settings_differences({"a": 1}, {}) == "a: 1 → (absent)"


def test_log_reader_drops_only_a_torn_last_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"round": 0}\n\n{"round": 1}\n{"rou')
    assert read_jsonl(log) == [{"round": 0}, {"round": 1}]
    for text, line in (
        ('{"round": 0}\nnot json\n{"round": 1}\n', 2),
        ('{"round": 0}\n{"rou\n', 2),  # a complete line (it has its newline) that does not parse
        ('{"round": 0}\n[1, 2]\n', 2),
    ):
        log.write_text(text)
        with pytest.raises(RunFolderError, match=f"line {line} "):
            read_jsonl(log)
