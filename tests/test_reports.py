"""Reports from generated result records: tables, leaderboard marks and ranks, figures, the HTML page."""

import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from probekit.cli import cli
from probekit.datasets.shapeworld import ShapeWorld
from probekit.reports import figures
from probekit.reports.records import load_records
from probekit.reports.report import grouped_notes, name_runs, write_report
from probekit.reports.tables import (best_mask, leaderboard, leaderboard_frame, mean_ranks, set_ranks, task_ranks,
                                     task_sets)
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
    # Every score has its rank among the rows with that task, beside it.
    ranks = {(r.extractor, r.fusion): (r["seg rank"], r["saliency rank"], r["depth rank"]) for _, r in board.iterrows()}
    nan = pytest.approx(float("nan"), nan_ok=True)
    assert ranks == {("good", "spatial"): (1, nan, nan), ("good", "global"): (2, 1, 2),
                     ("good", "single"): (3, nan, nan), ("weak", "spatial"): (4, nan, 1),
                     ("weak", "global"): (5, 2, 3), ("weak", "single"): (6, nan, nan)}
    assert list(board.columns[5:11]) == [seg, "seg rank", "saliency maxF ↑", "saliency rank", "depth RMSE ↓",
                                         "depth rank"]
    # Rows with the same tasks are ranked among themselves; the row whose tasks no other row has is not.
    order = board[["rank", "extractor", "fusion"]].astype(object).where(board.notna(), None).values.tolist()
    assert order == [[1, "good", "global"], [2, "weak", "global"], [None, "weak", "spatial"],
                     [1, "good", "spatial"], [2, "good", "single"], [3, "weak", "single"]]
    assert "ranks the rows that have that task" in board.attrs["rank_rule"]
    md, _ = leaderboard([results], "md")
    assert "**85.00**" in md and "| good | spatial | linear | **85.00** | 1 |" in md
    assert md.splitlines()[-1].startswith("Ranking: a row's cell")  # one line under the table
    latex, _ = leaderboard([results], "latex")
    assert r"\textbf{85.00}" in latex and r"$\downarrow$" in latex
    csv, _ = leaderboard([results], "csv")
    assert "seg mIoU ↑ best" in csv.splitlines()[0]


def _frame(rows):
    """A leaderboard-like frame from (dataset, seg mIoU, saliency maxF, depth RMSE) rows (None: no score)."""
    return pd.DataFrame([{"dataset": d, "seg mIoU ↑": a, "saliency maxF ↑": b, "depth RMSE ↓": c}
                         for d, a, b, c in rows]).astype({"seg mIoU ↑": float, "saliency maxF ↑": float,
                                                          "depth RMSE ↓": float})


COLS = ["seg mIoU ↑", "saliency maxF ↑", "depth RMSE ↓"]


def test_task_ranks_rank_each_task_among_the_rows_of_a_dataset_that_have_it():
    frame = _frame([("a", 0.5, None, 2.0), ("a", 0.7, None, None), ("a", 0.5, None, 1.0), ("b", 0.1, None, 3.0)])
    ranks = task_ranks(frame, COLS)
    # seg (higher is better): 0.7 first; the two 0.5 tie and share rank 2; dataset b ranks on its own
    assert ranks["seg mIoU ↑"].tolist() == [2, 1, 2, 1]
    # depth (lower is better): 1.0 before 2.0; a row without the task has no rank
    assert ranks["depth RMSE ↓"].tolist()[0] == 2 and ranks["depth RMSE ↓"].tolist()[2] == 1
    assert np.isnan(ranks["depth RMSE ↓"].tolist()[1]) and ranks["depth RMSE ↓"].tolist()[3] == 1
    assert ranks["saliency maxF ↑"].isna().all()


def test_mean_ranks_count_only_the_rows_with_the_same_tasks():
    # A, B, D have seg and saliency; C has seg only, with a seg score between D's and B's.
    frame = _frame([("x", 0.8, 0.6, None), ("x", 0.6, 0.7, None), ("x", 0.65, None, None), ("x", 0.7, 0.5, None)])
    sets = task_sets(frame, COLS)
    assert sets.tolist() == [("seg mIoU ↑", "saliency maxF ↑")] * 2 + [("seg mIoU ↑",)] + [
        ("seg mIoU ↑", "saliency maxF ↑")]
    mean = mean_ranks(frame, sets)
    # Among A, B, D: seg ranks A 1, D 2, B 3; saliency ranks B 1, A 2, D 3. C, counted, would tie B with D.
    assert mean.tolist()[:2] == [1.5, 2.0] and mean.tolist()[3] == 2.5 and np.isnan(mean.tolist()[2])
    assert set_ranks(frame, mean, sets).astype(object).where(mean.notna(), None).tolist() == [1, 2, None, 3]


def test_tied_scores_share_the_average_rank_in_the_mean_and_the_best_place():
    frame = _frame([("x", 0.5, 0.5, None), ("x", 0.5, 0.5, None), ("x", 0.4, 0.6, None)])
    mean = mean_ranks(frame, task_sets(frame, COLS))
    # seg: the two 0.5 share ranks 1 and 2 (1.5 each), 0.4 is 3; saliency: 0.6 is 1, the two 0.5 share 2.5
    assert mean.tolist() == [2.0, 2.0, 2.0]
    assert set_ranks(frame, mean, task_sets(frame, COLS)).tolist() == [1, 1, 1]


def test_a_lone_value_in_a_column_is_not_marked_best():
    frame = _frame([("x", 0.5, None, 2.0), ("x", 0.7, None, None), ("y", 0.2, 0.3, None)])
    mark = best_mask(frame)
    assert mark["seg mIoU ↑"].tolist() == [False, True, False]  # y's lone seg score beats nothing
    assert not mark["depth RMSE ↓"].any() and not mark["saliency maxF ↑"].any()


def test_a_probe_that_learned_nothing_is_marked_in_the_leaderboard(results):
    run = results / "weak" / "depth" / "linear-spatial"
    rec = json.loads((run / "result.json").read_text())
    rec["trivial"] = {"predicts": "every pixel at the training split's mean depth (5 m)", "val_score": 0.4,
                      "learned_nothing": True}
    (run / "result.json").write_text(json.dumps(rec))
    board = leaderboard_frame(load_records([results]))
    assert board["depth RMSE ↓ learned nothing"].tolist().count(True) == 1
    md, _ = leaderboard([results], "md")
    assert "| **0.500 †** | 1 |" in md
    assert md.splitlines()[-1].startswith("† learned nothing: the probe's validation")
    assert "$^\\dagger$" in leaderboard([results], "latex")[0]
    assert 'class="best trivial" title="† learned nothing' in leaderboard([results], "html")[0]


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
    # Each row names the probe whose weights it shows (global fusion, preferred over spatial, for every task).
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "segmentation\nlinear-global, 1 seed", "saliency\nlinear-global, 1 seed", "depth\nlinear-global, 1 seed"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["100", "500", "900"]
    assert ax.get_xlabel().startswith("timestep")
    data = ax.images[0].get_array()
    assert np.argmax(data[0]) == 0 and np.argmax(data[1]) == 1 and np.argmax(data[2]) == 2
    np.testing.assert_allclose(data.sum(1), 1.0)
    fig = figures.timestep_layer_heatmaps(recs, "good")
    panels = [a for a in fig.axes if a.get_title()]
    assert len(panels) == 3 and panels[0].get_xlabel() == "layer" and panels[0].images[0].get_array().shape == (3, 2)
    assert panels[0].get_title() == "segmentation\nlinear-global"


def test_a_heatmap_names_the_run_it_shows_when_the_tasks_come_from_different_fusions(results):
    (results / "good" / "depth" / "linear-global" / "result.json").unlink()  # depth: spatial fusion only
    _record(results, "good", "depth", "spatial", 0.6, weights=_weights(900))
    recs = load_records([results]).records
    labels = [t.get_text() for t in figures.timestep_task_heatmap(recs, "good").axes[0].get_yticklabels()]
    assert labels[0] == "segmentation\nlinear-global, 1 seed" and labels[2] == "depth\nlinear-spatial, 1 seed"


def test_metric_vs_timestep_has_a_line_per_layer_and_fused_references(results):
    fig = figures.metric_vs_timestep(load_records([results]).records, "good", "seg")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(labels) == ["layer 2", "layer 4"]
    assert list(ax.get_lines()[0].get_xdata()) == TIMESTEPS
    assert ax.get_ylabel().startswith("mIoU (%)")
    # the fused probes: a line each, labelled at the right with its name and score
    assert sorted(t.get_text() for t in ax.texts) == ["linear-global 82.00", "linear-spatial 85.00"]


def test_labels_of_reference_lines_that_coincide_stay_apart(results):
    _record(results, "good", "seg", "concat", 0.851)  # a third line within 0.1 points of spatial's 85.00
    fig = figures.metric_vs_timestep(load_records([results]).records, "good", "seg")
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    places = sorted(t.xyann[1] for t in ax.texts)
    assert len(places) == 3 and min(np.diff(places)) >= 0.06 * (hi - lo)  # a 6 pt label is 5% of the axis
    assert lo <= places[0] and places[-1] <= hi  # and inside the axis


def test_spread_moves_only_labels_that_would_overlap():
    # 10 and 10.5 overlap at gap 2: centred on their mean, 2 apart; 20 stays where it is.
    np.testing.assert_allclose(figures.spread([10.5, 20.0, 10.0], 2.0), [11.25, 20.0, 9.25])
    np.testing.assert_allclose(figures.spread([1.0, 5.0], 2.0), [1.0, 5.0])
    # three at one value: 2 apart, centred on it, in their given order
    np.testing.assert_allclose(figures.spread([3.0, 3.0, 3.0], 1.0), [2.0, 3.0, 4.0])
    # a cluster that grows into the next one merges with it: 0, 0 -> -1, 1 overlaps 1.5 -> three centred on 0.5
    np.testing.assert_allclose(figures.spread([0.0, 0.0, 1.5], 2.0), [-1.5, 0.5, 2.5])


def test_a_curve_over_one_timestep_is_not_drawn_and_the_report_says_why(tmp_path):
    root = tmp_path / "results"
    _record(root, "one", "seg", "single", 0.4, 250, "4")
    _record(root, "one", "seg", "single", 0.5, 250, "2")
    with pytest.raises(figures.NotDrawn, match=r"segmentation vs timestep for one: .* one timestep \(t=250\)"):
        figures.metric_vs_timestep(load_records([root]).records, "one", "seg")
    written = write_report([root], tmp_path / "rep")
    assert not any("metric_vs_timestep" in p.name for p in written["figures"])
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "Not drawn: segmentation vs timestep for one: its single-map probes are at one timestep (t=250)" in page


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


LR_NOTE = ("the chosen learning rate 0.1 is the highest of the grid [0.01, 0.1]; the best rate may lie beyond it "
           "(widen --lrs)")
RANDOM_NOTE = "RANDOMLY INITIALISED backbone (weak): features of an untrained network, a control only"


def _add_notes(results):
    """The lr note on every run of "good" but its spatial one, and on weak's global seg; a feature note on
    every run of "weak"."""
    for run in sorted(results.rglob("result.json")):
        rec = json.loads(run.read_text())
        name, notes = rec["probe"]["name"], []
        if rec["extractor"] == "weak":
            notes.append(RANDOM_NOTE)
        if (rec["extractor"] == "good" and name != "linear-spatial") or (
                rec["extractor"] == "weak" and rec["task"] == "seg" and name == "linear-global"):
            notes.append(f"{name}: {LR_NOTE}")
        rec["notes"] = notes
        run.write_text(json.dumps(rec))


def test_identical_notes_are_grouped_with_the_runs_they_concern(results):
    _add_notes(results)
    recs = load_records([results]).records
    groups = dict(grouped_notes(recs))
    assert sorted(groups) == sorted([LR_NOTE, RANDOM_NOTE])  # each distinct note once, the probe's name taken off
    assert len(groups[LR_NOTE]) == 9 + 1 and len(groups[RANDOM_NOTE]) == 11
    text = name_runs(groups[LR_NOTE], recs)
    # 9 of good's 10 runs are named one by one; weak's one run too
    assert text.count("good ") == 9 and "good seg linear-spatial" not in text and text.endswith(
        "weak seg linear-global")
    assert name_runs(groups[RANDOM_NOTE], recs) == "every run of weak (11)"


def test_the_report_shows_each_distinct_note_once(results, tmp_path):
    _add_notes(results)
    write_report([results], tmp_path / "rep")
    page = (tmp_path / "rep" / "report.html").read_text()
    assert page.count('<li class="note">') == 2 and page.count(LR_NOTE) == 1
    assert "every run of weak (11)" in page


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


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _browser():
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'); the page was not rendered")
    return browser


def _dom(browser, page, tmp_path) -> subprocess.CompletedProcess:
    """The page as headless Chromium built it (scripts run), and the browser's log."""
    flags = CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([browser, *flags, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)


def test_html_page_renders_in_headless_chromium(results, tmp_path):
    browser = _browser()
    write_report([results], tmp_path / "rep")
    page = tmp_path / "rep" / "report.html"
    dom = _dom(browser, page, tmp_path)
    assert "<table" in dom.stdout and dom.stdout.count("<img") >= 6, dom.stderr[-2000:]
    errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and "Uncaught" in line]
    assert not errors, errors
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1200,1600", page.as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_the_rendered_report_groups_notes_and_says_why_a_one_timestep_curve_is_missing(results, tmp_path):
    """As a reader's browser shows it: one line per distinct note naming its runs (not one box per run and
    note), and a sentence instead of a plot of one point for an extractor probed at one timestep."""
    browser = _browser()
    _add_notes(results)
    _record(results, "one-step", "seg", "single", 0.4, 250, "4")
    written = write_report([results], tmp_path / "rep")
    dom = _dom(browser, written["html"], tmp_path).stdout
    notes = re.findall(r'<li class="note">(.*?)</li>', dom, flags=re.S)
    assert len(notes) == 2, notes
    assert sum(LR_NOTE in n for n in notes) == 1 and any("every run of weak (11)" in n for n in notes)
    assert "Not drawn: segmentation vs timestep for one-step: its single-map probes are at one timestep (t=250)" in dom
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", dom)
    assert not any("one-step" in c and "vs timestep" in c for c in captions)
    assert any("good" in c and "vs timestep" in c for c in captions)  # curves over several timesteps are drawn
