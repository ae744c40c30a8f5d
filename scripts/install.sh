#!/usr/bin/env bash
# Install into the active Python environment. PyTorch comes first, from pip, as a CPU build
# pinned here, so that resolving the project's `torch` range pulls no multi-GB CUDA build
# (pip reads the machine's own index and wheel settings; on a GPU machine install your
# CUDA torch first and this step keeps it). The rest goes through uv, which resolves and
# installs the same versions as pip in a tenth of the time (8 s against 90 s on 2 cores);
# where uv cannot be had or fails, through pip. Usage: install.sh ["[test]"]
#
# Then the bytecode of the modules a run imports is written, once: uv writes none (nor pip
# --no-compile, which spares compiling all of torch: 30 s), and where PYTHONDONTWRITEBYTECODE
# is set every process would compile them again (~10 s a process). Only what a run
# imports (all of every package: a minute), two processes at once.
set -euo pipefail
cd "$(dirname "$0")/.."
target=".${1:-}"

compile() {  # compile() MODULES...: import them, writing their bytecode
    PYTHONDONTWRITEBYTECODE= python -c "import $(IFS=,; echo "$*")" \
        || echo "install.sh: compiling $* failed; a run compiles them as it goes" >&2
}

python -c "import torch" 2>/dev/null || python -m pip install --quiet --no-compile "torch==2.13.0"
compile torch 2>/dev/null &  # while uv installs the rest (numpy may not be there yet)
torch_compiled=$!
interpreter="$(python -c 'import sys; print(sys.executable)')"
if ! { python -m pip install --quiet "uv>=0.4" \
        && python -m uv pip install --quiet --python "$interpreter" -e "$target"; }; then
    echo "install.sh: uv did not install the project; installing with pip" >&2
    python -m pip install --quiet --upgrade pip
    python -m pip install --quiet -e "$target"
fi
wait "$torch_compiled"
compile lightning &
compile transformers.models.auto.modeling_auto transformers.models.gpt2.modeling_gpt2 \
    datasets wandb hydra matplotlib.pyplot scipy.stats
wait
python -m compileall -q normx_track analysis normx_launch.py train.py >/dev/null  # the project's own
