#!/usr/bin/env bash
# Install the test extras and run the default (fast) test suite; slow tests: bash scripts/test.sh -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh "[test]"
# Headless Chromium checks that the HTML report renders (the test skips without it).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
        || echo "chromium could not be installed; the report rendering test will skip"
fi
export WANDB_MODE=offline HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
# A worker a core (pytest-xdist); tests marked xdist_group (the DDP/FSDP ones, those reading
# one driver process's runs) stay together on one worker. The 15 slowest are listed last.
python -m pytest -q -n auto --dist loadgroup --durations=15 "$@"
