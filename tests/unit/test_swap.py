"""``swap_class``: the check the native data plane relies on before handing aiokafka a class."""

from __future__ import annotations

import types

from streams._swap import swap_class


class Theirs:
    pass


class Ours(Theirs):
    pass


class Other:
    pass


def module_with(cls: type | None) -> types.ModuleType:
    module = types.ModuleType("fake")
    if cls is not None:
        module.Used = cls  # type: ignore[attr-defined]
    return module


def test_replaces_the_expected_class() -> None:
    module = module_with(Theirs)
    assert swap_class(module, "Used", Theirs, Ours) is True
    assert module.Used is Ours  # type: ignore[attr-defined]


def test_a_second_call_keeps_the_replacement() -> None:
    module = module_with(Theirs)
    swap_class(module, "Used", Theirs, Ours)
    assert swap_class(module, "Used", Theirs, Ours) is True
    assert module.Used is Ours  # type: ignore[attr-defined]


def test_leaves_an_unexpected_class_alone() -> None:
    module = module_with(Other)
    assert swap_class(module, "Used", Theirs, Ours) is False
    assert module.Used is Other  # type: ignore[attr-defined]


def test_a_module_without_the_name_is_left_without_it() -> None:
    module = module_with(None)
    assert swap_class(module, "Used", Theirs, Ours) is False
    assert not hasattr(module, "Used")
