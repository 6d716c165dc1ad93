"""Replacing one of aiokafka's classes in the module that uses it, checked.

The native data plane hands aiokafka classes of its own in two places (the fetcher's
``MemoryRecords``, the sender's ``ProduceRequest``). Each relies on the version it was written
against (aiokafka 0.14): when the module holds anything other than the expected class, nothing is
replaced and the caller keeps aiokafka's own path."""

from __future__ import annotations

from types import ModuleType


def swap_class(module: ModuleType, name: str, expected: type, replacement: type) -> bool:
    """Set ``module.name`` to ``replacement`` if it is ``expected``; True when it now is
    ``replacement`` (also when it already was), False when it was something else and is left
    alone. Process-wide: every user of ``module`` sees the replacement."""
    current = getattr(module, name, None)
    if current is replacement:
        return True
    if current is not expected:
        return False
    setattr(module, name, replacement)
    return True
