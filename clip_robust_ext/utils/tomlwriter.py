"""A small TOML writer for resolved recipes (tomllib only reads): tables, arrays of tables,
inline arrays and tables, escaped strings. `tomllib.loads(dump_toml(d)) == d` for any dict of
TOML-representable values (a property test checks it)."""

from __future__ import annotations

import math
import re
from typing import Any


def _toml_str(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_str(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if value is None:
        raise ValueError("TOML has no null")
    return _toml_str(str(value))


def dump_toml(doc: dict[str, Any]) -> str:
    lines: list[str] = []

    def table(prefix: str, node: dict[str, Any], header: str | None) -> None:
        scalars = {
            k: v
            for k, v in node.items()
            if not _is_table(v) and not _is_table_array(v) and v is not None
        }
        if header is not None:
            lines.append(header)
        for k, v in scalars.items():
            lines.append(f"{_toml_key(str(k))} = {_toml_value(v)}")
        if header is not None or scalars:
            lines.append("")
        for k, v in node.items():
            path = f"{prefix}.{_toml_key(str(k))}" if prefix else _toml_key(str(k))
            if _is_table(v):
                table(path, v, f"[{path}]")
            elif _is_table_array(v):
                for item in v:
                    table(path, item, f"[[{path}]]")

    table("", doc, None)
    return "\n".join(lines).rstrip() + "\n"


def _is_table(v: Any) -> bool:
    return isinstance(v, dict)


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)
