"""The main job end to end on a reduced size."""

from click.testing import CliRunner

from probekit.cli import cli


def test_demo_runs_end_to_end_on_the_shipped_backbone_and_its_control(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(cli, ["demo", "--out", str(out), "--n-train", "16", "--n-test", "8",
                                   "--timesteps", "100,700", "--layers", "2", "--epochs", "2", "-q"])
    assert res.exit_code == 0, res.output
    assert "RANDOMLY INITIALISED backbone (shapeworld-mmdit-random)" in res.output
    md = (out / "report" / "results.md").read_text()
    # per backbone: seg grid (2 single maps + concat + global + spatial) + saliency and depth (global, spatial)
    assert md.count("| shapeworld-mmdit |") == 9 and md.count("| shapeworld-mmdit-random |") == 9
    board = (out / "report" / "leaderboard.md").read_text()
    assert board.count("| shapeworld-mmdit |") == 4  # single, concat, global, spatial
    page = (out / "report" / "report.html").read_text()
    assert "timestep_contribution" in str(sorted(p.name for p in (out / "report" / "figures").iterdir()))
    assert page.count("<figure>") >= 6
    assert (out / "features" / "shapeworld-mmdit" / "train.h5").is_file()
    assert str(out / "report" / "results.md") in res.output
