#!/usr/bin/env bash
# Install clipx and its toolchain.
#
# Where: into the active virtualenv or conda env when one is active; otherwise into ./.venv, which
# is created (from python3) and reused. A system Python is never installed into: Debian/Ubuntu
# mark it externally managed (PEP 668) and have no `python` command, only `python3`.
#
# Why a script and not one `pip install`:
# - torchattacks (every release 3.4-3.5.1) pins requests~=2.25.1, which conflicts with the
#   transformers/datasets stack (requests>=2.32) although torchattacks never imports requests;
#   so it is installed with --no-deps and its real imports (torch, numpy, scipy, tqdm) are
#   ordinary dependencies of clip-robust-ext.
# - TextAttack's unconstrained resolve backtracks for > 15 min (flair needs transformers<5, which
#   needs huggingface_hub<1, while open_clip accepts hub 1.x); constraints.txt pins that corner
#   and torch 2.14.1 + torchvision 0.29.1 (the pair that imports together). Resolves in ~3-4 min.
set -euo pipefail
cd "$(dirname "$0")"

first_python() {  # the first of the given commands that exists
    local name
    for name in "$@"; do
        if command -v "$name" >/dev/null 2>&1; then
            command -v "$name"
            return 0
        fi
    done
    echo "install.sh: no Python found (tried: $*); install python3 first" >&2
    exit 1
}

make_venv() {  # ./.venv from the system python3; without ensurepip (no python3-venv), pip.pyz
    local system
    system="$(first_python python3 python)"
    echo "install.sh: no active virtualenv/conda env - creating ./.venv with $system"
    if ! "$system" -m venv .venv >/dev/null 2>&1; then
        rm -rf .venv
        "$system" -m venv --without-pip .venv || {
            echo "install.sh: '$system -m venv' failed; install the venv module (e.g. apt install python3-venv)" >&2
            exit 1
        }
        echo "install.sh: $system has no ensurepip; bootstrapping pip from https://bootstrap.pypa.io/pip/pip.pyz"
        "$PWD/.venv/bin/python" -c "import urllib.request as u; u.urlretrieve('https://bootstrap.pypa.io/pip/pip.pyz', '.venv/pip.pyz')"
        "$PWD/.venv/bin/python" .venv/pip.pyz install --quiet pip
        rm -f .venv/pip.pyz
    fi
}

ACTIVE="${VIRTUAL_ENV:-${CONDA_PREFIX:-}}"
if [[ -n "$ACTIVE" ]]; then
    if [[ -x "$ACTIVE/bin/python" ]]; then PY="$ACTIVE/bin/python"; else PY="$(first_python python python3)"; fi
    echo "install.sh: installing into the active environment $ACTIVE ($PY)"
    CREATED=""
else
    [[ -x .venv/bin/python ]] || make_venv
    PY="$PWD/.venv/bin/python"
    echo "install.sh: installing into ./.venv ($PY)"
    CREATED=1
fi

"$PY" -m pip install -c constraints.txt -e ".[dev]"
"$PY" -m pip install --no-deps "torchattacks==3.5.1"
"$PY" -c "import clip_robust_ext, torchattacks, pyautoattack, open_clip; print('clipx installed')"
# ./activate: what `. ./activate` (the README's first line) needs to put `clipx` on PATH
if [[ -n "$CREATED" ]]; then
    printf '. "%s/.venv/bin/activate"\n' "$PWD" > activate
    echo "install.sh: clipx is in ./.venv - activate it with:  . ./activate"
else
    printf '# clipx is installed in the active environment %s: nothing to activate\n' "$ACTIVE" > activate
fi
