"""Description sets: per class, several sentences describing it (CuPL / SAFT style).

A set is a JSON object `class name -> list of descriptions` - exactly the format of CuPL's
released files, so a user's own file loads as is. Shipped sets live in `data/*.json`
and are registered as template sets whose value is a dict (see the `register_templates` hook).
Class names are matched exactly (after normalisation), then fuzzily; a class without a match
falls back to the single template and is reported (a warning, and `fallback` in the info)."""

from __future__ import annotations

import difflib
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clip_robust_ext.api import DEFAULT_TEMPLATES, ClipxUsageError

DATA_DIR = Path(__file__).parent / "data"
SHIPPED: dict[str, tuple[str, str]] = {
    "cifar10-descriptions": ("cifar10.json", "CIFAR-10, 12 hand-written descriptions per class"),
    "cifar100-descriptions": ("cifar100.json", "CIFAR-100, 10 hand-written descriptions per class"),
    "shapes-descriptions": ("shapes.json", "procedural shapes, 10+ descriptions per class"),
}
DEFAULT_TEMPLATE = DEFAULT_TEMPLATES[0]
FILTERS = ("name-similarity", "none")

DescriptionSource = str | Path | Mapping[str, Sequence[str]] | None


class DescriptionFallbackWarning(UserWarning):
    """Some classes had no descriptions and use the template instead."""


def normalise_name(name: str) -> str:
    """'Maple_Tree' / 'maple-tree' / ' maple  tree ' -> 'maple tree'."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-]", " ", str(name))).strip().lower()


def validate_descriptions(data: Any, source: str = "descriptions") -> dict[str, list[str]]:
    """A dict class -> non-empty list of strings, or ClipxUsageError naming what is wrong."""
    if not isinstance(data, Mapping) or not data:
        raise ClipxUsageError(f"{source}: expected a JSON object class -> list of descriptions")
    out: dict[str, list[str]] = {}
    for key, value in data.items():
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
            raise ClipxUsageError(f"{source}: class '{key}' must map to a list of strings")
        cleaned = [v.strip() for v in value if v.strip()]
        if cleaned:
            out[str(key)] = cleaned
    if not out:
        raise ClipxUsageError(f"{source}: no class has a non-empty description")
    return out


def load_description_file(path: str | Path) -> dict[str, list[str]]:
    """Read a CuPL-style JSON file (class -> list of sentences)."""
    path = Path(path)
    if not path.is_file():
        raise ClipxUsageError(f"description file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ClipxUsageError(
            f"description file {path} is not valid JSON: {exc.msg} (line {exc.lineno})"
        ) from None
    return validate_descriptions(data, source=str(path))


def shipped_sets() -> dict[str, dict[str, list[str]]]:
    """The description sets shipped with this plugin, by registry name."""
    return {name: load_description_file(DATA_DIR / fname) for name, (fname, _) in SHIPPED.items()}


def resolve_source(source: DescriptionSource) -> tuple[str, dict[str, list[str]]]:
    """A dict, a registered description-set name or a JSON path -> (label, descriptions)."""
    if isinstance(source, Mapping):
        return "inline", validate_descriptions(source)
    if not isinstance(source, (str, Path)):
        raise ClipxUsageError(
            f"descriptions must be a set name, a JSON path or a dict, got {type(source).__name__}"
        )
    text = str(source)
    from clip_robust_ext.api import entries

    registered = entries("templates")
    if text in registered:
        obj = registered[text].obj
        if not isinstance(obj, Mapping):
            raise ClipxUsageError(
                f"'{text}' is a list of templates, not a description set (class -> descriptions)"
            )
        return text, validate_descriptions(obj, source=text)
    if text.endswith(".json") or Path(text).exists():
        return str(Path(text).resolve()), load_description_file(text)
    sets = [n for n, e in registered.items() if isinstance(e.obj, Mapping)]
    from clip_robust_ext.api import unknown_name

    raise unknown_name("description set", text, sets)


def match_classes(classnames: Sequence[str], keys: Sequence[str]) -> dict[str, str | None]:
    """classname -> description key: exact (normalised), then word-subset, then close spelling."""
    norm = {normalise_name(k): k for k in keys}
    out: dict[str, str | None] = {}
    for cls in classnames:
        c = normalise_name(cls)
        if c in norm:
            out[cls] = norm[c]
            continue
        words = set(c.split())
        # 'aquarium fish' <-> 'fish', 'maple' <-> 'maple tree': one side's words within the other's;
        # prefer the key closest in length so 'tree' does not beat 'maple tree'.
        subset = [k for k in norm if (set(k.split()) <= words or words <= set(k.split()))]
        if subset:
            best = min(subset, key=lambda k: (abs(len(k) - len(c)), k))
            out[cls] = norm[best]
            continue
        close = difflib.get_close_matches(c, list(norm), n=1, cutoff=0.8)  # plurals, typos
        out[cls] = norm[close[0]] if close else None
    return out


@dataclass
class ClassDescriptions:
    """K descriptions for every class of a classifier, in class order.

    descriptions[c][k] is the k-th description of class c; W_k (the k-th description of every
    class) is the column [d[c][k] for c]."""

    classnames: list[str]
    descriptions: list[list[str]]
    source: str
    k: int
    filter: str
    template: str
    matched: dict[str, str] = field(default_factory=dict)
    fallback: list[str] = field(default_factory=list)
    padded: list[str] = field(default_factory=list)

    def column(self, k: int) -> list[str]:
        return [d[k] for d in self.descriptions]

    def flat_k_major(self) -> list[list[str]]:
        """K*C single-prompt 'classes', k-major: row k*C + c is description k of class c."""
        return [[d[k]] for k in range(self.k) for d in self.descriptions]

    def ensemble_prompts(self) -> list[list[str]]:
        """Per-class prompt lists: a ZeroShotClassifier over them is the description ensemble."""
        return [list(d) for d in self.descriptions]

    def info(self) -> dict[str, Any]:
        return {
            "descriptions": self.source,
            "k": self.k,
            "filter": self.filter,
            "template": self.template,
            "fallback": list(self.fallback),
            "padded": list(self.padded),
            "matched": {
                c: m for c, m in self.matched.items() if normalise_name(c) != normalise_name(m)
            },
        }


def _check_filter(filter: str) -> str:
    if filter not in FILTERS:
        raise ClipxUsageError(f"description filter must be one of {FILTERS}, got {filter!r}")
    return filter


def build_class_descriptions(
    classnames: Sequence[str],
    source: DescriptionSource,
    k: int = 5,
    filter: str = "name-similarity",
    template: str = DEFAULT_TEMPLATE,
    model: Any = None,
    warn: bool = True,
) -> ClassDescriptions:
    """Pick K descriptions per class from `source` (None or 'template' = the template only, K = 1;
    'auto' = the registered set covering most classes).

    With filter 'name-similarity' the K kept are those whose text embedding is closest to the
    bare class name's (SAFT's hallucination filter; needs `model`, a ZeroShotClassifier).
    A class with fewer than K descriptions cycles through its own (reported as `padded`);
    a class with none uses K copies of the template (reported as `fallback`, with a warning)."""
    _check_filter(filter)
    if "{}" not in template:
        raise ClipxUsageError(f"template must contain '{{}}', got {template!r}")
    classnames = list(classnames)
    if isinstance(source, str) and source == "auto":
        source = auto_source(classnames)
        if source is None:
            if warn:
                warnings.warn(
                    "no registered description set matches these classes; using the template only",
                    DescriptionFallbackWarning,
                    stacklevel=2,
                )
            out = build_class_descriptions(classnames, None, template=template)
            out.fallback = list(classnames)
            return out
    if source is None or (isinstance(source, str) and source == "template"):
        return ClassDescriptions(
            classnames, [[template.format(c)] for c in classnames], "template", 1, "none", template
        )
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ClipxUsageError(f"k (descriptions per class) must be a positive integer, got {k!r}")
    label, data = resolve_source(source)
    matches = match_classes(classnames, list(data))
    if filter == "name-similarity" and model is None:
        raise ClipxUsageError(
            "the 'name-similarity' filter needs a CLIP model to embed the descriptions"
        )
    fallback, padded, matched = [], [], {}
    candidates: dict[str, list[str]] = {}
    for cls in classnames:
        key = matches[cls]
        if key is None:
            fallback.append(cls)
        else:
            matched[cls] = key
            candidates[cls] = list(dict.fromkeys(data[key]))  # de-duplicated, order kept
    if filter == "name-similarity":
        to_rank = {c: d for c, d in candidates.items() if len(d) > k}
        candidates.update(rank_by_name_similarity(model, to_rank, k))
    per_class: list[list[str]] = []
    for cls in classnames:
        if cls not in candidates:
            per_class.append([template.format(cls)] * k)
            continue
        cands = candidates[cls][:k]
        if len(cands) < k:
            padded.append(cls)
            cands = [cands[i % len(cands)] for i in range(k)]
        per_class.append(cands)
    if fallback and warn:
        shown = ", ".join(fallback[:8]) + (" ..." if len(fallback) > 8 else "")
        warnings.warn(
            f"description set '{label}' has no descriptions for {len(fallback)}/{len(classnames)} "
            f"class(es) ({shown}); they use the template {template!r}",
            DescriptionFallbackWarning,
            stacklevel=2,
        )
    return ClassDescriptions(
        classnames, per_class, label, k, filter, template, matched, fallback, padded
    )


def rank_by_name_similarity(
    model: Any, candidates: Mapping[str, Sequence[str]], k: int
) -> dict[str, list[str]]:
    """Per class, the k descriptions whose CLIP text embedding has the highest cosine to the
    bare class name's (best first; ties keep file order). One batched text-tower pass."""
    import torch

    if not candidates:
        return {}
    names = list(candidates)
    flat = [d for c in names for d in candidates[c]]
    with torch.no_grad():
        feats = model.encode_text([normalise_name(c) for c in names] + flat)  # normalised
    name_feats, desc_feats = feats[: len(names)], feats[len(names) :]
    out, start = {}, 0
    for i, cls in enumerate(names):
        descs = list(candidates[cls])
        sims = (desc_feats[start : start + len(descs)] @ name_feats[i]).tolist()
        start += len(descs)
        order = sorted(range(len(descs)), key=lambda j: (-sims[j], j))  # noqa: B023
        out[cls] = [descs[j] for j in order[:k]]
    return out


def refine_by_name_similarity(
    model: Any, classname: str, descriptions: Sequence[str], k: int
) -> list[str]:
    """The k descriptions of one class closest to its bare name (SAFT's hallucination filter)."""
    return rank_by_name_similarity(model, {classname: descriptions}, k)[classname]


def auto_source(classnames: Sequence[str]) -> str | None:
    """The registered description set covering the most of `classnames` (None if none covers any)."""
    from clip_robust_ext.api import entries

    best, best_cov = None, 0
    for name, entry in entries("templates").items():
        if not isinstance(entry.obj, Mapping):
            continue
        cov = sum(m is not None for m in match_classes(classnames, list(entry.obj)).values())
        if cov > best_cov:
            best, best_cov = name, cov
    return best
