"""Make the example plugin importable for its tests without changing the environment: when it
is not installed, pip installs it (no dependencies, no download) into a temporary folder put on
sys.path, so its entry point and version are found like an installed plugin's; removed after."""

from __future__ import annotations

import importlib
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[1]


def _installed() -> bool:
    try:
        metadata.distribution("clipx-example-plugin")
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="module", autouse=True)
def example_plugin(tmp_path_factory):
    from clip_robust_ext.plugin_manager import reload_plugins

    if _installed():
        yield
        return
    target = tmp_path_factory.mktemp("example-plugin-site")
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
         "--target", str(target), str(PLUGIN)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if pip.returncode != 0:
        pytest.fail(f"installing the example plugin failed:\n{pip.stdout}\n{pip.stderr}")
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    reload_plugins()
    yield
    sys.path.remove(str(target))
    for name in [m for m in sys.modules if m.split(".")[0] == "clipx_example_plugin"]:
        del sys.modules[name]
    importlib.invalidate_caches()
    reload_plugins()
