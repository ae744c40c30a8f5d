#!/usr/bin/env bash
# Install, then pre-train the default model on the embedded synthetic corpus (CPU, offline
# unless logged in to W&B). Extra arguments are Hydra overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python train.py "$@"
