"""The wheel carries every package: ``pip install .`` (the README's demo command) is not
editable, so a subpackage missing from pyproject's explicit list breaks the installed CLI."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> tuple[set[str], dict[str, str]]:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(tool["packages"]), tool["package-dir"]


def _on_disk(package_dir: dict[str, str]) -> set[str]:
    found = set()
    for root_name, folder in package_dir.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            if any(part.startswith((".", "_")) for part in rel.parts):
                continue
            found.add(".".join((root_name, *rel.parts)))
    return found


def test_every_package_on_disk_is_declared():
    declared, package_dir = _declared()
    missing = _on_disk(package_dir) - declared
    assert not missing, f"packages missing from pyproject [tool.setuptools] packages: {sorted(missing)}"


def test_every_declared_package_exists():
    declared, package_dir = _declared()
    assert declared - _on_disk(package_dir) == set()


def test_the_public_names_the_readme_calls_exist():
    """``lrpath_onnx.tune_allocator()`` is what the README tells API users to call."""
    import lrpath_onnx

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "lrpath_onnx.tune_allocator()" in readme
    assert "tune_allocator" in lrpath_onnx.__all__ and callable(lrpath_onnx.tune_allocator)
