"""utils/malloc.py: the glibc settings are applied by the clipx entry point, and can be turned off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """

from clip_robust_ext.cli import main
try:
    main(["--version"])
except SystemExit:
    pass
from clip_robust_ext.utils import malloc
print(malloc._applied)
"""


def _probe(**env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tuning is Linux-only")
def test_entry_point_tunes_malloc_and_the_switch_turns_it_off():
    assert _probe() == "True"
    assert _probe(CLIPX_MALLOC_TUNING="0") == "False"
