"""Budgets written the way papers write them: 4/255, "4/255", 0.0157."""

from __future__ import annotations

import ast
import math
import operator
import struct
from fractions import Fraction
from typing import Any

from ..errors import ClipxUsageError

# attacks run in fp32: a smaller non-zero budget is rounded (subnormal) or becomes 0 there
FLOAT32_TINY = 1.1754943508222875e-38


def parse_eps(value: float | int | str, *, name: str = "eps", max_value: float = 1.0) -> float:
    """Parse a pixel-space budget in [0, max_value]; strings may be fractions like '4/255'."""
    if isinstance(value, bool):
        raise ClipxUsageError(
            f"{name}: expected a number or a fraction like '4/255', got {value!r}"
        )
    underflow = False
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            out, written_zero = _float_of(text)
        except (ValueError, ZeroDivisionError):
            raise ClipxUsageError(
                f"{name}: cannot parse {value!r}; write a number or a fraction like '4/255'"
            ) from None
        underflow = out == 0 and not written_zero
    else:
        raise ClipxUsageError(
            f"{name}: expected a number or a fraction like '4/255', got {value!r}"
        )
    if not (0.0 <= out <= max_value) or out != out:
        raise ClipxUsageError(
            f"{name}: {value!r} is outside [0, {max_value}] (pixel space is [0, 1])"
        )
    check_representable(out, name, value, underflow)
    return out


def _float_of(text: str) -> tuple[float, bool]:
    """(the float of '4/255', '1e-3', 'inf'; whether the text itself is zero): 1e-400 is not
    zero as written but is 0.0 as a float."""
    try:
        exact = Fraction(text)
    except ValueError:
        return float(text), False  # inf, nan: refused by the range check with its own message
    try:
        return float(exact), exact == 0
    except OverflowError:
        return math.inf, False


def check_representable(out: float, name: str, written: Any, underflow: bool = False) -> None:
    """A budget the fp32 attack would not use as written (a non-zero value that underflows to 0
    or to a rounded subnormal) is refused: eps 1e-400 silently became 0, robust = clean."""
    if underflow or 0 < abs(out) < FLOAT32_TINY:
        as_f32 = struct.unpack("f", struct.pack("f", out))[0]
        raise ClipxUsageError(
            f"{name}: {written!r} is too small to represent (an fp32 attack would use "
            f"{as_f32!r}, not the value written); use 0 for no perturbation or a value >= 1.2e-38"
        )


def format_eps(eps: float) -> str:
    """4/255 for budgets on the 1/255 grid, else the float."""
    k = eps * 255
    if abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:.6g}"


_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.USub: operator.neg,
}


def resolve_budget_expr(value: Any, eps: float) -> Any:
    """'eps/4', '2.5*eps/10' -> float given eps; anything else is returned unchanged."""
    if not isinstance(value, str) or "eps" not in value:
        return value

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            number = float(node.value)
            text = ast.get_source_segment(value, node) or ""
            if not math.isfinite(number) or (number == 0 and _float_of(text)[1] is False):
                raise _NotAFloat(text)  # 1e400 is inf, 1e-400 is 0.0: not the number written
            return number
        if isinstance(node, ast.Name) and node.id == "eps":
            return eps
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError

    try:
        out = ev(ast.parse(value, mode="eval"))
    except _NotAFloat as exc:
        raise ClipxUsageError(
            f"cannot evaluate {value!r}: {exc} is not representable as a float (it would be "
            f"{float(str(exc))!r})"
        ) from None
    except (ValueError, SyntaxError, ZeroDivisionError):
        raise ClipxUsageError(
            f"cannot evaluate {value!r}: use numbers, eps, + - * / (e.g. 'eps/4')"
        ) from None
    check_representable(out, "the budget", value)
    return out


class _NotAFloat(ValueError):
    """A number in a budget expression that is not the float it reads as (1e400, 1e-400)."""
