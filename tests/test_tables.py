"""The leaderboard's output formats and the table of runs, exactly, on two small rows (the ranking itself is
tested in tests/test_reports.py).

What could break: a LaTeX table that does not compile or escapes nothing (an extractor named ``a_b`` or
``c&d%#``), a column layout that no longer matches the columns, a best mark on the wrong cell, a CSV that loses
the marks or gains an index column, defaults of ``leaderboard`` that change what a bare call prints, and a table
of runs that reads the wrong fields of a record.
"""

import io
import json
from html import escape

import pandas as pd
import pytest

from probekit.errors import ProbekitError
from probekit.reports.records import load_records
from probekit.reports.tables import (FLAG_RULE, RANK_RULE, _chooses, leaderboard, leaderboard_frame, mean_ranks,
                                     runs_frame, selection_score, task_sets, to_html_table, to_markdown)
from probekit.results import ResultRecord

HEADER = ["rank", "dataset", "extractor", "fusion", "head", "seg mIoU ↑", "seg rank", "depth RMSE ↓", "depth rank",
          "seg cell", "depth cell", "mean rank"]


def _record(root, extractor, task, score, std=None, folder=None, metric=None, probe=None, config=None, **fields):
    metric, higher = metric or {"seg": ("mIoU", True), "saliency": ("maxF", True), "depth": ("RMSE", False)}[task]
    record = dict(task=task, main_score_name=metric, main_score=score, main_score_std=std, higher_is_better=higher,
                  metrics={metric: score}, extractor=extractor, dataset="ds", seeds=[0, 1] if std else [0],
                  probe={"name": "linear-global", "fusion": "global", "head": "linear", "timestep": None,
                         "layer": None, **(probe or {})},
                  config={"val_score": score, "fusion_level": "predictions", **(config or {})},
                  features={"eval": {"split": "test", "num_samples": 8}, "train": {"num_samples": 32}},
                  provenance={"created": "2026-01-01T00:00:00+00:00"}, wall_time_s=1.0)
    ResultRecord(**{**record, **fields}).write(root / folder / task)


@pytest.fixture
def results(tmp_path):
    """Two rows: a_b wins seg (0.50 ± 0.01 over 0.25), c&d%# wins depth (1.25 m over 1.50 m)."""
    root = tmp_path / "results"
    _record(root, "a_b", "seg", 0.5, std=0.01, folder="ab")
    _record(root, "c&d%#", "seg", 0.25, folder="cd")
    _record(root, "a_b", "depth", 1.5, folder="ab")
    _record(root, "c&d%#", "depth", 1.25, folder="cd")
    return root


def test_latex_is_a_complete_escaped_tabular_with_the_best_cells_bold(results):
    latex, _ = leaderboard([results], "latex")
    assert latex.splitlines() == [
        r"\begin{tabular}{lllllrrrrrrr}",  # five text columns, then one right-aligned column per other column
        r"\toprule",
        r"rank & dataset & extractor & fusion & head & seg mIoU $\uparrow$ & seg rank & depth RMSE $\downarrow$ & "
        r"depth rank & seg cell & depth cell & mean rank \\",
        r"\midrule",
        r"1 & ds & a\_b & global & linear & \textbf{50.00 $\pm$ 1.00} & 1 & 1.500 & 2 & global & global & 1.500 \\",
        r"1 & ds & c\&d\%\# & global & linear & 25.00 & 2 & \textbf{1.250} & 1 & global & global & 1.500 \\",
        r"\bottomrule",
        r"\end{tabular}",
        f"% Ranking: {RANK_RULE}.",
    ]
    assert latex.endswith("\n")


def test_csv_keeps_every_column_and_the_best_marks_without_an_index(results):
    csv, _ = leaderboard([results], "csv")
    table = pd.read_csv(io.StringIO(csv), keep_default_na=False)
    assert csv.splitlines()[1].startswith("1,ds,a_b,global,linear,0.5,1.0,")  # the row's place: an integer
    assert list(table.columns[:12]) == HEADER  # no unnamed index column in front
    assert table["extractor"].tolist() == ["a_b", "c&d%#"]
    assert table["seg mIoU ↑ best"].tolist() == [True, False] and table["depth RMSE ↓ best"].tolist() == [False, True]
    assert table["seg mIoU ↑"].tolist() == [0.5, 0.25] and table["seg mIoU ↑ std"].tolist() == ["0.01", ""]
    assert [c for c in table.columns if c.endswith(" best")] == ["seg mIoU ↑ best", "depth RMSE ↓ best"]


def test_markdown_is_the_default_and_html_names_its_table(results):
    md, recset = leaderboard([results])
    assert md.splitlines()[0] == "| " + " | ".join(HEADER) + " |"
    assert md.splitlines()[1] == "|" + "|".join(["---"] * 12) + "|" and len(md.splitlines()) == 6
    assert "\n| 1 | ds | c&d%# |" in md and md.endswith(" |\n\nRanking: " + RANK_RULE + ".\n")
    assert md.splitlines()[2] == "| 1 | ds | a_b | global | linear | **50.00 ± 1.00** | 1 | 1.500 | 2 | global | global " \
                                 "| 1.500 |"
    assert md.endswith(f"\nRanking: {RANK_RULE}.\n") and len(recset.records) == 4
    assert "seg pixel_acc" not in md  # secondary metrics only when asked
    html, _ = leaderboard([results], "html")
    assert html.startswith('<table class="sortable" id="leaderboard"><thead><tr><th data-col="0">rank</th>')
    assert '<td data-sort="c&amp;d%#">c&amp;d%#</td>' in html
    assert '<td data-sort="1.25" class="best"><strong>1.250</strong></td>' in html
    assert '<th data-col="11">mean rank</th></tr></thead><tbody><tr><td data-sort="1">1</td>' in html
    assert html.count("<tr>") == 3 and html.count("</tr>") == 3 and "</td></tr><tr><td" in html
    assert "</td></tr></tbody></table>" in html
    assert to_html_table(leaderboard_frame(recset)).startswith('<table class="sortable" id="table">')
    assert html.endswith(f"</tbody></table><p>{escape(f'Ranking: {RANK_RULE}.')}</p>")  # the footer, escaped
    with pytest.raises(ValueError, match="unknown format 'tex'"):
        leaderboard([results], "tex")


def test_a_damaged_record_stops_the_leaderboard_unless_skipped(results):
    (results / "broken").mkdir()
    (results / "broken" / "result.json").write_text('{"schema_version": 2, "task":')
    with pytest.raises(ProbekitError, match="broken/result.json is not valid JSON"):
        leaderboard([results])
    md, recset = leaderboard([results], skip_invalid=True)
    assert len(recset.records) == 4 and "a_b" in md


def test_secondary_metrics_are_added_when_asked(results):
    for folder, task in (("ab", "seg"), ("cd", "seg")):
        path = results / folder / task / "result.json"
        rec = json.loads(path.read_text())
        rec["metrics"]["pixel_acc"] = 0.9 if folder == "ab" else 0.8
        path.write_text(json.dumps(rec))
    md, _ = leaderboard([results], secondary=True)
    assert "seg pixel_acc ↑" in md.splitlines()[0] and "**90.00**" in md


def test_the_table_of_runs_reads_each_records_fields_best_first_per_task(results):
    runs = runs_frame(load_records([results]))
    rows = runs.drop(columns=["run"]).astype(object).where(runs.drop(columns=["run"]).notna(), None)
    assert rows.to_dict("records") == [
        {"extractor": "c&d%#", "dataset": "ds", "task": "depth", "fusion": "global", "head": "linear",
         "timestep": None, "layer": None, "metric": "RMSE", "score": 1.25, "score_std": None, "unit": "m",
         "eval_split": "test", "n_train": 32, "n_eval": 8, "seeds": "0", "learned nothing": ""},
        {"extractor": "a_b", "dataset": "ds", "task": "depth", "fusion": "global", "head": "linear",
         "timestep": None, "layer": None, "metric": "RMSE", "score": 1.5, "score_std": None, "unit": "m",
         "eval_split": "test", "n_train": 32, "n_eval": 8, "seeds": "0", "learned nothing": ""},
        {"extractor": "a_b", "dataset": "ds", "task": "seg", "fusion": "global", "head": "linear",
         "timestep": None, "layer": None, "metric": "mIoU", "score": 0.5, "score_std": 0.01, "unit": "fraction",
         "eval_split": "test", "n_train": 32, "n_eval": 8, "seeds": "0,1", "learned nothing": ""},
        {"extractor": "c&d%#", "dataset": "ds", "task": "seg", "fusion": "global", "head": "linear",
         "timestep": None, "layer": None, "metric": "mIoU", "score": 0.25, "score_std": None, "unit": "fraction",
         "eval_split": "test", "n_train": 32, "n_eval": 8, "seeds": "0", "learned nothing": ""},
    ]
    assert runs["run"].tolist() == [str(results / f / t) for f, t in (("cd", "depth"), ("ab", "depth"),
                                                                      ("ab", "seg"), ("cd", "seg"))]


# -- what the first mutation run of reports/tables.py found unchecked (docs/mutation.md) ----------------------
def test_a_row_missing_a_task_shows_dashes_and_a_single_map_without_timestep_its_layer(results):
    # An encoder's single map (no timestep), evaluated only (no training features, as a zero-shot record), seg only
    _record(results, "enc", "seg", 0.4, folder="enc", probe={"fusion": "single", "timestep": None, "layer": 5},
            features={"eval": {"split": "test", "num_samples": 8}})
    recset = load_records([results])
    md = to_markdown(leaderboard_frame(recset))
    assert "| - | ds | enc | single | linear | 40.00 | 2 | - | - | L5 | - | - |" in md
    html = to_html_table(leaderboard_frame(recset))
    assert '<td data-sort="">-</td>' in html
    runs = runs_frame(recset)
    enc = runs[runs.extractor == "enc"].iloc[0]
    assert enc["layer"] == 5 and pd.isna(enc["n_train"]) and enc["n_eval"] == 8
    assert "| enc | ds | seg | single | linear | - | 5 | mIoU | 40.00 | test | - | 8 | 0 |  |" in to_markdown(runs)


def test_the_table_of_runs_shows_scores_by_unit_and_hides_run_unit_and_spread(results):
    _record(results, "dit", "seg", 0.3, folder="dit", probe={"fusion": "single", "timestep": 250, "layer": 2},
            trivial={"learned_nothing": True, "val_score": 0.3})
    runs = runs_frame(load_records([results]))
    md = to_markdown(runs).splitlines()
    assert md[0] == ("| extractor | dataset | task | fusion | head | timestep | layer | metric | score | eval_split | "
                     "n_train | n_eval | seeds | learned nothing |")
    assert "| a_b | ds | seg | global | linear | - | - | mIoU | 50.00 ± 1.00 | test | 32 | 8 | 0,1 |  |" in md
    assert "| c&d%# | ds | depth | global | linear | - | - | RMSE | 1.250 | test | 32 | 8 | 0 |  |" in md
    assert "| dit | ds | seg | single | linear | 250 | 2 | mIoU | 30.00 | test | 32 | 8 | 0 | yes |" in md


def test_a_records_own_metric_direction_and_unit_are_used(tmp_path):
    """A metric probekit does not know, lower is better, in metres: the record says so and every table obeys."""
    root = tmp_path / "results"
    info = {"edge error": {"higher_is_better": False, "unit": "m"},
            "pixel_acc": {"higher_is_better": False, "unit": "ratio"}}
    for t, score, val in ((100, 0.2, 0.5), (500, 0.1, 0.3)):  # two cells of one row: the lower val wins
        _record(root, "x", "seg", score, folder=f"x{t}", metric=("edge error", False), metrics_info=info,
                config={"val_score": val}, metrics={"edge error": score, "pixel_acc": 0.25},
                metrics_std={"pixel_acc": 0.125},
                probe={"name": f"linear-single-t{t}", "fusion": "single", "timestep": t, "layer": 1})
    _record(root, "y", "seg", 0.15, folder="y", metric=("edge error", False), metrics_info=info,
            probe={"name": "linear-single-t100", "fusion": "single", "timestep": 100, "layer": 1})
    board = leaderboard_frame(load_records([root]))
    assert "seg edge error ↓" in board.columns
    assert board.set_index("extractor")["seg edge error ↓"].to_dict() == {"x": 0.1, "y": 0.15}
    md, _ = leaderboard([root], secondary=True)
    assert "| **0.100** |" in md  # in metres, lower best
    assert "seg pixel_acc ↓" in md.splitlines()[0] and "| 0.250 ± 0.125 |" in md  # the record's unit and spread
    runs = runs_frame(load_records([root]))
    assert runs["score"].tolist() == [0.1, 0.15, 0.2] and runs["unit"].tolist() == ["m"] * 3  # lower first


def test_secondary_columns_follow_their_tasks_main_score_and_rank(tmp_path):
    root = tmp_path / "results"
    for name, base in (("a", 1.0), ("b", 2.0)):
        _record(root, name, "depth", base, folder=name,
                metrics={"RMSE": base, "AbsRel": 0.1, "delta1": 0.9, "RMSE_aligned": 0.5})
        _record(root, name, "saliency", 0.5 / base, folder=name,
                metrics={"maxF": 0.5 / base, "MAE": 0.1, "Sm": 0.7, "maxE": 0.8})
    board = leaderboard_frame(load_records([root]), secondary=True)
    assert list(board.columns[5:15]) == ["saliency maxF ↑", "saliency rank", "saliency MAE ↓", "saliency Sm ↑",
                                         "saliency maxE ↑", "depth RMSE ↓", "depth rank", "depth AbsRel ↓",
                                         "depth RMSE_aligned ↓", "depth delta1 ↑"]
    assert board["rank"].tolist() == [1, 2] and board["rank"].dtype == "Int64"


def test_rows_of_the_same_tasks_stay_together_in_task_order(tmp_path):
    root = tmp_path / "results"
    # Loaded in folder order: p (seg+depth) q (seg+saliency) r (seg+depth) s (seg+saliency)
    for name, second, score in (("p", "depth", 1.0), ("q", "saliency", 0.9), ("r", "depth", 2.0),
                                ("s", "saliency", 0.5)):
        _record(root, name, "seg", 0.5, folder=name)
        _record(root, name, second, score, folder=name)
    board = leaderboard_frame(load_records([root]))
    assert board["extractor"].tolist() == ["q", "s", "p", "r"]  # seg+saliency before seg+depth, each ranked


def test_a_lone_task_set_listed_first_does_not_stop_the_others_being_ranked():
    frame = pd.DataFrame({"dataset": ["x", "x", "x"], "seg mIoU ↑": [0.5, 0.6, 0.4],
                          "depth RMSE ↓": [float("nan"), 1.0, 2.0]})
    cols = ["seg mIoU ↑", "depth RMSE ↓"]
    assert mean_ranks(frame, task_sets(frame, cols)).tolist()[1:] == [1.0, 2.0]


def test_records_without_a_dataset_are_ranked_per_task_and_marked_too(tmp_path):
    root = tmp_path / "results"
    _record(root, "a", "seg", 0.5, folder="a", dataset=None)
    _record(root, "b", "seg", 0.6, folder="b", dataset=None)
    md, _ = leaderboard([root])
    assert "| - | b | global | linear | **60.00** | 1 | global | 1.000 |" in md
    assert "| - | a | global | linear | 50.00 | 2 | global | 2.000 |" in md


def test_guided_and_spatial_feature_level_rows_are_named_as_their_runs(tmp_path):
    root = tmp_path / "results"
    _record(root, "a", "seg", 0.5, folder="guided", probe={"name": "linear-global-guided",
                                                           "guidance_keys": ["concepts=output"]})
    _record(root, "a", "seg", 0.4, folder="spatial", probe={"name": "linear-spatial-features", "fusion": "spatial"},
            config={"fusion_level": "features"})
    board = leaderboard_frame(load_records([root]))
    assert sorted(zip(board.fusion, board["head"])) == [("global", "linear+concepts"), ("spatial-features", "linear")]


def test_a_probe_that_learned_nothing_is_explained_under_every_format(results):
    path = results / "cd" / "depth" / "result.json"
    rec = json.loads(path.read_text())
    rec["trivial"] = {"learned_nothing": True, "val_score": 1.0}
    path.write_text(json.dumps(rec))
    latex, _ = leaderboard([results], "latex")
    assert r"\textbf{1.250 $^\dagger$}" in latex
    assert latex.endswith(f"% Ranking: {RANK_RULE}.\n% {FLAG_RULE}.\n")
    html, _ = leaderboard([results], "html")
    assert html.endswith(f"</table><p>{escape(f'Ranking: {RANK_RULE}.')}</p><p>{escape(f'{FLAG_RULE}.')}</p>")


def test_a_cells_record_is_chosen_by_validation_score_in_the_metrics_direction():
    assert _chooses(0.6, 0.5, True) and not _chooses(0.4, 0.5, True)
    assert _chooses(0.4, 0.5, False) and not _chooses(0.6, 0.5, False)
    assert not _chooses(0.5, 0.5, True) and not _chooses(0.5, 0.5, False)  # a tie keeps the first
    assert _chooses(0.1, None, True) and not _chooses(None, 0.5, True) and not _chooses(None, None, False)


def test_the_selection_score_is_the_mean_validation_score_of_the_seeds_asked():
    rec = {"seeds": [0, 1, 2], "config": {"val_score": 0.9},
           "per_seed": [{"seed": 0, "val_score": 0.4}, {"seed": 1, "val_score": 0.6}, {"seed": 2, "val_score": None}]}
    assert selection_score(rec) == pytest.approx(0.5)  # seeds without a validation score do not count
    assert selection_score(rec, seeds=[1]) == pytest.approx(0.6)
    assert selection_score(rec, seeds=[5]) is None  # none of those seeds, and the config's is for other seeds
    old = {"seeds": [0], "config": {"val_score": 0.7}}  # a record without per-seed entries
    assert selection_score(old) == 0.7 and selection_score(old, seeds=[0]) == 0.7
    assert selection_score(old, seeds=[0, 1]) is None
    assert selection_score({"config": {}}) is None and selection_score({"per_seed": [], "config": None}) is None


def test_a_metric_unit_only_the_record_knows_formats_its_column(tmp_path):
    """A count metric probekit does not know: the record's unit ("count", no decimals) sets the column's format."""
    root = tmp_path / "results"
    for name, hits in (("a", 12.0), ("b", 7.0)):
        _record(root, name, "seg", hits, folder=name, metric=("hits", True), metrics={"hits": hits},
                metrics_info={"hits": {"higher_is_better": True, "unit": "count"}})
    md, _ = leaderboard([root])
    assert "| **12** | 1 |" in md and "| 7 | 2 |" in md


def test_a_task_probekit_does_not_know_follows_the_known_ones(tmp_path):
    """A registered task outside seg/saliency/depth ("normals") gets its own score, rank and cell columns after
    the known tasks', without stopping the table."""
    root = tmp_path / "results"
    for name, err, miou in (("a", 20.0, 0.5), ("b", 30.0, 0.4)):
        _record(root, name, "normals", err, folder=name, metric=("angle error", False),
                metrics={"angle error": err}, metrics_info={"angle error": {"higher_is_better": False, "unit": "m"}})
        _record(root, name, "seg", miou, folder=name)
    _record(root, "c", "seg", 0.45, folder="c")  # as many tasks as a and b, one of them known: listed first
    _record(root, "c", "depth", 1.0, folder="c")
    board = leaderboard_frame(load_records([root]))
    assert list(board.columns[5:11]) == ["seg mIoU ↑", "seg rank", "depth RMSE ↓", "depth rank",
                                         "normals angle error ↓", "normals rank"]
    assert [c for c in board.columns if c.endswith(" cell")] == ["seg cell", "depth cell", "normals cell"]
    assert board["extractor"].tolist() == ["c", "a", "b"]
    assert board.set_index("extractor")["normals rank"].dropna().to_dict() == {"a": 1, "b": 2}
    wide = leaderboard_frame(load_records([root]), secondary=True)  # no secondary metrics known for it: none shown
    shown = [c for c in wide.columns if c.startswith("normals ") and not c.endswith((" std", " learned nothing"))]
    assert shown == ["normals angle error ↓", "normals rank", "normals cell"]


def test_an_empty_cell_of_the_html_table_sorts_as_empty(results):
    """A global probe has no timestep (None): shown as "-" and sorted as an empty value, not as "None"."""
    html = to_html_table(runs_frame(load_records([results])))
    assert 'data-sort="None"' not in html and '<td data-sort="">-</td>' in html
