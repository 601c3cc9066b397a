"""The main job end to end on a reduced size."""

import json

import pytest
from click.testing import CliRunner

from probekit.cli import cli


@pytest.mark.slow
def test_demo_runs_end_to_end_on_the_shipped_backbone_and_its_control(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(cli, ["demo", "--out", str(out), "--n-train", "16", "--n-test", "8",
                                   "--timesteps", "100,700", "--layers", "2", "--epochs", "2", "-q"])
    assert res.exit_code == 0, res.output
    assert "RANDOMLY INITIALISED backbone (shapeworld-mmdit-random)" in res.output
    md = (out / "report" / "results.md").read_text()
    # backbone: 2 single maps (the best of them again over 3 seeds, same run), single saliency and depth on it,
    # global for 3 tasks, spatial and concat for seg; control: 2 single maps, single saliency, depth, 2 globals
    assert md.count("| shapeworld-mmdit |") == 9 and md.count("| shapeworld-mmdit-random |") == 6
    board = (out / "report" / "leaderboard.md").read_text()
    assert board.count("| shapeworld-mmdit |") == 4  # single, concat, global, spatial
    assert "±" in board  # the seeded rows show their spread
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in board.splitlines() if line.startswith("| ")]
    head, rows = rows[0], rows[1:]
    # Every score has its rank among the rows with its task beside it.
    for task in ("seg", "saliency", "depth"):
        score = next(i for i, c in enumerate(head) if c.startswith(f"{task} ") and c.endswith(("↑", "↓")))
        assert head[score + 1] == f"{task} rank"
        assert all(r[score + 1].isdigit() for r in rows if r[score] != "-") and any(r[score] != "-" for r in rows)
    # Rows with the same tasks are ranked among themselves: the three with every task (single and global of the
    # backbone, single of the control), and concat and spatial (seg only); the control's global alone has no rank.
    ranked = [(r[2], r[3]) for r in rows if r[0].isdigit()]
    assert sorted(ranked) == [("shapeworld-mmdit", "concat"), ("shapeworld-mmdit", "global"),
                              ("shapeworld-mmdit", "single"), ("shapeworld-mmdit", "spatial"),
                              ("shapeworld-mmdit-random", "single")]
    assert "Ranking: " in board
    runs = list((out / "results" / "shapeworld-mmdit").rglob("result.json"))
    seeded = [json.loads(p.read_text()) for p in runs if len(json.loads(p.read_text())["seeds"]) == 3]
    assert {(r["task"], r["probe"]["fusion"]) for r in seeded} == {("seg", "single"), ("seg", "global"),
                                                                   ("saliency", "global")}
    page = (out / "report" / "report.html").read_text()
    assert "timestep_contribution" in str(sorted(p.name for p in (out / "report" / "figures").iterdir()))
    assert page.count("<figure>") >= 6 and "How to read a timestep-contribution heatmap" in page
    assert (out / "features" / "shapeworld-mmdit" / "shapeworld" / "train.h5").is_file()
    assert str(out / "report" / "results.md") in res.output
