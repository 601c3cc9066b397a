"""Why feature-level global fusion can lose to the best single map it contains, and how prediction-level fusion
does not, measured on the shipped model's maps.

Global fusion with a one-hot weight *is* the single-map probe of that map, so on the training loss it can only
lose to its best map through optimisation. This script fuses one block's maps over four timesteps and compares
the fused probe's final training loss, validation and test scores and learned weights with each map probed alone,
at one learning rate and seed: at the feature level for several fusion-weight rates, and at the prediction level
(probekit's default for the linear head). A second table compares both levels on all twelve maps over three seeds.
Reads the feature files of `make_shapeworld.py` (run that first); writes docs/results/fusion-diagnosis.md.

    python docs/results/fusion_diagnosis.py --work build/results-shapeworld
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from probekit import scores
from probekit.probes.trainer import train_probe

HERE = Path(__file__).resolve().parent


def run(features: Path, keys: list[str], fusion: str, args, seed: int | None = None, **extra) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        rec = train_probe(features / "train.h5", features / "eval.h5", val_features=features / "val.h5", keys=keys,
                          task=args.task, fusion=fusion, head="linear", seeds=[args.seed if seed is None else seed],
                          lrs=[args.lr],
                          epochs=args.epochs, out=Path(tmp) / "run", overwrite="overwrite", progress=False,
                          device="cpu", **extra)
    trial = rec["trials"][0]
    fw = (rec["probe"].get("fusion_weights") or {}).get("per_key")
    return {"test": rec["main_score"], "val": trial["val_score"], "loss": trial["train_loss_per_epoch"][-1],
            "weights": fw, "unit": scores.info(rec["main_score_name"], rec)["unit"]}


def level_lines(features: Path, args) -> list[str]:
    """All maps, both fusion levels, over seeds, beside the best single map: probekit's own probes."""
    keys = [f"t={t}/layer={la}" for t in args.timesteps for la in args.layers]
    designs = [(f"{args.best_map} alone", [args.best_map], "single", {}),
               ("global, feature level (one head reads the weighted maps)", keys, "global",
                {"fusion_level": "features"}),
               ("global, prediction level (a read-out per map, mixed; probekit's default)", keys, "global",
                {"fusion_level": "predictions"})]
    lines = ["## The two fusion levels on every map", "",
             f"All {len(keys)} maps (timesteps {args.timesteps} x blocks {args.layers}), task {args.task}, linear "
             f"head, learning rate {args.lr:g}, {args.epochs} epochs, seeds {args.seeds}, the same splits.", "",
             "| probe | test (mean ± std) | final training loss (mean) | largest weights (mean over seeds) |",
             "|---|---|---|---|"]
    for name, used, fusion, extra in designs:
        runs = [run(features, used, fusion, args, seed=seed, **extra) for seed in args.seeds]
        unit = runs[0]["unit"]
        vals = np.array([r["test"] for r in runs])
        top = ""
        if runs[0]["weights"]:
            mean_w = {k: float(np.mean([r["weights"][k] for r in runs])) for k in used}
            top = ", ".join(f"{k}: {v:.2f}" for k, v in sorted(mean_w.items(), key=lambda kv: -kv[1])[:3])
        lines.append(f"| {name} | {scores.format_score(float(vals.mean()), unit, float(vals.std(ddof=1)))} | "
                     f"{np.mean([r['loss'] for r in runs]):.4f} | {top} |")
    return lines + ["", "How to read it: at the feature level one head reads the mix, so the weights' gradient "
                    "favours the map the head already reads best, the one most like the mix; at the prediction "
                    "level every map keeps a read-out of its own, trained on its own loss too, and the weights "
                    "compare the maps' calibrated predictions. Compare the weights with the every-map grid of "
                    "shapeworld.md.", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("build/results-shapeworld"))
    parser.add_argument("--backbone", default="shapeworld-mmdit")
    parser.add_argument("--task", default="seg")
    parser.add_argument("--layer", type=int, default=5)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[50, 250, 500, 750])
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fusion-lrs", type=float, nargs="+", default=[0.02, 0.2, 1.0])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 3, 5], help="of the every-map comparison")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="of the every-map comparison")
    parser.add_argument("--skip-levels", action="store_true", help="leave out the every-map comparison")
    parser.add_argument("--best-map", default="t=50/layer=5", help="the single map the fused probes are compared with")
    args = parser.parse_args()
    features = args.work / "features" / args.backbone / "shapeworld"
    keys = [f"t={t}/layer={args.layer}" for t in args.timesteps]
    started = time.perf_counter()
    rows = [(f"single {k}", run(features, [k], "single", args)) for k in keys]
    rows += [(f"global, feature level, fusion lr {flr:g}",
              run(features, keys, "global", args, fusion_lr=flr, fusion_level="features")) for flr in args.fusion_lrs]
    rows.append(("global, prediction level (default), fusion lr 0.2",
                 run(features, keys, "global", args, fusion_level="predictions")))
    levels = [] if args.skip_levels else level_lines(features, args)
    unit = rows[0][1]["unit"]
    lines = ["# Global fusion against the maps it fuses", "",
             f"Generated by `python docs/results/fusion_diagnosis.py --work {args.work}` "
             f"({time.strftime('%Y-%m-%d')}, {time.perf_counter() - started:.0f} s, 2 CPU cores): "
             f"{args.backbone}'s block {args.layer} at timesteps {args.timesteps}, task {args.task}, linear head, "
             f"learning rate {args.lr:g}, {args.epochs} epochs, seed {args.seed}; the splits of "
             "`make_shapeworld.py` (train 512, val 200, test 300).", "",
             "| probe | final training loss | val | test | weights |", "|---|---|---|---|---|"]
    for name, r in rows:
        w = ", ".join(f"t={k.split('/')[0][2:]}: {v:.2f}" for k, v in r["weights"].items()) if r["weights"] else ""
        lines.append(f"| {name} | {r['loss']:.4f} | {scores.format_score(r['val'], unit)} | "
                     f"{scores.format_score(r['test'], unit)} | {w} |")
    best = min(rows[:len(keys)], key=lambda row: row[1]["loss"])
    lines += ["", f"Lowest training loss of a single map: {best[0]} ({best[1]['loss']:.4f}). A fused probe whose "
              "final training loss is above it has not found the one-hot weight that its own objective prefers. "
              "At the feature level one head reads the mix, so after the warm-up it reads best the map that most "
              "resembles the mix, and the weights' gradient favours that map over the one that predicts best "
              "alone; the prediction level gives every map its own read-out.", ""]
    lines += levels
    (HERE / "fusion-diagnosis.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
