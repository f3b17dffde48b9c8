"""Import TextAttack without touching the network.

`import textattack` runs `nltk.download()` six times unless the marker file
`$TA_CACHE_DIR/post_install_check_3` exists (textattack/shared/utils/install.py), and then builds a
`StopwordModification()` at module level, which needs an NLTK stopwords corpus. Offline, the first
hangs or fails and the second raises LookupError. `import_textattack()` prepares both, then imports:

* TA_CACHE_DIR: the user's value if set, else `<clipx cache>/textattack`; the marker file is created
  there (clipx supplies the stop words itself, so TextAttack's downloads are not needed for what
  clipx uses). TextAttack's import also rewrites HF_HOME, XDG_CACHE_HOME, TFHUB_CACHE_DIR and
  PYTORCH_TRANSFORMERS_CACHE from TA_CACHE_DIR; clipx imports transformers first and restores those
  variables afterwards, so a user's Hugging Face cache (and a downloaded bert-base-uncased) is kept.
* NLTK stop words: found where NLTK looks ($NLTK_DATA, ~/nltk_data, <venv>/nltk_data), else in
  $CLIPX_ASSETS/nltk_data, else written from clipx's own list into `<clipx cache>/nltk_data` (a real
  copy: NLTK rejects symlinks that point outside its data root).
* Loggers that existed before the import stay enabled (TextAttack's dictConfig disables them).
* HF_HUB_OFFLINE is never set by clipx: a user with network gets bert-base-uncased downloaded.
  Masked LMs are first looked up with `local_files_only=True` (see compose.load_masked_lm), so an
  offline machine fails at once with a clear message; set HF_HUB_OFFLINE=1 to forbid any hub call.

Nothing here runs at `import clip_robust_ext`: TextAttack is imported only when a text attack is built.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

from ...data.paths import cache_dir
from ...errors import ClipxError, ClipxUsageError
from .config import STOPWORD_LISTS

MARKER = "post_install_check_3"  # textattack 0.3.x: shared/utils/install.py
_TA_REWRITTEN = ("TFHUB_CACHE_DIR", "PYTORCH_TRANSFORMERS_CACHE", "HF_HOME", "XDG_CACHE_HOME")
_STOPWORDS_FILE = Path(__file__).with_name("stopwords_en.txt")
_REFERENCE_STOPWORDS_FILE = Path(__file__).with_name("stopwords_bert_attack.txt")


@cache
def stopwords() -> frozenset[str]:
    """clipx's English stop words (NLTK's 179-word list), lower-case."""
    return frozenset(w.strip() for w in _STOPWORDS_FILE.read_text().split() if w.strip())


def stopword_variants() -> frozenset[str]:
    """Stop words in lower, Capitalised and UPPER case: TextAttack compares words verbatim, so
    'This' in 'This is a photo of a cat' would otherwise be modifiable."""
    words = stopwords()
    return frozenset(words | {w.capitalize() for w in words} | {w.upper() for w in words})


@cache
def reference_stopwords() -> frozenset[str]:
    """The BERT-Attack lineage's list exactly as MMCoA / Co-Attack / SGA hold it (292 entries,
    one per line; case-sensitive; "a the" is one entry)."""
    lines = _REFERENCE_STOPWORDS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line for line in lines if line and not line.startswith("#"))


def stopword_set(which: str = "clipx") -> frozenset[str]:
    """'clipx': NLTK's list in every case (stop words stay stop words when capitalised);
    'reference': the BERT-Attack lineage's case-sensitive list (docs/FIDELITY.md#mmcoa)."""
    if which == "reference":
        return reference_stopwords()
    if which == "clipx":
        return stopword_variants()
    raise ClipxUsageError(f"stopwords must be one of {STOPWORD_LISTS}, got {which!r}")


def _nltk_has(resource: str) -> bool:
    import nltk

    try:
        nltk.data.find(resource)
        return True
    except LookupError:
        return False


def _add_nltk_path(path: Path) -> None:
    import nltk

    if str(path) not in nltk.data.path:
        nltk.data.path.append(str(path))


def _assets_nltk_dir() -> Path | None:
    value = os.environ.get("CLIPX_ASSETS")
    if not value:
        return None
    path = Path(value).expanduser() / "nltk_data"
    return path if path.is_dir() else None


def prepare_nltk() -> None:
    """Make `nltk.corpus.stopwords.words('english')` resolvable without a download."""
    if _nltk_has("corpora/stopwords/english"):
        return
    assets = _assets_nltk_dir()
    if assets is not None:
        _add_nltk_path(assets)
        if _nltk_has("corpora/stopwords/english"):
            return
    root = cache_dir() / "nltk_data"
    target = root / "corpora" / "stopwords" / "english"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text("\n".join(sorted(stopwords())) + "\n")
        os.replace(tmp, target)
    _add_nltk_path(root)
    if not _nltk_has("corpora/stopwords/english"):
        raise ClipxError(f"could not provide NLTK stop words at {root}")


def require_wordnet() -> None:
    """WordNet synonyms need NLTK's WordNet corpus; look in the usual places and $CLIPX_ASSETS."""
    prepare_nltk()
    assets = _assets_nltk_dir()
    if assets is not None:
        _add_nltk_path(assets)
    if not (_nltk_has("corpora/wordnet") or _nltk_has("corpora/wordnet.zip")):
        raise ClipxUsageError(
            "transformation 'wordnet' needs NLTK's WordNet corpus: set NLTK_DATA (or CLIPX_ASSETS) to a "
            "folder holding corpora/wordnet(.zip), or run `python -m nltk.downloader wordnet` once online"
        )


def textattack_cache_dir() -> Path:
    value = os.environ.get("TA_CACHE_DIR")
    return Path(value).expanduser() if value else cache_dir() / "textattack"


def _prepare_marker() -> Path:
    folder = textattack_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).touch(exist_ok=True)
    return folder


def import_textattack() -> ModuleType:
    """`import textattack`, offline-safe and idempotent (see the module docstring)."""
    if "textattack" in sys.modules and hasattr(sys.modules["textattack"], "Attack"):
        return sys.modules["textattack"]
    prepare_nltk()
    folder = _prepare_marker()
    # huggingface_hub / transformers read their cache locations at import: import them under the
    # user's environment before TextAttack rewrites it.
    for name in ("huggingface_hub", "transformers.utils.hub"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    saved = {k: os.environ.get(k) for k in (*_TA_REWRITTEN, "TA_CACHE_DIR")}
    # TextAttack calls logging.config.dictConfig() at import, which disables every logger that
    # already exists (clipx's, torch's ...): remember which were enabled and re-enable them.
    enabled = [
        lg
        for lg in logging.root.manager.loggerDict.values()
        if isinstance(lg, logging.Logger) and not lg.disabled
    ]
    os.environ["TA_CACHE_DIR"] = str(folder)
    try:
        import textattack
    except ImportError as exc:
        raise ClipxError(
            f"TextAttack is not importable ({exc}); install it with `pip install textattack` "
            "(see docs/install.md for the pinned set)"
        ) from exc
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for lg in enabled:
            lg.disabled = False
    return textattack
