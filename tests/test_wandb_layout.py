"""The W&B workspace layout script: offline it skips itself; the view plots normx keys."""
from __future__ import annotations


def test_wandb_layout_skips_itself_offline_and_builds_the_view(monkeypatch, capsys):
    from analysis import wandb_layout

    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_layout.main(["--entity", "me"]) == 0
    assert "offline" in capsys.readouterr().out
    workspace = wandb_layout.build_workspace("me", "normx-track", "normx")
    plotted = {y for section in workspace.sections for panel in section.panels for y in panel.y}
    assert "normx/spearman/information_gain" in plotted and "normx/evidence_ap/normxlogit" in plotted
    assert {panel.x for section in workspace.sections for panel in section.panels} == {
        "trainer/global_step"}
