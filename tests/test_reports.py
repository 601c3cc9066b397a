"""Reports from generated result records: tables, leaderboard marks and ranks, figures, the HTML page."""

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from probekit.cli import cli
from probekit.datasets.shapeworld import ShapeWorld
from probekit.reports import figures
from probekit.reports.records import load_records
from probekit.reports.report import write_report
from probekit.reports.tables import best_mask, leaderboard, leaderboard_frame
from probekit.results import ResultRecord

TIMESTEPS, LAYERS = [100, 500, 900], ["2", "4"]
REF = ShapeWorld("test").reference()
METRIC = {"seg": ("mIoU", True), "saliency": ("maxF", True), "depth": ("RMSE", False)}


def _record(root, extractor, task, fusion, score, t=None, layer=None, created="2026-01-01T00:00:00+00:00",
            weights=None, subdir=None):
    metric, higher = METRIC[task]
    name = f"linear-{fusion}" + (f"-t{t}-l{layer}" if fusion == "single" else "")
    fw = None
    if weights is not None:
        per_key = {f"t={ts}/layer={la}": weights[i][j] for i, ts in enumerate(TIMESTEPS) for j, la in enumerate(LAYERS)}
        fw = {"kind": "global" if fusion == "global" else "spatial-mean", "per_key": per_key, "timesteps": TIMESTEPS,
              "layers": LAYERS, "matrix": weights}
    rec = ResultRecord(
        task=task, main_score_name=metric, main_score=score, higher_is_better=higher, metrics={metric: score},
        extractor=extractor, dataset="shapeworld",
        probe={"name": name, "fusion": fusion, "head": "linear", "timestep": t, "layer": layer,
               "fusion_weights": fw, "examples": "examples.safetensors"},
        config={"seed": 0, "selected_lr": 0.01, "val_score": score, "task_config": {"classes": REF["classes"],
                                                                 "depth_range": REF["depth_range"]},
                "fusion_level": "predictions" if fusion in ("global", "spatial") else "features"},
        features={"eval": {"split": "test", "num_samples": 8, "provenance": {"dataset": REF}},
                  "train": {"num_samples": 32}},
        provenance={"created": created}, wall_time_s=1.0)
    run = root / (subdir or extractor) / task / name
    rec.write(run)
    return run


def _weights(peak_t):
    w = np.full((3, 2), 0.02)
    w[TIMESTEPS.index(peak_t)] = 0.4
    return (w / w.sum()).tolist()


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    for ex, base in (("good", 0.8), ("weak", 0.3)):
        for i, t in enumerate(TIMESTEPS):
            for layer in LAYERS:
                _record(root, ex, "seg", "single", base - 0.1 * i + (0.01 if layer == "4" else 0), t, layer)
        _record(root, ex, "seg", "global", base + 0.02, weights=_weights(100))
        _record(root, ex, "seg", "spatial", base + 0.05, weights=_weights(100))
        _record(root, ex, "saliency", "global", base, weights=_weights(500))
        _record(root, ex, "depth", "global", 2.0 - base, weights=_weights(900))
    # "weak" has the better depth error: the ranks must disagree across columns.
    _record(root, "weak", "depth", "spatial", 0.5)
    return root


def test_leaderboard_rows_marks_and_ranks(results):
    recset = load_records([results])
    board = leaderboard_frame(recset)
    assert len(board) == 2 * 3  # (extractor, fusion, head): single, global, spatial for each extractor
    seg = "seg mIoU ↑"
    good_single = board[(board.extractor == "good") & (board.fusion == "single")].iloc[0]
    assert good_single[seg] == pytest.approx(0.81) and good_single["seg cell"] == "t=100 L4"
    mark = best_mask(board)
    best_seg = board.loc[mark[seg], ["extractor", "fusion"]].values.tolist()
    assert best_seg == [["good", "spatial"]]
    best_depth = board.loc[mark["depth RMSE ↓"], ["extractor", "fusion"]].values.tolist()
    assert best_depth == [["weak", "spatial"]]  # lower is better
    assert board.iloc[0]["extractor"] == "good" and board.iloc[0]["rank"] == 1
    # Fair ranking: only rows with every task are ranked (here the global rows); the others follow, unranked.
    ranked = board[board["rank"].notna()]
    assert ranked[["extractor", "fusion"]].values.tolist() == [["good", "global"], ["weak", "global"]]
    assert list(ranked["mean rank"]) == sorted(ranked["mean rank"])
    assert board["rank"].isna().sum() == 4 and board["rank"].notna().iloc[:2].all()
    assert "rows are ranked by their mean rank over every task" in board.attrs["rank_rule"]
    md, _ = leaderboard([results], "md")
    assert "**85.00**" in md and "| good | spatial | linear |" in md and "Ranking: a row's cell" in md
    latex, _ = leaderboard([results], "latex")
    assert r"\textbf{85.00}" in latex and r"$\downarrow$" in latex
    csv, _ = leaderboard([results], "csv")
    assert "seg mIoU ↑ best" in csv.splitlines()[0]


def test_a_row_cell_is_chosen_by_validation_never_by_test_score(tmp_path):
    root = tmp_path / "results"
    for t, test, val in ((100, 0.60, 0.50), (500, 0.70, 0.40)):  # t=500 looks better on test only
        run = _record(root, "x", "seg", "single", test, t, "2")
        rec = json.loads((run / "result.json").read_text())
        rec["config"]["val_score"] = val
        rec["per_seed"] = [{"seed": 0, "main_score": test, "val_score": val}]
        (run / "result.json").write_text(json.dumps(rec))
    board = leaderboard_frame(load_records([root]))
    row = board[board.fusion == "single"].iloc[0]
    assert row["seg cell"] == "t=100 L2" and row["seg mIoU ↑"] == pytest.approx(0.60)


def test_the_two_fusion_levels_are_separate_rows_and_older_records_are_the_feature_level(tmp_path):
    root = tmp_path / "results"
    _record(root, "x", "seg", "global", 0.5)  # the linear head's default: prediction level
    for extractor, level, score in (("x", "features", 0.4), ("y", None, 0.3)):  # None: made before the levels
        run = _record(root, extractor, "seg", "global", score, subdir=f"{extractor}-features")
        rec = json.loads((run / "result.json").read_text())
        if level is None:
            del rec["config"]["fusion_level"]
        else:
            rec["config"]["fusion_level"] = level
        rec["probe"]["name"] = "linear-global-features"
        (run / "result.json").write_text(json.dumps(rec))
    board = leaderboard_frame(load_records([root]))
    rows = {(r.extractor, r.fusion): r["seg mIoU ↑"] for _, r in board.iterrows()}
    assert rows == {("x", "global"): pytest.approx(0.5), ("x", "global-features"): pytest.approx(0.4),
                    ("y", "global-features"): pytest.approx(0.3)}


def test_duplicates_are_resolved_newest_first_and_reported(results):
    _record(results, "good", "seg", "spatial", 0.99, created="2027-01-01T00:00:00+00:00", subdir="rerun")
    recset = load_records([results])
    assert len(recset.duplicates) == 1 and "rerun" in recset.duplicates[0][0]
    assert "1 duplicate(s) resolved newest-first" in recset.summary() and "schema v2" in recset.summary()
    board = leaderboard_frame(recset)
    assert board[(board.extractor == "good") & (board.fusion == "spatial")]["seg mIoU ↑"].item() == 0.99


def test_newer_schema_is_refused_with_its_version(results):
    bad = results / "future" / "result.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(Exception, match="schema version 99"):
        load_records([results])


def test_timestep_heatmaps_show_the_learned_weights(results):
    recs = load_records([results]).records
    fig = figures.timestep_task_heatmap(recs, "good")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["segmentation", "saliency", "depth"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["100", "500", "900"]
    assert ax.get_xlabel().startswith("timestep")
    data = ax.images[0].get_array()
    assert np.argmax(data[0]) == 0 and np.argmax(data[1]) == 1 and np.argmax(data[2]) == 2
    np.testing.assert_allclose(data.sum(1), 1.0)
    fig = figures.timestep_layer_heatmaps(recs, "good")
    panels = [a for a in fig.axes if a.get_title()]
    assert len(panels) == 3 and panels[0].get_xlabel() == "layer" and panels[0].images[0].get_array().shape == (3, 2)


def test_metric_vs_timestep_has_a_line_per_layer_and_fused_references(results):
    fig = figures.metric_vs_timestep(load_records([results]).records, "good", "seg")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(labels) == ["global fusion", "layer 2", "layer 4", "spatial fusion"]
    assert list(ax.get_lines()[0].get_xdata()) == TIMESTEPS
    assert ax.get_ylabel().startswith("mIoU (%)")


def test_image_panels_come_from_the_examples_saved_beside_each_record(results):
    ds = ShapeWorld("test")
    samples = [ds[i] for i in range(4)]
    recs = load_records([results]).records
    by_task = {}
    for rec in recs:
        if rec["extractor"] == "good" and rec["probe"]["fusion"] == "global":
            truth = np.stack([getattr(s, rec["task"]) for s in samples])
            save_file({"pred": torch.from_numpy(truth.astype(np.float32)), "truth": torch.from_numpy(truth),
                       "image": torch.from_numpy(np.stack([s.image for s in samples]))},
                      str(results / "good" / rec["task"] / rec["probe"]["name"] / "examples.safetensors"),
                      metadata={"dataset_indices": "0,1,2,3"})
            by_task[rec["task"]] = rec
    fig = figures.qualitative_panels(by_task, n=3)
    assert len(fig.axes) == 3 * 7
    assert [fig.axes[c].get_title() for c in range(7)] == [
        "image", "segmentation\ntruth", "segmentation\nprediction", "saliency\ntruth", "saliency\nprediction",
        "depth\ntruth", "depth\nprediction"]
    # The prediction panel shows what was saved (here: the ground truth itself), the image column the thumbnail.
    np.testing.assert_array_equal(fig.axes[2].images[0].get_array(), ds[0].seg)
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), ds[0].image)
    # A run without saved examples is not drawn from the dataset: the figure says it does not apply.
    (results / "good" / "seg" / "linear-global" / "examples.safetensors").unlink()
    with pytest.raises(FileNotFoundError):
        figures.qualitative_panels(by_task, n=3)


def test_report_writes_tables_figures_and_a_self_contained_page(results, tmp_path):
    res = CliRunner().invoke(cli, ["report", str(results), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "rep"
    page = (out / "report.html").read_text()
    assert page.count("<figure>") >= 6 and "data:image/png;base64," in page and "http" not in page.split("<body>")[1]
    assert 'id="leaderboard"' in page and 'class="sortable"' in page
    for name in ("timestep_contribution_good", "timestep_layer_good", "metric_vs_timestep_seg_good"):
        assert (out / "figures" / f"{name}.png").is_file() and (out / "figures" / f"{name}.pdf").is_file()
    assert (out / "leaderboard.md").read_text().count("| good |") == 3
    res = CliRunner().invoke(cli, ["leaderboard", str(results), "--format", "html"])
    assert res.exit_code == 0 and "<table" in res.output


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_html_page_renders_in_headless_chromium(results, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'); the page was not rendered")
    write_report([results], tmp_path / "rep")
    page = tmp_path / "rep" / "report.html"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert "<table" in dom.stdout and dom.stdout.count("<img") >= 6, dom.stderr[-2000:]
    errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and "Uncaught" in line]
    assert not errors, errors
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
