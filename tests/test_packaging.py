"""What an install brings (pyproject.toml) and where train.py's launch code lives.

The distribution installs the library and the checkout's analysis/ as
`normx_track_analysis` (the checkout keeps `python -m analysis.X`), never the generic
top-level name `analysis`; every package folder is listed; each console script names a
function that exists; the Hugging Face Trainer front end's accelerate comes with the base
install. train.py's launch guards are in normx_launch.py beside it, outside the library
(which never imports Hydra), and a launcher that unpickles them elsewhere (a SLURM job)
needs no checkout on its path. A real `pip install` is not run here: it takes a fresh
virtual environment and a build."""
from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys

import pytest

from conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def installed_as(package: str) -> str:
    """The checkout's module behind an installed name (package-dir mapping)."""
    mapping = pyproject()["tool"]["setuptools"].get("package-dir", {})
    top, _, rest = package.partition(".")
    return ".".join(filter(None, [mapping.get(top, top).replace("/", "."), rest]))


def test_every_package_folder_is_installed_and_no_generic_top_level_name():
    setuptools = pyproject()["tool"]["setuptools"]
    packages = setuptools["packages"]
    folders = sorted(".".join(p.parent.relative_to(ROOT).parts)
                     for p in (ROOT / "normx_track").rglob("__init__.py"))
    listed = sorted(p for p in packages if p.startswith("normx_track.") or p == "normx_track")
    assert listed == folders, ("pyproject.toml [tool.setuptools] packages must list every "
                               f"package folder: missing {sorted(set(folders) - set(listed))}, "
                               f"gone {sorted(set(listed) - set(folders))}")
    assert setuptools["package-dir"] == {"normx_track_analysis": "analysis"}
    assert {p.split(".")[0] for p in packages} == {"normx_track", "normx_track_analysis"}
    assert not list((ROOT / "analysis").glob("*/__init__.py")), "list analysis' subpackages"


@pytest.mark.parametrize("script", ["normx-curves", "normx-report", "normx-replay",
                                    "normx-sweep", "normx-emergence", "normx-gold",
                                    "normx-explain"])
def test_each_console_script_names_a_main(script):
    module, _, function = pyproject()["project"]["scripts"][script].partition(":")
    assert callable(getattr(importlib.import_module(installed_as(module)), function))


def test_the_hf_trainer_front_end_needs_nothing_beyond_the_base_install():
    base = pyproject()["project"]["dependencies"]
    assert any(d.startswith("accelerate") for d in base)


def test_the_library_never_imports_hydra():
    for path in sorted((ROOT / "normx_track").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("hydra", "omegaconf") for n in names), path
    config = (ROOT / "conf" / "config.yaml").read_text(encoding="utf-8")
    assert "_target_: normx_launch.StartGuard" in config


def test_the_launch_code_unpickles_where_the_checkout_is_not_on_the_path(tmp_path):
    """submitit pickles the task function and the Hydra callbacks with cloudpickle; a job
    started in another folder than the checkout still loads them (by value)."""
    cloudpickle = pytest.importorskip("cloudpickle")
    import normx_launch

    blob = tmp_path / "job.pkl"
    blob.write_bytes(cloudpickle.dumps((normx_launch.run_job, normx_launch.StartGuard(),
                                        normx_launch.job_files_dir)))
    code = ("import pickle, sys; run_job, guard, files = pickle.load(open(sys.argv[1], 'rb'));"
            "assert 'normx_launch' not in sys.modules; print(files(None, 'now', sys.argv[2]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code, str(blob), str(tmp_path / "run")],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ".hydra"
