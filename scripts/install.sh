#!/usr/bin/env bash
# Install into the active Python environment. PyTorch comes first, as a CPU build pinned
# here, so that resolving the project's `torch` range pulls no multi-GB CUDA build; on a
# GPU machine install your CUDA torch first and this step keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".${1:-}"
