"""The public surface of shopcast.server.moq is exactly what it claims."""

from __future__ import annotations

import dataclasses
import importlib

import shopcast.server.moq as moq

MODULES = ["_wire", "_session", "_hang"]


def test_all_is_the_union_of_the_private_modules() -> None:
    expected: list[str] = []
    for name in MODULES:
        module = importlib.import_module(f"shopcast.server.moq.{name}")
        expected += module.__all__
        for public in module.__all__:
            assert getattr(moq, public) is getattr(module, public)
    assert sorted(moq.__all__) == sorted(expected)
    assert len(set(moq.__all__)) == len(moq.__all__)


def test_events_and_commands_are_frozen_and_documented() -> None:
    for name in moq.__all__:
        value = getattr(moq, name)
        if isinstance(value, type):
            assert value.__doc__, name
            if dataclasses.is_dataclass(value):
                assert value.__dataclass_params__.frozen, name  # type: ignore[attr-defined]
