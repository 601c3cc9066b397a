"""Regenerate docs/results/depth-loss.md: depth probes trained on SigLoss alone against SigLoss plus the relative
RMSE (`--depth-loss`), on the trained backbone's maps of the results page (docs/results/shapeworld.md).

    python docs/results/depth_loss.py --work build/results-shapeworld

The rows of the loss the page was made with are the page's own records (make_shapeworld.py must have run in
WORK); the other loss trains the same cells with the page's settings into WORK/depth-loss/LOSS/: every map over
one seed, the best of them on validation over three, and global and spatial fusion over three seeds (learning
rates 3e-3 to 3e-2, as the page's fused depth probes). A rerun reuses finished cells.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from make_shapeworld import STORAGE_KEY, _best_single  # beside this script: the page's own choice of map
from probekit.probes.trainer import recorded_setting, train_probe
from probekit.results import read_record

HERE = Path(__file__).resolve().parent
BACKBONE = "shapeworld-mmdit"
FUSED_LRS = [0.003, 0.01, 0.03]
METRICS = (("RMSE", "{:.3f}"), ("SILog", "{:.2f}"), ("AbsRel", "{:.4f}"), ("delta1", "{:.4f}"))


def page_records(work: Path) -> tuple[str, dict[str, dict]]:
    """The page's depth cells: its best single map (chosen as the page chooses it) and both fusions, and the loss
    they were trained on."""
    root = work / "results" / BACKBONE / "shapeworld" / "depth"
    best = _best_single([read_record(d) for d in sorted(root.glob("linear-single-*"))],
                        argparse.Namespace(storage_key=STORAGE_KEY))
    if best is None:
        raise SystemExit(f"{root}: no depth records; run make_shapeworld.py --work {work} first")
    recs = {"best single": best,
            "global": read_record(root / "linear-global"), "spatial": read_record(root / "linear-spatial")}
    losses = {recorded_setting(rec["config"], "depth_loss") for rec in recs.values()}
    if len(losses) != 1:
        raise SystemExit(f"{root}: the page's depth probes were trained on different losses ({sorted(losses)}); "
                         "rerun make_shapeworld.py")
    return losses.pop(), recs


def train_cells(work: Path, loss: str) -> tuple[dict[str, dict], float]:
    """Every cell under ``loss``, and the minutes its training took (as recorded, so a rerun that reuses them
    still says)."""
    features = work / "features" / BACKBONE / "shapeworld"
    out = work / "depth-loss" / loss
    common = dict(val_features=str(features / "val.h5"), task="depth", depth_loss=loss, overwrite="reuse",
                  return_existing=True, progress=False)
    train, test = str(features / "train.h5"), str(features / "eval.h5")
    singles, minutes = {}, 0.0
    for key in _keys(work):
        started = time.perf_counter()
        rec = train_probe(train, test, key=key, seeds=[0], out=out / f"single-{_slug(key)}", **common)
        singles[key] = rec
        minutes += rec["wall_time_s"] / 60
        print(f"{loss} {key}: val {rec['per_seed'][0]['val_score']:.4f} test {rec['main_score']:.4f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    best = min(singles, key=lambda k: singles[k]["per_seed"][0]["val_score"])
    recs = {"best single": train_probe(train, test, key=best, seeds=[0, 1, 2], out=out / "best-single", **common)}
    for fusion in ("global", "spatial"):
        started = time.perf_counter()
        recs[fusion] = train_probe(train, test, fusion=fusion, lrs=FUSED_LRS, seeds=[0, 1, 2], out=out / fusion,
                                   **common)
        print(f"{loss} {fusion}: {recs[fusion]['main_score']:.4f} ({time.perf_counter() - started:.0f} s)",
              flush=True)
    return recs, minutes + sum(rec["wall_time_s"] for rec in recs.values()) / 60


def _keys(work: Path) -> list[str]:
    root = work / "results" / BACKBONE / "shapeworld" / "depth"
    return sorted((read_record(d)["probe"]["feature_keys"][0] for d in root.glob("linear-single-*")),
                  key=lambda k: tuple(int(part.split("=")[1]) for part in k.split("/")))


def _slug(key: str) -> str:
    return key.replace("t=", "t").replace("/layer=", "-l")


def _cell(rec: dict, metric: str, fmt: str) -> str:
    return f"{fmt.format(rec['metrics'][metric])} ± {fmt.format((rec.get('metrics_std') or {}).get(metric, 0.0))}"


def render(rows: dict[str, dict[str, dict]], trained: str, minutes: float) -> str:
    lines = ["# Depth probes: SigLoss alone or plus the relative RMSE", "",
             "Made by `python docs/results/depth_loss.py --work build/results-shapeworld` on the maps of the "
             f"results page (the {trained} rows trained in {minutes:.0f} min on {os.cpu_count()} CPU cores) "
             "([shapeworld.md](shapeworld.md), which holds the other rows: the shipped model, 512 train / 200 val "
             "/ 300 test images, 12 maps, learning rates chosen on validation, own-loss weights 1,3 for the fused "
             "probes). Mean ± std over three seeds; RMSE in metres (lower is better), SILog x100 and AbsRel "
             "(lower), delta1 (higher).", "",
             "| loss | probe | " + " | ".join(m for m, _ in METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for loss, recs in rows.items():
        for name, rec in recs.items():
            label = name + (f" ({rec['probe']['feature_keys'][0]})" if name == "best single" else "")
            lines.append(f"| {loss} | {label} | " + " | ".join(_cell(rec, m, f) for m, f in METRICS) + " |")
    lines += ["", "Fused against the best single map, RMSE (negative: the fused probe is better):", ""]
    for loss, recs in rows.items():
        single = recs["best single"]
        for fusion in ("global", "spatial"):
            rec = recs[fusion]
            diff = rec["main_score"] - single["main_score"]
            spread = max(rec.get("main_score_std") or 0.0, single.get("main_score_std") or 0.0)
            verdict = ("better, beyond the spread" if diff < -spread else "worse, beyond the spread"
                       if diff > spread else "within the seed-to-seed spread")
            lines.append(f"- {loss}, {fusion}: {diff:+.3f} m (largest std {spread:.3f}): {verdict}")
    lines += ["", "Why the loss matters: the RMSE score weighs each pixel's log error by its depth squared "
              "(`(p - g)^2 ~ g^2 (ln p - ln g)^2`), and SigLoss weighs every pixel alike and forgives 85% of a "
              "global scale error. Probes trained on SigLoss alone can trade the far pixels, which decide the RMSE, "
              "for the near ones; the global SigLoss probe above is the plainest case (better than its best "
              "single map on SILog, AbsRel and delta1, worse on RMSE). The added term is the RMSE itself over the "
              "batch's mean depth, so both terms are relative errors of one size. Its price shows in the metrics "
              "that weigh pixels alike (SILog, AbsRel), and the default follows the main score, RMSE; "
              "`--depth-loss silog` keeps SigLoss alone."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("build/results-shapeworld"))
    args = parser.parse_args()
    page_loss, page = page_records(args.work)
    other = next(loss for loss in ("silog", "silog+rmse") if loss != page_loss)
    trained, minutes = train_cells(args.work, other)
    rows = {loss: page if loss == page_loss else trained for loss in ("silog", "silog+rmse")}
    text = render(rows, other, minutes)
    (HERE / "depth-loss.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
