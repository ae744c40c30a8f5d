"""Slow (a minute of compilation on CPU): `trainer.compile=true` trains the compiled model
while the tracker, the probes and checkpoints see the original one. Run with
`python -m pytest -m slow`."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import TINY, run_train
from test_tracker import assert_rows_close, rows_of


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_compiled_run_records_the_uncompiled_rows_and_resumes_either_way(
        tiny_run: Path, cache_dir: Path, tmp_path: Path):
    compiled = tmp_path / "compiled"
    run_train(cache_dir, *TINY, "logger=none", "trainer.compile=true",
              f"hydra.run.dir={compiled}")
    assert_rows_close(rows_of(compiled), rows_of(tiny_run), rtol=1e-4, atol=1e-6)
    chunked = tmp_path / "compiled_chunked"  # the body compiled, the chunked loss eager
    run_train(cache_dir, *TINY, "logger=none", "trainer.compile=true",
              "trainer.loss_chunk_tokens=40", f"hydra.run.dir={chunked}")
    assert_rows_close(rows_of(chunked), rows_of(tiny_run), rtol=1e-4, atol=1e-6)
    keys = torch.load(compiled / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    plain = torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert keys.keys() == plain.keys() and not any("_orig_mod" in k for k in keys)
    # A compiled checkpoint resumes uncompiled, and an uncompiled one compiled.
    for source, flag in ((compiled, "false"), (tiny_run, "true")):
        out = tmp_path / f"resumed_{flag}"
        run_train(cache_dir, *TINY, "logger=none", f"trainer.compile={flag}",
                  f"ckpt_path={source / 'checkpoints' / 'step_00000004.ckpt'}",
                  f"hydra.run.dir={out}")
        assert_rows_close(rows_of(out)[-1:], rows_of(tiny_run)[-1:], rtol=1e-4, atol=1e-6)
