"""The documentation site builds offline with `mkdocs build --strict`: a broken link or anchor, or a
public API name without a docstring, fails the build (and so this test)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("material")
pytest.importorskip("mkdocstrings")

from mkdocs.exceptions import PluginError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# every proxy points at a closed port: a page or plugin that reaches for the network fails
OFFLINE = {
    **os.environ,
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "ALL_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "",
    "HF_HUB_OFFLINE": "1",
    "NO_MKDOCS_2_WARNING": "1",
}


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=REPO,
        env=OFFLINE,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs/_gen/hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_site_builds_strict_offline_with_generated_pages(tmp_path):
    proc = _build(REPO / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode == 0, proc.stderr[-3000:]
    api = (tmp_path / "site/api/index.html").read_text()
    for name in ("ZeroShotClassifier", "build_attack", "load_clip", "Protocol", "hookimpl"):
        assert name in api
    board = (tmp_path / "site/leaderboard/index.html").read_text()
    assert "e10ec759e524d902" in board and "9febbf801d636c42" in board  # both committed protocols
    assert (tmp_path / "site/results/index.html").is_file()


@pytest.mark.slow
def test_a_broken_link_fails_the_strict_build(tmp_path):
    """The project's own settings (strict, link and anchor validation), on a page with one bad
    link and one bad anchor: the build fails and names them."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[gone](missing.md) and [here](#nowhere)\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(
        f"INHERIT: {REPO / 'mkdocs.yml'}\ndocs_dir: {docs}\nnav: [index.md]\nhooks: []\n"
        "plugins: [search]\nexclude_docs: ''\n"
    )
    proc = _build(config, tmp_path / "site")
    assert proc.returncode != 0
    assert "missing.md" in proc.stderr and "nowhere" in proc.stderr


def test_an_undocumented_api_name_stops_the_build(monkeypatch):
    import clip_robust_ext.api as api

    def probe_without_docstring():
        return None

    monkeypatch.setattr(api, "probe_without_docstring", probe_without_docstring, raising=False)
    monkeypatch.setattr(api, "__all__", [*api.__all__, "probe_without_docstring"])
    with pytest.raises(PluginError, match="probe_without_docstring"):
        _hooks().api_page()
