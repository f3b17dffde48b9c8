"""open_clip's model names with a schema: `hf-hub:ORG/NAME` and `local-dir:PATH`.

clipx resolves them itself (rather than letting open_clip load the weights) so that hub weights go
through the same safe loader and format detection as local checkpoints, the cache path and the
offline switch are read from the environment at call time, and a missing file fails with one line
naming the repo and the cache folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ClipxError, ClipxUsageError

HUB_PREFIX = "hf-hub:"
LOCAL_PREFIX = "local-dir:"
CONFIG_NAME = "open_clip_config.json"
# open_clip's own preference (factory._find_checkpoint_in_dir / pretrained.HF_*_NAME): safetensors first
WEIGHT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
)


@dataclass(frozen=True)
class ModelFolder:
    """An open_clip model folder: `open_clip_config.json` and the weights file beside it."""

    folder: Path
    weights: Path | None
    repo: str | None = None  # the hub repo it came from, if any
    revision: str | None = None  # the cached snapshot (commit) it was read from


def has_schema(name: str | os.PathLike | None) -> bool:
    return isinstance(name, str) and name.startswith((HUB_PREFIX, LOCAL_PREFIX))


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub computes it, read from the environment now
    (huggingface_hub freezes it at import, which would ignore a later HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        raw = os.environ.get("HF_HUB_CACHE") or os.environ["HUGGINGFACE_HUB_CACHE"]
        return Path(os.path.expandvars(raw)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "huggingface",
    )
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def hub_offline() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return any((f or "").strip().upper() in ("1", "ON", "YES", "TRUE") for f in flags)


def repo_cache_path(repo: str) -> Path:
    return hub_cache_dir() / ("models--" + repo.replace("/", "--"))


def _hub_file(repo: str, filename: str) -> Path | None:
    """One file of a hub repo from the cache (or downloaded when online); None if the repo lacks it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        path = hf_hub_download(
            repo, filename, cache_dir=hub_cache_dir(), local_files_only=hub_offline()
        )
    except LocalEntryNotFoundError:  # before its base class EntryNotFoundError
        return None if _cached_snapshot(repo) else _not_cached(repo, filename)
    except EntryNotFoundError:
        return None
    except RepositoryNotFoundError:
        raise ClipxUsageError(
            f"{HUB_PREFIX}{repo}: no such model repository on the Hugging Face hub "
            "(or it is private/gated and no token is set)"
        ) from None
    except Exception as exc:  # network errors, HTTP errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ClipxError(
            f"{HUB_PREFIX}{repo}: cannot fetch {filename} ({type(exc).__name__}: {first}); "
            f"cache: {repo_cache_path(repo)}"
        ) from None
    return Path(path)


def _cached_snapshot(repo: str) -> bool:
    """Whether some snapshot of `repo` is cached (then a missing file is really absent)."""
    snapshots = repo_cache_path(repo) / "snapshots"
    names = (CONFIG_NAME, "adapter_config.json")  # a model folder or an adapter folder
    return snapshots.is_dir() and any((s / n).is_file() for s in snapshots.iterdir() for n in names)


def _not_cached(repo: str, filename: str):
    why = "the hub is offline (HF_HUB_OFFLINE=1)" if hub_offline() else "the hub is unreachable"
    raise ClipxUsageError(
        f"{HUB_PREFIX}{repo}: {filename} is not in the Hugging Face cache "
        f"{repo_cache_path(repo)} and {why}; fetch it once with network access "
        f"(`huggingface-cli download {repo}`) or set HF_HOME / HF_HUB_CACHE to a cache holding it"
    )


def hub_file(repo: str, filename: str) -> Path:
    """A named file of a hub repo (cached or downloaded); one-line error if the repo lacks it."""
    path = _hub_file(repo, filename)
    if path is None:
        raise ClipxUsageError(f"{HUB_PREFIX}{repo}: the repo has no file {filename}")
    return path


def hub_weights(repo: str) -> Path:
    """The weights file of an open_clip hub repo (safetensors preferred, as open_clip does)."""
    for name in WEIGHT_NAMES:
        path = _hub_file(repo, name)
        if path is not None:
            return path
    raise ClipxUsageError(
        f"{HUB_PREFIX}{repo}: no open_clip weights file ({', '.join(WEIGHT_NAMES[:3])}) in the repo "
        f"or in the cache {repo_cache_path(repo)}"
    )


def hub_folder(repo: str) -> ModelFolder:
    """Config and weights of `hf-hub:repo`, from the cache or downloaded into it."""
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ClipxUsageError(f"{HUB_PREFIX}{repo}: expected {HUB_PREFIX}ORG/NAME")
    config = _hub_file(repo, CONFIG_NAME) or _not_cached(repo, CONFIG_NAME)
    weights = hub_weights(repo)
    return ModelFolder(config.parent, weights, repo=repo, revision=config.parent.name)


def local_folder(path: str | os.PathLike) -> ModelFolder:
    """`local-dir:PATH`: a folder as `open_clip.create_model('local-dir:PATH')` reads it."""
    folder = Path(path).expanduser()
    if not (folder / CONFIG_NAME).is_file():
        raise ClipxUsageError(f"{LOCAL_PREFIX}{path}: no {CONFIG_NAME} in that folder")
    weights = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
    if weights is None:
        found = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
        found += sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth"))
        weights = found[0] if len(found) == 1 else None
    return ModelFolder(folder.resolve(), weights)


def model_folder(name: str) -> ModelFolder:
    """The folder behind a schema name (`hf-hub:ORG/NAME` or `local-dir:PATH`)."""
    if name.startswith(HUB_PREFIX):
        return hub_folder(name[len(HUB_PREFIX) :])
    return local_folder(name[len(LOCAL_PREFIX) :])
