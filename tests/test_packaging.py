"""Packaging: every sub-package is listed in pyproject.toml, and `codecs`
stays the standard library's."""

import codecs
import pathlib
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _packages_on_disk() -> set[str]:
    found = set()
    for name, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            if "node_modules" in init.parts or "__pycache__" in init.parts:
                continue
            relative = init.parent.relative_to(base).parts
            found.add(".".join((name, *relative)))
    return found


def test_every_sub_package_is_listed():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    missing = _packages_on_disk() - listed
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    stale = listed - _packages_on_disk()
    assert not stale, f"listed but without an __init__.py: {sorted(stale)}"


def test_top_level_folders_map_into_shopcast():
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    assert mapping["shopcast.server"] == "server"
    assert mapping["shopcast.codecs"] == "codecs"
    assert mapping["shopcast.plugins"] == "plugins"
    assert mapping["shopcast.bench"] == "bench"
    assert all(name == "shopcast" or name.startswith("shopcast.") for name in mapping)


def test_codecs_is_the_standard_library():
    assert pathlib.Path(codecs.__file__).parent == pathlib.Path(sys.modules["os"].__file__).parent
    assert hasattr(codecs, "lookup")
    import shopcast.codecs
    assert shopcast.codecs is not codecs


def test_console_script_and_dependencies():
    project = PYPROJECT["project"]
    assert project["scripts"]["shopcast"] == "shopcast.server._cli:main"
    deps = " ".join(project["dependencies"])
    for name in ("trio", "aioquic", "numpy", "numba", "msgpack", "h2", "h11", "cryptography", "pluggy"):
        assert name in deps
    test_deps = " ".join(project["optional-dependencies"]["test"])
    for name in ("pytest", "pytest-trio", "hypothesis", "playwright"):
        assert name in test_deps
