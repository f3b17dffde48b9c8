"""Value checks shared by `recipe show`, `recipe run` and `clipx eval`, so every value a run
would reject (or silently misuse) is refused before any work, with a one-line message.

Each check raises ClipxUsageError naming the dotted key; callers pass the key they validate."""

from __future__ import annotations

import math
import os
import re
import string
from typing import Any

from ..errors import ClipxUsageError, closest

SEED_MAX = 2**32 - 1  # numpy's seed range; torch and random accept it too

# names a model label may not take: files and folders the run dir already holds
RESERVED_NAMES = (
    "clip",
    "eval",
    "results.json",
    "results.md",
    "results.csv",
    "recipe.resolved.json",
    "recipe.resolved.toml",
    "versions.json",
    "protocol.json",
    "seed",
    "run.lock",
)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")

# integer parameters that count iterations: an evaluation attack with fewer than one iteration
# reports the clean accuracy as "robust" (torchattacks runs range(steps) without complaint)
ITERATION_KEYS = ("steps", "n_iter", "iterations", "max_iter", "n_restarts", "restarts")
DEVICE_TYPES = ("auto", "cpu", "cuda", "mps")
# NAME_MAX is 255 bytes on Linux, macOS and Windows file systems; 55 are left for suffixes
MAX_NAME_BYTES = 200
# PATH_MAX is 4096: a run dir leaves room for eval/<label>/<protocol>/<dataset>... inside it
MAX_RUN_DIR_BYTES = 4096 - 4 * 256


def check_seed(value: Any, key: str) -> int:
    """An integer in [0, 2**32 - 1] (numpy refuses anything else, after hours of work)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ClipxUsageError(f"{key}: expected an integer seed, got {value!r}")
    if not 0 <= value <= SEED_MAX:
        raise ClipxUsageError(f"{key}: seed {value} is outside [0, {SEED_MAX}]")
    return value


def check_label(value: Any, key: str) -> str:
    """A label names a folder and a column: a plain file name, not one the run dir uses."""
    if not isinstance(value, str) or not _SAFE_NAME.match(value) or value in RESERVED_NAMES:
        raise ClipxUsageError(
            f"{key}: {value!r} must be a simple name (letters, digits, - _ . +; not starting "
            f"with '.' or '-') and not one the run dir uses ({', '.join(RESERVED_NAMES[:6])}, ...)"
        )
    return check_name_length(value, key)


def check_name_length(value: str, key: str) -> str:
    """A name that becomes a file or folder name fits the file system's limit (255 bytes) with
    the suffixes clipx adds (.stale-N, atomic-write temp names): refused here, not as exit 1
    'File name too long' after the work started."""
    size = len(value.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise ClipxUsageError(
            f"{key}: {value[:24]!r}... is {size} bytes long; names that become file names "
            f"must be at most {MAX_NAME_BYTES} bytes"
        )
    return value


def check_path_room(folder: Any, key: str) -> None:
    """The run dir leaves room below the path limit (4096 bytes on Linux) for what clipx writes
    inside it (eval/<label>/<protocol>/<dataset>.partial.rankN.json)."""
    size = len(os.fsencode(os.path.abspath(os.fspath(folder))))
    if size > MAX_RUN_DIR_BYTES:
        raise ClipxUsageError(
            f"{key}: the path is {size} bytes long; at most {MAX_RUN_DIR_BYTES} leaves room for "
            "the files clipx writes inside it (the system limit is 4096)"
        )


def check_device(value: Any, key: str) -> str:
    """auto, cpu, cuda, cuda:N or mps - and available on this machine."""
    if type(value).__module__ == "torch" and type(value).__name__ == "device":
        value = str(value)  # the Python API's torch.device("cuda", 0)
    if not isinstance(value, str):
        raise ClipxUsageError(f"{key}: expected a device name, got {value!r}")
    match = re.fullmatch(r"(auto|cpu|mps|cuda)(?::(\d+))?", value)
    if not match or (match.group(2) is not None and match.group(1) != "cuda"):
        kind = value.split(":", 1)[0]
        raise ClipxUsageError(
            f"{key}: unknown device {value!r}{closest(kind, DEVICE_TYPES)}; "
            "use auto, cpu, cuda, cuda:N or mps"
        )
    import torch

    kind, index = match.group(1), match.group(2)
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ClipxUsageError(
                f"{key}: device {value!r} requested but CUDA is not available here"
            )
        if index is not None and int(index) >= count:
            raise ClipxUsageError(
                f"{key}: device {value!r} requested but this machine has {count} CUDA device(s)"
            )
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ClipxUsageError(f"{key}: device 'mps' requested but MPS is not available here")
    return value


def check_device_params(params: dict[str, Any], key: str) -> None:
    """A factory's own `device` argument (a model's, an attack's) is a device name too: checked
    like --device, so `model.device = "tpu"` fails at `recipe show`, not inside torch."""
    if params.get("device") is not None:
        check_device(params["device"], f"{key}.device")


def check_template(value: Any, key: str) -> str:
    """A prompt template with exactly one empty '{}' field and nothing str.format chokes on."""
    if not isinstance(value, str):
        raise ClipxUsageError(f"{key}: expected a template string, got {value!r}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    except ValueError as exc:
        raise ClipxUsageError(
            f"{key}: template {value!r} is not a valid format string ({exc}); "
            "write literal braces as '{{' and '}}'"
        ) from None
    if fields != [""]:
        raise ClipxUsageError(
            f"{key}: template {value!r} must contain exactly one '{{}}' (the class name) and no "
            f"other fields; found {len(fields)} field(s)"
        )
    try:
        value.format("x")
    except (ValueError, IndexError, KeyError) as exc:
        raise ClipxUsageError(f"{key}: template {value!r} cannot be filled: {exc}") from None
    return value


def check_count(value: Any, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ClipxUsageError(f"{key}: must be an integer >= {minimum}, got {value!r}")
    return value


def check_iterations(params: dict[str, Any], key: str, minimum: int = 1) -> None:
    """Iteration counts (steps, n_iter, restarts...) in a parameter table are >= minimum."""
    for name in ITERATION_KEYS:
        value = params.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            check_count(value, f"{key}.{name}", minimum)


def check_dataset_params(spec: dict[str, Any], key: str) -> None:
    """Generic ranges of dataset arguments every source shares the meaning of."""
    for name in ("n", "image_size"):
        if spec.get(name) is not None:
            check_count(spec[name], f"{key}.{name}")


def check_positive_number(value: Any, key: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ClipxUsageError(f"{key}: must be a positive number, got {value!r}")
    return float(value)
