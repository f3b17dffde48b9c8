"""install.sh picks the right interpreter on a Debian-style machine (python3 only, externally
managed system Python) and inside an active env. The interpreters here are recording shims, so the
script's own logic runs for real while nothing is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# a fake Python: logs its argv; `-m venv DIR` makes DIR/bin/python (another fake) unless the
# interpreter was created without ensurepip (FAKE_NO_ENSUREPIP) and --without-pip is missing
FAKE_PYTHON = r"""#!/bin/sh
echo "$0 $*" >> "$FAKE_LOG"
if [ "$1" = "-m" ] && [ "$2" = "pip" ] && [ -n "$FAKE_EXTERNALLY_MANAGED" ] && [ "$0" = "$FAKE_SYSTEM" ]; then
    echo "error: externally-managed-environment" >&2; exit 1
fi
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    if [ -n "$FAKE_NO_ENSUREPIP" ] && [ "$3" != "--without-pip" ]; then
        mkdir -p "$3"; echo "ensurepip is not available" >&2; exit 1
    fi
    dir="$3"; [ "$3" = "--without-pip" ] && dir="$4"
    mkdir -p "$dir/bin"; cp "$0" "$dir/bin/python"; chmod +x "$dir/bin/python"
    cp "$0" "$dir/bin/clipx"; abs="$(cd "$dir" && pwd)"
    printf 'VIRTUAL_ENV="%s"; PATH="%s/bin:$PATH"; export VIRTUAL_ENV PATH\n' "$abs" "$abs" > "$dir/bin/activate"
fi
if [ "$1" = "-c" ]; then case "$2" in *urlretrieve*) : > .venv/pip.pyz ;; esac; fi
exit 0
"""


def _fake(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FAKE_PYTHON)
    path.chmod(0o755)
    return path


def _tools(tmp_path: Path) -> Path:
    """The non-Python commands install.sh and the fakes call, and nothing else."""
    tools = tmp_path / "tools"
    if not tools.is_dir():
        tools.mkdir()
        for name in (
            "sh",
            "bash",
            "dirname",
            "mkdir",
            "cp",
            "chmod",
            "rm",
            "cat",
            "awk",
            "sed",
            "tr",
            "grep",
            "paste",
            "printf",
        ):
            (tools / name).symlink_to(shutil.which(name))
    return tools


def _run(
    tmp_path: Path, env_extra: dict[str, str], path_dirs: list[Path], script: str = "install.sh"
):
    checkout = tmp_path / "checkout"
    (checkout / ".ci").mkdir(parents=True, exist_ok=True)
    for name in ("install.sh", "README.md", ".ci/run"):
        shutil.copy(REPO / name, checkout / name)
    log = tmp_path / "log"
    system_bin = tmp_path / "sysbin"
    env = {
        # no /usr/bin: whatever Python this machine has, the script sees only the fakes
        "PATH": os.pathsep.join(str(p) for p in [*path_dirs, system_bin, _tools(tmp_path)]),
        "HOME": str(tmp_path),
        "FAKE_LOG": str(log),
        "FAKE_SYSTEM": str(system_bin / "python3"),
        "FAKE_EXTERNALLY_MANAGED": "1",
        **env_extra,
    }
    proc = subprocess.run(
        ["bash", str(checkout / script)], env=env, capture_output=True, text=True, timeout=60
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return proc, calls, checkout


@pytest.fixture
def system_python3(tmp_path):
    """A Debian-style system: `python3` only (no `python` on PATH), pip refused (PEP 668)."""
    return _fake(tmp_path / "sysbin" / "python3")


def test_no_active_env_creates_and_uses_dot_venv(tmp_path, system_python3):
    proc, calls, checkout = _run(tmp_path, {}, [])
    assert proc.returncode == 0, proc.stderr
    venv_python = checkout / ".venv" / "bin" / "python"
    assert calls[0] == f"{system_python3} -m venv .venv"  # the system Python only makes the venv
    assert all(c.startswith(str(venv_python)) for c in calls[1:])
    assert f"{venv_python} -m pip install -c constraints.txt -e .[dev]" in calls
    assert "creating ./.venv" in proc.stdout and ". ./activate" in proc.stdout
    assert "externally-managed" not in proc.stderr  # pip never ran on the system Python

    again, calls2, _ = _run(tmp_path, {}, [])  # reused, not recreated
    assert again.returncode == 0 and not any("-m venv" in c for c in calls2[len(calls) :])


def test_python3_without_ensurepip_bootstraps_pip(tmp_path, system_python3):
    proc, calls, checkout = _run(tmp_path, {"FAKE_NO_ENSUREPIP": "1"}, [])
    assert proc.returncode == 0, proc.stderr
    venv_python = str(checkout / ".venv" / "bin" / "python")
    assert f"{system_python3} -m venv --without-pip .venv" in calls
    assert f"{venv_python} .venv/pip.pyz install --quiet pip" in calls
    assert f"{venv_python} -m pip install --no-deps torchattacks==3.5.1" in calls
    assert not (checkout / ".venv" / "pip.pyz").exists()


def test_active_venv_is_used_as_is(tmp_path, system_python3):
    env_dir = tmp_path / "myenv"
    env_python = _fake(env_dir / "bin" / "python")
    proc, calls, checkout = _run(tmp_path, {"VIRTUAL_ENV": str(env_dir)}, [env_dir / "bin"])
    assert proc.returncode == 0, proc.stderr
    assert calls and all(c.startswith(str(env_python)) for c in calls)
    assert not (checkout / ".venv").exists()
    assert f"active environment {env_dir}" in proc.stdout
    assert (checkout / "activate").read_text().startswith("# clipx is installed in the active")


def test_active_conda_env_is_used_as_is(tmp_path, system_python3):
    conda = tmp_path / "conda" / "envs" / "x"
    conda_python = _fake(conda / "bin" / "python")
    proc, calls, checkout = _run(tmp_path, {"CONDA_PREFIX": str(conda)}, [conda / "bin"])
    assert proc.returncode == 0, proc.stderr
    assert calls and all(c.startswith(str(conda_python)) for c in calls)
    assert not (checkout / ".venv").exists()


def test_ci_runs_the_readme_lines_with_no_active_environment(tmp_path, system_python3):
    """.ci/run leaves the runner's own venv (unset, off PATH), runs the README's install line
    verbatim (system python3 makes ./.venv, `. ./activate` activates it), then the README's test
    command with the venv's python; a second run reuses ./.venv."""
    runner_env = tmp_path / "runner-venv"
    runner_python = _fake(runner_env / "bin" / "python3")
    _fake(runner_env / "bin" / "python")
    env = {"VIRTUAL_ENV": str(runner_env)}
    proc, calls, checkout = _run(tmp_path, env, [runner_env / "bin"], script=".ci/run")
    assert proc.returncode == 0, proc.stderr
    venv_python = checkout / ".venv" / "bin" / "python"
    assert "ci: ./install.sh && . ./activate" in proc.stdout
    assert calls[0] == f"{system_python3} -m venv .venv"  # not the runner's interpreter
    assert not any(c.startswith(str(runner_python.parent)) for c in calls)
    assert f"{venv_python} -m pip install -c constraints.txt -e .[dev]" in calls
    assert calls[-1] == f"{venv_python} -m pytest -q"  # README's test command, in the new venv
    assert (checkout / "activate").read_text().strip() == f'. "{checkout}/.venv/bin/activate"'

    again, calls2, _ = _run(tmp_path, env, [runner_env / "bin"], script=".ci/run")
    assert again.returncode == 0, again.stderr
    assert not any("-m venv" in c for c in calls2[len(calls) :])
