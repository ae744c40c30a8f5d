#!/usr/bin/env bash
# Install the test extras and run the default (fast) test suite; slow tests: pytest -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh "[test]"
export WANDB_MODE=offline HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
python -m pytest -q "$@"
