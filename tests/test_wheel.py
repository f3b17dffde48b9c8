"""A built wheel carries everything clipx reads at run time (recipes, description sets, model
configs) and works installed on its own: no editable install, the checkout not on sys.path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_SUFFIXES = (".tmpl", ".toml", ".json", ".txt")


def _source_tree(dest: Path) -> Path:
    """The checkout's tracked and new (not ignored) files, so stray build output cannot leak in."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to list the source files")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    return dest


def _expected_data() -> set[str]:
    """Wheel paths of every data file the installed package needs."""
    paths = {f"clipx_recipes/{p.name}" for p in (REPO / "recipes").glob("*.toml")}
    for root, prefix in ((REPO / "clip_robust_ext", "clip_robust_ext"), (REPO / "plugins", "")):
        for p in root.rglob("*"):
            if p.suffix in DATA_SUFFIXES and "__pycache__" not in p.parts:
                paths.add(str(Path(prefix) / p.relative_to(root)))
    return paths


@pytest.mark.slow
def test_wheel_has_the_data_and_runs_installed(tmp_path):
    src = _source_tree(tmp_path / "src")
    build = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path)]
        + [str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (wheel,) = tmp_path.glob("clip_robust_ext-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _expected_data()
    assert {"clipx_recipes/mmcoa.toml", "clipx_saft/data/cifar10.json"} <= expected
    assert expected <= names, sorted(expected - names)

    # a fresh venv: its own site-packages first, the current env's dependencies after it (a path
    # line, so the current env's editable-install hooks are not run)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "zz_current_env_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # PYTHONPATH (a dev checkout's metadata, the source tree) would make pip see clip-robust-ext
    # as installed already and skip the wheel
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
        + ["--no-index", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert install.returncode == 0, install.stderr[-2000:]

    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CLIPX_CACHE=str(tmp_path / "cache"))
    clipx = venv / "bin" / "clipx"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(clipx), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )

    where = subprocess.run(
        [str(python), "-c", "import clip_robust_ext, clipx_saft; print(clip_robust_ext.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(site), where.stdout + where.stderr

    listing = run("recipe", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    shipped = {p.stem for p in (REPO / "recipes").glob("*.toml")}
    assert shipped <= set(listing.stdout.split('"')), listing.stdout

    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        '[recipe]\nname = "tiny"\nseed = 0\n[model]\nsource = "open_clip"\narch = "clipx-tiny"\n'
        '[evaluate]\nprotocol = "clean"\nn_samples = 4\ndatasets = ["procedural-shapes"]\n'
    )
    ran = run("recipe", "run", str(recipe), "--run-dir", str(tmp_path / "run"), "--json")
    assert ran.returncode == 0, ran.stderr[-2000:]
    (rec,) = json.loads((tmp_path / "run" / "results.json").read_text())
    assert rec["n"] == 4 and rec["dataset"] == "procedural-shapes"
