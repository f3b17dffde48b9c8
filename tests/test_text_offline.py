"""TextAttack is imported lazily and offline: no nltk download, stop words supplied by clipx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from helpers import REPO


def _run(code: str, env: dict[str, str], timeout: int = 240) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _clean_env(tmp_path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TA_CACHE_DIR", "NLTK_DATA", "CLIPX_ASSETS", "HF_HOME", "XDG_CACHE_HOME")
    }
    env.update(
        HOME=str(tmp_path / "home"),
        CLIPX_CACHE=str(tmp_path / "cache"),
        HF_HOME=str(tmp_path / "hf"),
    )
    return env


def test_import_clip_robust_ext_does_not_import_textattack(tmp_path):
    result = _run(
        """
        import json, sys
        import clip_robust_ext
        from clip_robust_ext import names
        attacks = names("attacks")  # loads every plugin, the mmcoa one included
        import clip_robust_ext.attacks.text
        print(json.dumps({"textattack": "textattack" in sys.modules, "nltk": "nltk" in sys.modules,
                          "has_text_attack": "text-attack" in attacks and "multimodal" in attacks}))
        """,
        _clean_env(tmp_path),
    )
    assert result == {"textattack": False, "nltk": False, "has_text_attack": True}
    assert not (tmp_path / "cache" / "textattack").exists()


def test_import_textattack_offline_without_any_nltk_data(tmp_path):
    """No NLTK data anywhere: clipx writes its own stop words; nltk.download is never called;
    TextAttack's cache rewrite of HF_HOME is undone."""
    env = _clean_env(tmp_path)
    result = _run(
        """
        import json, os, nltk, logging
        def no_download(*args, **kwargs):
            raise RuntimeError(f"nltk.download{args} called")
        nltk.download = no_download
        mine = logging.getLogger("clipx.test")
        from clip_robust_ext.attacks.text import import_textattack, stopwords
        ta = import_textattack()
        words = set(nltk.corpus.stopwords.words("english"))
        print(json.dumps({"attack": hasattr(ta, "Attack"), "same_words": words == set(stopwords()),
                          "hf_home": os.environ.get("HF_HOME"), "ta_cache": os.environ.get("TA_CACHE_DIR"),
                          "logger_enabled": not mine.disabled}))
        """,
        env,
    )
    assert result["attack"] and result["same_words"] and result["logger_enabled"]
    assert result["hf_home"] == str(tmp_path / "hf") and result["ta_cache"] is None
    assert (tmp_path / "cache" / "textattack" / "post_install_check_3").is_file()
    assert (tmp_path / "cache" / "nltk_data" / "corpora" / "stopwords" / "english").is_file()
    assert not (tmp_path / "home" / ".cache" / "textattack").exists()
