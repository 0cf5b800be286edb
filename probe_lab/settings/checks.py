"""Validation of single settings, each failure a one-line `ProbeLabError` naming the setting."""

from __future__ import annotations

import math
from enum import Enum
from typing import Any, TypeVar

from probe_lab.errors import ProbeLabError

E = TypeVar("E", bound=Enum)


def require_positive(value: Any, name: str, *, integer: bool = False) -> None:
    """`value` is a finite positive number (a positive int with `integer`); `name` is the full setting."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value <= 0:
        raise ProbeLabError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")


def require_choice(enum_type: type[E], value: Any, name: str) -> E:
    """`value` (a member or its string) as a member of `enum_type`."""
    try:
        return enum_type(value.value if isinstance(value, Enum) else value)
    except ValueError:
        choices = ", ".join(str(m.value) for m in enum_type)
        raise ProbeLabError(f"{name} must be one of {choices}, got {value!r}") from None
