"""The README's walkthrough (extract -> probe -> leaderboard), at a smaller size: its leaderboard ranks."""

import re

import pytest
from click.testing import CliRunner

from probekit.cli import cli


@pytest.mark.slow
def test_the_walkthroughs_records_rank_in_the_leaderboard(tmp_path):
    runner = CliRunner()
    feats = tmp_path / "feats"
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        res = runner.invoke(cli, ["extract", "--extractor", "shapeworld-mmdit", "--dataset", "shapeworld", "--split",
                                  split, "--timesteps", "50,250", "--layers", "2,4", "--limit", str(n), "--device",
                                  "cpu", "-q", "--out", str(feats / f"{split}.h5")])
        assert res.exit_code == 0, res.output
    files = ["-f", str(feats / "train.h5"), "-V", str(feats / "val.h5"), "-E", str(feats / "test.h5"),
             "--results-root", str(tmp_path / "results"), "--epochs", "1", "--lrs", "0.01", "-q", "--device", "cpu"]
    for probe in (["--task", "seg", "--timestep", "250", "--layer", "4"],  # the README's three probes
                  ["--task", "depth", "--fusion", "spatial", "--head", "dpt"],
                  ["--task", "saliency", "--grid"]):
        res = runner.invoke(cli, ["probe", *files, *probe])
        assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["leaderboard", str(tmp_path / "results")])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {(r[3], r[4]): r for r in ([c.strip() for c in line.strip("|").split("|")]
                                      for line in lines[2:] if line.startswith("| "))}
    assert set(rows) == {("single", "linear"), ("concat", "linear"), ("global", "linear"), ("spatial", "linear"),
                         ("spatial", "dpt")}
    col = {name: head.index(name) for name in head}
    # Every score has its rank among the rows that have its task: none is left unranked.
    for task, metric in (("seg", "seg mIoU ↑"), ("saliency", "saliency maxF ↑"), ("depth", "depth RMSE ↓")):
        scored = [r for r in rows.values() if r[col[metric]] != "-"]
        assert scored and all(re.fullmatch(r"\d+", r[col[f"{task} rank"]]) for r in scored), (task, scored)
        assert sorted(int(r[col[f"{task} rank"]]) for r in scored)[0] == 1
    # The three fused saliency rows share their tasks: ranked among themselves, 1 to 3.
    fused = sorted(rows[(f, "linear")][col["rank"]] for f in ("concat", "global", "spatial"))
    assert fused == ["1", "2", "3"] or len(set(fused)) < 3 and fused[0] == "1"  # (ties share a place)
    table_end = max(i for i, line in enumerate(lines) if line.startswith("| "))
    assert lines[table_end + 2].startswith("Ranking: "), lines[table_end:]  # one line under the table says how
