#!/usr/bin/env bash
# Install the test extras and run the default (fast) test suite; slow tests: pytest -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh "[test]"
# Headless Chromium checks that the HTML report renders (the test skips without it).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
        || echo "chromium could not be installed; the report rendering test will skip"
fi
export WANDB_MODE=offline HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
python -m pytest -q "$@"
