"""The public surface: every package's __all__ names exist, are what the
package exports, and nothing private leaks into it."""

import importlib

import pytest

PACKAGES = ["shopcast", "shopcast.server", "shopcast.server.moq", "shopcast.codecs",
            "shopcast.client", "shopcast.bench"]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_exist_and_are_public(name):
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(exported) == len(set(exported)), "duplicate names in __all__"
    for attribute in exported:
        assert hasattr(module, attribute), f"{name}.{attribute} is in __all__ but missing"
        assert not attribute.startswith("_") or attribute == "__version__"


@pytest.mark.parametrize("name", PACKAGES)
def test_public_objects_are_documented(name):
    module = importlib.import_module(name)
    assert module.__doc__, f"{name} has no module docstring"
    for attribute in module.__all__:
        value = getattr(module, attribute)
        if callable(value) and not isinstance(value, type(importlib)):
            assert getattr(value, "__doc__", None), f"{name}.{attribute} has no docstring"
