from typer.testing import CliRunner

from mist_debias.world.cli import world_app


def test_train_refuses_a_non_empty_folder_without_flags(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    result = CliRunner().invoke(world_app, ["train", "--out", str(out)])
    assert result.exit_code == 2
    assert "not empty" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_train_rejects_force_with_resume_and_negative_seed(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(world_app, ["train", "--out", str(out), "--force", "--resume"])
    assert result.exit_code == 2
    result = CliRunner().invoke(world_app, ["train", "--out", str(out), "--seed", "-1"])
    assert result.exit_code == 2
    assert not out.exists()


def test_quality_rejects_a_folder_that_is_no_pipeline(tmp_path):
    result = CliRunner().invoke(world_app, ["quality", "--model", str(tmp_path), "--out", str(tmp_path / "q.json")])
    assert result.exit_code == 2
    assert not (tmp_path / "q.json").exists()
