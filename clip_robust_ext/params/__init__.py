"""Parameters of registered factories: one mechanism for every model, dataset, attack, defense
and protocol factory.

`checked(target, what)` gives a factory the signature of the class or function it builds (minus
`self` and hidden parameters, plus declared options) and checks keyword names on every call,
naming the closest accepted one. Recipes read the same signature with `signature_of` and check
each key's value with `coerce` before anything runs, so a typo in any section fails at
`clipx recipe show`, not after training.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import inspect
import math
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import ClipxUsageError, closest
from ..utils.eps import parse_eps, resolve_budget_expr

EPS_LIKE = re.compile(r"(^|_)(eps|epsilon|alpha|step_size)($|_)")
NOT_BUDGETS = frozenset({"lora_alpha"})  # LoRA's scale numerator (TrainConfig), not a pixel budget

__all__ = [
    "EPS_LIKE",
    "budget_text",
    "check_kwargs",
    "checked",
    "coerce",
    "dataclass_fields",
    "is_checked",
    "is_eps_like",
    "keyword_parameters",
    "signature_of",
    "types_from_defaults",
    "unknown_key",
]


def is_eps_like(key: str) -> bool:
    parts = [p for p in key.split(".") if not p.isdigit()]
    return bool(parts) and parts[-1] not in NOT_BUDGETS and bool(EPS_LIKE.search(parts[-1]))


def _number(value: Any, key: str) -> float:
    limit = 1.0 if is_eps_like(key) else math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ClipxUsageError(f"{key}: expected a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ClipxUsageError(f"{key}: expected a finite number, got {value!r}")
    if limit == math.inf and isinstance(value, (int, float)):
        return float(value)
    return parse_eps(value, name=key, max_value=limit)


_SIMPLE_TYPES = {"float": float, "int": int, "str": str, "bool": bool, "None": type(None)}


def _simple_annotation(ann: str) -> Any:
    """'float | str' (an unevaluated annotation of builtins) -> the type; else None."""
    parts = [p.strip() for p in ann.replace("Optional[", "").rstrip("]").split("|")]
    if not parts or any(p not in _SIMPLE_TYPES for p in parts):
        return None
    types_ = [_SIMPLE_TYPES[p] for p in parts]
    return types_[0] if len(types_) == 1 else typing.Union[tuple(types_)]  # noqa: UP007


def _union_rank(option: Any) -> int:
    return 0 if option in (int, float, bool) else 1 if option is str else 2


def budget_text(value: str, key: str) -> Any:
    """A budget string: a number or fraction ('4/255' -> float), or an arithmetic expression of
    `eps` ('eps/4', kept as text) checked here without running code."""
    if re.search(r"\beps\b", value):
        try:
            resolve_budget_expr(value, 1 / 255)
        except ClipxUsageError as exc:
            raise ClipxUsageError(f"{key}: {exc}") from None
        return value
    return _number(value, key)


def _type_name(ann: Any) -> str:
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


def coerce(value: Any, ann: Any, key: str) -> Any:
    """Check `value` against annotation `ann`; floats accept '4/255'. Unknown types pass through."""
    if ann in (inspect.Parameter.empty, Any, None, object):
        return value
    if isinstance(ann, str):  # an annotation that could not be evaluated: best effort
        simple = _simple_annotation(ann)
        if simple is not None:
            return coerce(value, simple, key)
        if (
            isinstance(value, str)
            and re.search(r"\bfloat\b", ann)
            and not re.search(r"\bstr\b", ann)
        ):
            return _number(value, key)
        return value
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if float in options and str in options and isinstance(value, str) and is_eps_like(key):
            # a budget written as text ("4/255", or "eps/4" where eps is known later): anything
            # else is a typo, not a free-form string
            return budget_text(value, key)
        first: ClipxUsageError | None = None
        # numbers first ('4/255' -> float), then str (a path is not a 1-element list)
        for option in sorted(options, key=_union_rank):
            try:
                return coerce(value, option, key)
            except ClipxUsageError as exc:
                first = first or exc
        raise first or ClipxUsageError(f"{key}: unexpected value {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        choices = [str(a) for a in args]
        raise ClipxUsageError(
            f"{key}: {value!r} is not one of {choices}{closest(str(value), choices)}"
        )
    if ann is bool:
        if not isinstance(value, bool):
            raise ClipxUsageError(f"{key}: expected true or false, got {value!r}")
        return value
    if ann is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ClipxUsageError(f"{key}: expected an integer, got {value!r}")
        return value
    if ann is float:
        return _number(value, key)
    if ann is str:
        if not isinstance(value, str):
            raise ClipxUsageError(f"{key}: expected a string, got {value!r}")
        return value
    if isinstance(ann, type) and issubclass(ann, os.PathLike):  # Path, os.PathLike
        if not isinstance(value, str):
            raise ClipxUsageError(f"{key}: expected a path (string), got {value!r}")
        return value
    seq = (list, tuple, collections.abc.Sequence, collections.abc.Iterable)
    if ann in seq or origin in seq:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            if args and args[0] in (float, str, int) and not isinstance(value, (dict, list)):
                value = [value]  # eps = "1/255" where a list of budgets is expected
            else:
                raise ClipxUsageError(f"{key}: expected an array, got {value!r}")
        if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
            if len(value) != len(args):
                raise ClipxUsageError(f"{key}: expected {len(args)} values, got {value!r}")
            return [coerce(v, a, f"{key}.{i}") for i, (v, a) in enumerate(zip(value, args))]
        elem = args[0] if args else Any
        return [coerce(v, elem, f"{key}.{i}") for i, v in enumerate(value)]
    if ann is dict or origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise ClipxUsageError(f"{key}: expected a table, got {value!r}")
        return value
    return value


def signature_of(obj: Any) -> tuple[dict[str, Any], bool]:
    """(parameter name -> annotation, accepts **kwargs) of a factory or class."""
    try:
        try:
            sig = inspect.signature(obj, eval_str=True)
        except Exception:  # noqa: BLE001 - forward references that do not resolve
            sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return {}, True
    params: dict[str, Any] = {}
    var_kw = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind not in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            params[p.name] = p.annotation
    return params, var_kw


def types_from_defaults(obj: Any, annotations: dict[str, Any]) -> dict[str, Any]:
    """Types for unannotated parameters (torchattacks' `steps=10`) from their defaults: a bool
    stays a bool, an int may be given as a float, a float as an int or '4/255', a str a str."""
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return {}
    out: dict[str, Any] = {}
    for name, ann in annotations.items():
        p = params.get(name)
        if ann is not inspect.Parameter.empty or p is None or p.default is p.empty:
            continue
        default = p.default
        if isinstance(default, bool):
            out[name] = bool
        elif isinstance(default, int):
            out[name] = int | float
        elif isinstance(default, float):
            out[name] = float
        elif isinstance(default, str):
            out[name] = str
    return out


def dataclass_fields(cls: type) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001
        hints = {}
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(cls) if f.init}


def unknown_key(key: str, valid: list[str] | tuple[str, ...] | set[str]) -> ClipxUsageError:
    """The usage error for an unknown dotted `key`: the closest valid name and every valid one."""
    name = key.rsplit(".", 1)[-1]
    valid = sorted(valid)
    return ClipxUsageError(
        f"{key}: unknown key{closest(name, valid)}; valid keys here: {', '.join(valid)}"
    )


def check_kwargs(
    values: dict[str, Any], factory: Any, key: str, reserved: tuple[str, ...] = ()
) -> dict[str, Any]:
    """`values` checked against `factory`'s keyword parameters (coerced to their types); an unknown
    key is a usage error naming `key` and the closest valid one (`reserved`: other keys the
    section accepts, listed among the valid ones)."""
    params, var_kw = signature_of(factory)
    out = {}
    for k, v in values.items():
        if k in params:
            out[k] = coerce(v, params[k], f"{key}.{k}")
        elif var_kw:
            out[k] = v
        else:
            raise unknown_key(f"{key}.{k}", list(params) + list(reserved))
    return out


def keyword_parameters(
    defaults: Mapping[str, Any], annotations: Mapping[str, Any] | None = None
) -> list[inspect.Parameter]:
    """Keyword-only parameters for options a factory takes through **kwargs, typed by their
    annotations or else by their defaults (None: any type)."""
    annotations = annotations or {}
    return [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=default,
            annotation=annotations.get(
                name, type(default) if default is not None else inspect.Parameter.empty
            ),
        )
        for name, default in defaults.items()
    ]


def _own_signature(target: Callable) -> inspect.Signature:
    try:
        return inspect.signature(target, eval_str=True)
    except Exception:  # noqa: BLE001 - forward references that do not resolve
        return inspect.signature(target)


def checked(
    target: Callable,
    what: str,
    *,
    hidden: Iterable[str] = (),
    extra: Iterable[inspect.Parameter] = (),
    signature: inspect.Signature | None = None,
) -> Callable:
    """A factory calling `target` whose keyword arguments are checked by name first.

    Its signature (what `inspect.signature` and recipes see) is `signature`, or target's own
    without `self` and the `hidden` parameters, with `extra` keyword-only parameters added (they
    replace a **kwargs they document). An unknown keyword raises ClipxUsageError naming `what`
    (e.g. "defense 'tecoa'") and the closest accepted name."""
    if signature is None:
        hidden = set(hidden) | {"self"}
        extra = list(extra)
        params = [p for p in _own_signature(target).parameters.values() if p.name not in hidden]
        if extra:
            params = [p for p in params if p.kind is not p.VAR_KEYWORD]
            params += [p for p in extra if p.name not in {q.name for q in params}]
        params.sort(key=lambda p: p.kind)  # keyword-only after positional, **kwargs last
        signature = inspect.Signature(params)
    accepted = [
        p.name
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    open_ended = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())

    @functools.wraps(target, assigned=("__module__", "__name__", "__qualname__", "__doc__"))
    def factory(*args: Any, **kwargs: Any) -> Any:
        if not open_ended:
            for key in kwargs:
                if key not in accepted:
                    raise ClipxUsageError(
                        f"{what}: unknown parameter '{key}'{closest(key, accepted)}; "
                        f"accepted: {accepted}"
                    )
        return target(*args, **kwargs)

    factory.__signature__ = signature  # type: ignore[attr-defined]
    factory.checked_as = what  # type: ignore[attr-defined]
    return factory


def plugin_usage_errors(factory: Callable, what: str) -> Callable:
    """`factory` whose ValueError / TypeError (a plugin rejecting a value at construction)
    becomes a one-line ClipxUsageError naming `what` and the parameter(s) the message names,
    or every value given when it names none; ClipxUsageError passes through."""

    @functools.wraps(factory, assigned=("__module__", "__name__", "__qualname__", "__doc__"))
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return factory(*args, **kwargs)
        except (ValueError, TypeError) as exc:
            if isinstance(exc, ClipxUsageError):
                raise
            text = " ".join(str(exc).split()) or type(exc).__name__
            named = [k for k in kwargs if k in text]
            given = ", ".join(
                f"parameter '{k}'" if k in named else f"{k}={kwargs[k]!r}"
                for k in (named or list(kwargs))
            )
            raise ClipxUsageError(f"{what}: {given or 'no parameters'}: {text}") from None

    try:
        guarded.__signature__ = inspect.signature(factory)  # type: ignore[attr-defined]
    except (TypeError, ValueError):  # no signature (some builtins): none to show
        pass
    if is_checked(factory):
        guarded.checked_as = factory.checked_as  # type: ignore[attr-defined]
    return guarded


def is_checked(obj: Any) -> bool:
    """Whether `obj` is a factory made by `checked`."""
    return isinstance(getattr(obj, "checked_as", None), str)
