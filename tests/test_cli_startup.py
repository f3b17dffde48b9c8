"""`clipx --help` and `clipx recipe list` load every built-in plugin but neither torch nor
open_clip (issue #17 item 6): plugin packages import their heavy modules inside hooks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

BUILTIN_PLUGINS = [
    "clipx_builtin",
    "clipx_baselines",
    "clipx_coattack",
    "clipx_laat",
    "clipx_mmcoa",
    "clipx_saft",
    "clipx_simplex",
]

PROBE = """
import json, sys
from clip_robust_ext.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "open_clip", "torchvision", "textattack") if m in sys.modules)
loaded = sorted(m for m in sys.modules if m.startswith("clipx_") and "." not in m)
print(json.dumps({"heavy": heavy, "plugins": loaded, "code": code}), file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["--help"], "recipe"), (["recipe", "list"], "mmcoa"), (["saft", "--help"], "grid")],
)
def test_cli_listing_commands_load_plugins_without_torch(argv: list[str], expected: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120
    )
    report = json.loads(out.stderr.strip().splitlines()[-1])
    assert report["code"] in (0, None), out.stderr
    assert expected in out.stdout
    assert report["heavy"] == [], f"clipx {' '.join(argv)} imported {report['heavy']}"
    # the plugins were loaded (their commands and recipes are there), only lazily
    assert set(BUILTIN_PLUGINS) <= set(report["plugins"])


def test_plugin_reexports_resolve_on_first_use() -> None:
    import clipx_saft
    import clipx_simplex
    from clipx_saft.defense import SAFT
    from clipx_simplex.expectation import closed_form

    assert clipx_saft.SAFT is SAFT and clipx_simplex.closed_form is closed_form
    assert "SAFT" in vars(clipx_saft)  # cached after the first look-up
    with pytest.raises(AttributeError):
        clipx_saft.not_a_name  # noqa: B018
