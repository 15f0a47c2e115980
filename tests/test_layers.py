"""The package's architecture: imports point only downward, and the light entry points stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mist_debias

PACKAGE = Path(mist_debias.__file__).parent
LAYERS = {"core": 0, "measure": 1, "loop": 2, "app": 3}
"""Each layer may import its own and lower layers only."""
PLUGINS = {"world", "profiles"}
"""Importable only from the application and from each other; they may import every layer below the application."""


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "mist_debias" else None


def imports_of(path: Path) -> set[str]:
    """Every ``mist_debias`` module ``path`` imports, at the top or inside a function."""
    package = ".".join(("mist_debias", *path.relative_to(PACKAGE).with_suffix("").parts))
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: -node.level if path.name != "__init__.py" else len(package) - node.level]
                found.add(".".join([*base, node.module] if node.module else base))
            elif node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("mist_debias.")}


def forbidden(importer: str, imported: str) -> bool:
    if importer == imported or importer not in {*LAYERS, *PLUGINS} or imported not in {*LAYERS, *PLUGINS}:
        return False
    if imported in PLUGINS:
        return importer not in {"app", *PLUGINS}
    if importer in PLUGINS:
        return imported == "app"
    return LAYERS[imported] > LAYERS[importer]


def test_the_rules_themselves():
    assert forbidden("core", "measure") and forbidden("loop", "app") and forbidden("measure", "loop")
    assert forbidden("loop", "world") and forbidden("core", "profiles") and forbidden("world", "app")
    assert not forbidden("app", "world") and not forbidden("profiles", "world") and not forbidden("world", "loop")
    assert not forbidden("loop", "core") and not forbidden("app", "measure")


def test_imports_point_downward():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _room(".".join(("mist_debias", *path.relative_to(PACKAGE).parts)))
        for module in sorted(imports_of(path)):
            if forbidden(importer or "", _room(module) or ""):
                violations.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert violations == []


def test_the_walk_sees_imports_inside_functions():
    sample = PACKAGE / "measure" / "classifiers" / "loading.py"
    found = imports_of(sample)
    assert "mist_debias.measure.classifiers.clip" in found  # imported inside load_classifier


def _modules_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint('modules:', *sorted(sys.modules))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(result.stdout.strip().splitlines()[-1].split()[1:])


def test_import_mist_debias_is_light_and_exposes_the_api():
    loaded = _modules_after("import mist_debias")
    assert not loaded & {"torch", "mist_debias.world", "matplotlib", "rich", "typer"}
    for name in mist_debias.__all__:
        assert getattr(mist_debias, name) is not None
    assert {"Edit", "EditProblem", "ConceptPrompts", "PromptEncoder", "load_pipeline"} <= set(mist_debias.__all__)
    assert "find_cross_attention_projections" in dir(mist_debias)


def test_the_command_line_and_its_help_do_not_import_torch():
    assert "torch" not in _modules_after("import mist_debias.app.cli")
    for flag in ("--help", "--version"):
        code = f"from mist_debias.app.cli import main\ntry:\n    main([{flag!r}])\nexcept SystemExit:\n    pass"
        loaded = _modules_after(code)
        assert "torch" not in loaded and "diffusers" not in loaded, flag


def test_the_report_does_not_import_torch():
    loaded = _modules_after("import mist_debias.app.report, mist_debias.app.evaluate_cli")
    assert "torch" not in loaded
