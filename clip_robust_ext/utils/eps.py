"""Budgets written the way papers write them: 4/255, "4/255", 0.0157."""

from __future__ import annotations

from fractions import Fraction

from ..errors import ClipxUsageError


def parse_eps(value: float | int | str, *, name: str = "eps", max_value: float = 1.0) -> float:
    """Parse a pixel-space budget in [0, max_value]; strings may be fractions like '4/255'."""
    if isinstance(value, bool):
        raise ClipxUsageError(
            f"{name}: expected a number or a fraction like '4/255', got {value!r}"
        )
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            out = float(Fraction(text)) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError):
            raise ClipxUsageError(
                f"{name}: cannot parse {value!r}; write a number or a fraction like '4/255'"
            ) from None
    else:
        raise ClipxUsageError(
            f"{name}: expected a number or a fraction like '4/255', got {value!r}"
        )
    if not (0.0 <= out <= max_value) or out != out:
        raise ClipxUsageError(
            f"{name}: {value!r} is outside [0, {max_value}] (pixel space is [0, 1])"
        )
    return out


def format_eps(eps: float) -> str:
    """4/255 for budgets on the 1/255 grid, else the float."""
    k = eps * 255
    if abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:.6g}"
