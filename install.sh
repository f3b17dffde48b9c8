#!/usr/bin/env bash
# Install clipx and its toolchain into the active Python environment (create a venv first if you
# want one: python3 -m venv .venv && . .venv/bin/activate).
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
python -m pip install -c constraints.txt -e ".[dev]"
python -m pip install --no-deps "torchattacks==3.5.1"
python -c "import clip_robust_ext, torchattacks, pyautoattack, open_clip; print('clipx installed')"
