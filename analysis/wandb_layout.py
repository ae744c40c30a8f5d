"""Create a W&B workspace view for a project, with the normx panels laid out by question:
do norms track the gold signals, does NormXLogit find the evidence, is it faithful.

    python -m analysis.wandb_layout --entity ME --project normx-track [--name "normx"]

Needs W&B online (logged in) and `pip install wandb-workspaces` (the `wandb` extra).
Offline it says so and exits without error: runs and their records are unaffected.
Every panel plots against `trainer/global_step`, the step metric the training runs define,
so curves of all runs line up.
"""
from __future__ import annotations

import argparse
import os
import sys

from normx_track import keys as K
from normx_track.keys import auroc_key, correlation_key, norm_key

STEP = "trainer/global_step"
SIGNALS = ("self_information", "information_gain", "information_gain_corrected")
METHODS = ("normxlogit", "logat", "norm", "random")
GRADIENT_METHODS = K.CAPTUM_METHODS


def _each(template: str, methods) -> list[str]:
    return [template.format(method=m) for m in methods]


# section title -> [(panel title, metric keys)]
LAYOUT: dict[str, list[tuple[str, list[str]]]] = {
    "normx: norms vs gold importance": [
        ("Spearman", [correlation_key("spearman", s) for s in SIGNALS]),
        ("partial Spearman | log frequency",
         [correlation_key("partial_spearman", s) for s in SIGNALS]),
        ("AUROC content vs function words", [auroc_key()]),
        ("mean norm by frequency decile", [norm_key(f"bucket_{b:02d}/mean") for b in range(10)]),
    ],
    "normx: evidence alignment": [
        ("minimal-pair accuracy", [K.PAIR_ACCURACY, K.BLIMP_ACCURACY]),
        ("evidence AP", _each(K.EVIDENCE_AP, METHODS)),
        ("evidence DP", _each(K.EVIDENCE_DP, METHODS)),
        ("contrastive evidence AP", _each(K.EVIDENCE_AP, K.CONTRASTIVE_METHODS)),
    ],
    "normx: faithfulness": [
        ("comprehensiveness", _each(K.COMPREHENSIVENESS, METHODS)),
        ("sufficiency", _each(K.SUFFICIENCY, METHODS)),
        ("agreement with leave-one-out", _each(K.LOO_SPEARMAN, METHODS)),
        ("gradient baselines: comprehensiveness", _each(K.COMPREHENSIVENESS, GRADIENT_METHODS)),
        ("IG completeness error", [K.IG_COMPLETENESS_ERROR]),
    ],
    "training": [("loss", ["train/loss", "val/loss", "data/unigram_entropy"])],
}


def build_workspace(entity: str, project: str, name: str):
    """The workspace object (no network until `.save()`)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    sections = [ws.Section(name=title, is_open=True, panels=[
        wr.LinePlot(title=panel, x=STEP, y=keys) for panel, keys in panels])
        for title, panels in LAYOUT.items()]
    return ws.Workspace(entity=entity, project=project, name=name, sections=sections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.wandb_layout",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--entity", required=True)
    parser.add_argument("--project", default="normx-track")
    parser.add_argument("--name", default="normx")
    args = parser.parse_args(argv)
    from normx_track.training.loggers import wandb_logged_in  # Lightning: after the arguments

    if os.environ.get("WANDB_MODE") in ("offline", "disabled") or not wandb_logged_in():
        print("wandb_layout: W&B is offline (not logged in, or WANDB_MODE=offline); "
              "nothing to do — run it again when online")
        return 0
    try:
        workspace = build_workspace(args.entity, args.project, args.name)
    except ImportError:
        sys.exit("wandb_layout: needs `pip install wandb-workspaces` (or the [wandb] extra)")
    workspace.save()
    print(f"wandb_layout: saved workspace view {workspace.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
