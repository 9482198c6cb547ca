"""The layer contract (pyproject's ``[tool.importlinter]``) holds, covers every module of
``loop``, and catches an upward import."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("loop", "oracles", "surrogates", "flows")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed")


def _layers() -> list[str]:
    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    return [module.strip() for layer in contract["layers"] for module in layer.replace("|", ":").split(":")]


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copy_tree(destination: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, destination / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", destination / "pyproject.toml")
    return destination


def test_every_module_of_loop_has_a_layer() -> None:
    layered = set(_layers())
    modules = {
        f"loop.{path.stem if path.is_file() else path.name}"
        for path in (ROOT / "loop").iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").is_file()
    }
    assert modules - layered == set(), "give these modules a layer in pyproject's [tool.importlinter]"


def test_the_packages_keep_the_layers() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout.partition("Broken contracts")[2]
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    tree = _copy_tree(tmp_path)
    oracle_base = tree / "oracles" / "base.py"
    oracle_base.write_text(oracle_base.read_text() + "\n\ndef _upward():\n    import loop.campaign\n")

    result = _lint(tree)

    assert result.returncode != 0
    assert "oracles is not allowed to import loop.campaign" in result.stdout
    assert "oracles.base -> loop.campaign" in result.stdout
