"""Regenerate docs/results/shapeworld.md: ShapeWorld probes of the shipped MM-DiT, its random-init control and
raw pixels, with seeds; what storing less costs; concept-attention zero-shot segmentation.

    python docs/results/make_shapeworld.py --work build/results-shapeworld

Everything runs through one suite (written to WORK/suite.yaml; `probekit run WORK/suite.yaml` would do the same),
so an interrupted run resumes and finished cells are kept. Probes use `probekit probe`'s defaults (learning
rates 1e-3 to 1e-1, 20 epochs, batch 32, the fusion weights' own rate): the learning rate of every cell is
chosen on the validation split; the fusion rows, and the best single map of each task, over three seeds.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import numpy as np
import yaml

from probekit import scores
from probekit.pipelines.suite import parse_suite, run_suite
from probekit.probes.trainer import recorded_setting
from probekit.results import find_records, read_record

HERE = Path(__file__).resolve().parent
BACKBONES = ["shapeworld-mmdit", "shapeworld-mmdit-random", "pixels"]
TASKS = ["seg", "saliency", "depth"]
# Fused probes sweep three rates of the default grid (one read-out per map makes each trial up to 12x a single
# map's on CPU, depth's 256 bins most): the upper three, and for depth, whose fused probes chose 1e-2 (the lowest
# of those) for every seed, the middle three. A choice at either end is flagged in the record, as ever.
STORAGE_KEY = "t=250/layer=5"  # the map whose storage reductions are compared (--storage-key)
FUSED_LRS = {"seg": [0.01, 0.03, 0.1], "saliency": [0.01, 0.03, 0.1], "depth": [0.003, 0.01, 0.03]}
STORAGE = {  # label -> extract options: what each reduction of the shipped model's maps costs
    "float16 (plain)": {},
    "bfloat16": {"store_dtype": "bfloat16"},
    "pool 8": {"pool": 8},
    "pca 32": {"channels": 32},
    "pca 64": {"channels": 64},
    "random 32": {"channels": 32, "projection": "random"},
    "pool 8 + pca 32": {"pool": 8, "channels": 32},
}


def suite(args) -> dict:
    common = {"timesteps": args.timesteps, "layers": args.layers, "device": "cpu", "batch_size": 16}
    extractors = {name: {**common, "probes": "full"} for name in BACKBONES}
    extractors["shapeworld-mmdit-random"]["probes"] = "control"
    extractors["pixels"] = {"device": "cpu", "probes": "pixels"}
    for label, options in STORAGE.items():
        if options:
            extractors[f"storage-{_slug(label)}"] = {"extractor": "shapeworld-mmdit", **common, **options,
                                                     "probes": "storage"}
    grid = [{"fusion": "single", "each_map": True, "tasks": TASKS}]
    best = [{"fusion": "single", "best_map_of": task, "tasks": [task], "seeds": 3} for task in TASKS]
    fused = [{"fusion": f, "tasks": [task], "seeds": 3, "lrs": FUSED_LRS[task]}
             for f in ("global", "spatial") for task in TASKS]
    # The control's fused depth probes over one seed: at about 10 and 25 min a seed on 2 cores, the dearest cells.
    control_fused = [{**p, "seeds": 1} if p["tasks"] == ["depth"] else p for p in fused]
    others = [{"fusion": "concat", "tasks": ["seg"], "seeds": 3},
              {"fusion": "single", "keys": [args.storage_key], "tasks": ["seg", "depth"], "seeds": 3}]
    return {
        "suite": "shapeworld-results", "version": 1, "seed": 0, "out": str(args.work),
        "training": {"epochs": args.epochs},
        "datasets": {"shapeworld": {"train": {"split": "train", "limit": args.n_train},
                                    "val": {"split": "val", "limit": args.n_val},
                                    "eval": {"split": "test", "limit": args.n_test}}},
        "extractors": extractors,
        "probe_sets": {
            "full": grid + best + fused + others,
            "control": grid + best + control_fused + others,
            "pixels": [{"fusion": "single", "keys": ["layer=0"], "tasks": TASKS, "seeds": 3}],
            "storage": [{"fusion": "single", "keys": [args.storage_key], "tasks": ["seg", "depth"], "seeds": 3},
                        {"fusion": "global", "tasks": ["seg"], "seeds": 3, "lrs": FUSED_LRS["seg"]}],
        },
    }


def _slug(label: str) -> str:
    return label.replace(" + ", "-").replace(" ", "").replace("(plain)", "")


def _score(rec: dict) -> str:
    unit = scores.info(rec["main_score_name"], rec)["unit"]
    return scores.format_score(rec["main_score"], unit, rec.get("main_score_std"))


def grid_ceiling_lines(work: Path, args) -> list[str]:
    """What the token grid allows: the seg ceiling on the same test images, at the grid of the probed maps."""
    from probekit.combined import open_features
    from probekit.datasets import load_dataset
    from probekit.probes.ceiling import grid_ceiling

    with open_features(work / "features" / BACKBONES[0] / "shapeworld" / "eval.h5") as reader:
        grid = reader.shape(args.storage_key)[-1]
    ds = load_dataset("shapeworld", "test")
    got = grid_ceiling((ds[i].seg for i in range(args.n_test)), grid, len(ds.classes), ds.ignore_index)
    pct = {k: scores.format_score(v, "fraction") for k, v in got.items()}
    return [f"What the {grid}x{grid} token grid allows on these {args.n_test} test images (labels at 64x64, "
            f"`probekit.probes.ceiling`): every token predicting its majority class {pct['majority']} mIoU; every "
            f"token knowing its exact class shares, upsampled bilinearly as a probe's logits are, "
            f"{pct['fractions']}; all background {pct['all_background']}.", ""]


def render(work: Path, args, elapsed_min: float, zeroshot: list[str], ceiling: list[str] = ()) -> str:
    recs = [read_record(p) for p in find_records([work / "results"])]
    by = {}
    for r in recs:
        by.setdefault((r["extractor"], r["task"]), []).append(r)
    lines = [
        "# ShapeWorld results: where along the trajectory the shipped MM-DiT knows what",
        "",
        f"Generated by `python docs/results/make_shapeworld.py --work {args.work}` ({time.strftime('%Y-%m-%d')}, "
        f"{platform.platform()}, 2 CPU cores) through one suite (`{args.work}/suite.yaml`): the probe runs' own "
        f"wall times sum to {sum(r.get('wall_time_s') or 0 for r in recs) / 60:.0f} min; the last invocation, which "
        f"reuses every finished run, took {elapsed_min:.0f} min.",
        "",
        f"Setup: ShapeWorld 64x64, train {args.n_train} / val {args.n_val} / test {args.n_test} images (the first of "
        f"each split); maps at timesteps {args.timesteps} of blocks {args.layers}; linear heads; `probekit probe`'s "
        f"defaults ({args.epochs} epochs, learning rates 1e-3 to 1e-1 chosen on val, fusion weights at their own "
        "rate). Scores on the test split: seg mIoU (%), saliency max-F (%), depth RMSE (m, lower is better). "
        "`± std` is over three seeds (initialisation and batch order; the splits are the same).",
        "",
        "How to read it:",
        "",
        _noise_sentence(),
        "- Fused probes (linear head) mix predictions: every map, standardised with its own training statistics, "
        "has a linear read-out of its own, trained on its own loss as well as on the mix (the own losses count 1 or "
        "3 times, chosen on validation per seed: `--own-loss-weights 1,3`, 1 with every learning rate, 3 at the "
        "rate 1 chose; 3 keeps the read-outs closer to their maps' own probes), and the global (or, for "
        "spatial fusion, per-location) softmax weights mix the read-outs' predictions. A weight is therefore how "
        "far the mix trusts a map's own prediction, and a one-hot weight is that map's probe. Feature-level fusion "
        "(one head reading the weighted maps, `--fusion-level features`) lost to the best single map here: its "
        "weights drift to the map that most resembles the mix (fusion-diagnosis.md, made by fusion_diagnosis.py, "
        "measures both levels). The planted-signal tests in tests/test_fusion_planted.py show the weights "
        "finding the informative map (> 0.9) and spatial weights finding the right map in the right place. Beside "
        "each verdict below: the final training losses of both probes (same learning rate, first seed); a fused "
        "probe that ends below its best map's loss and still scores lower lost by fitting the "
        f"{args.n_train} training images more closely than the test split rewards.",
        "- Fused probes sweep three learning rates (seg and saliency 1e-2 to 1e-1; depth 3e-3 to 3e-2, after its "
        "fused probes chose 1e-2 for every seed on the upper three), single maps five (1e-3 to 1e-1): one read-out "
        "per map makes a fused trial up to 12x a single map's on 2 CPU cores (depth's 256 bins most). Each verdict "
        "below says when a seed's chosen rate sits at an end of its grid. The random control's fused depth probes "
        "ran over one seed (their spread is the single map's).",
        "- The best single map of each task is chosen on validation (never on test), then run over three seeds.",
        "- Depth is scored where the ground truth is below the far limit (`gt < 50 m`), as the NYU and KITTI "
        "protocols do: ShapeWorld's sky, at exactly 50 m, is not scored. " + _depth_loss_sentence(recs),
        "",
    ]
    for task in TASKS:
        lines += [f"## {task}", "", "| probe | " + " | ".join(BACKBONES) + " |", "|---|" + "---|" * len(BACKBONES)]
        rows: dict[str, dict[str, str]] = {}
        for backbone in BACKBONES:
            best = _best_single(by.get((backbone, task), []), args)
            if best is not None:
                rows.setdefault("best single map (3 seeds)", {})[backbone] = f"{_score(best)} ({_cell(best['probe'])})"
            for r in by.get((backbone, task), []):
                if r["probe"]["fusion"] != "single":
                    rows.setdefault(f"{r['probe']['fusion']} fusion", {})[backbone] = _score(r)
        for name in ("best single map (3 seeds)", "concat fusion", "global fusion", "spatial fusion"):
            if name in rows:
                lines.append(f"| {name} | " + " | ".join(rows[name].get(b, "-") for b in BACKBONES) + " |")
        lines.append("")
        if task == "seg":
            lines += list(ceiling)
        lines += _fusion_vs_single(by, task, args)
    lines += _single_grid(by)
    lines += _weights(by)
    lines += _storage(by, args)
    lines += zeroshot
    return "\n".join(lines) + "\n"


def _depth_loss_sentence(recs: list[dict]) -> str:
    losses = sorted({str(recorded_setting(r["config"], "depth_loss")) for r in recs if r["task"] == "depth"})
    names = {"silog": "SigLoss alone", "silog+rmse": "SigLoss plus the RMSE over the batch's mean depth"}
    if not losses:
        return ""
    return (f"Depth probes trained on {' and '.join(names.get(x, x) for x in losses)} (`--depth-loss`; "
            "depth-loss.md, made by depth_loss.py, compares the two on the maps of this page's setup).")


def _cell(p: dict) -> str:
    return f"t={p['timestep']} L{p['layer']}" if p.get("timestep") is not None else f"L{p['layer']}"


def _best_single(recs: list[dict], args) -> dict | None:
    """The three-seed run of the map chosen on validation: the map probed over three seeds that is not only there
    for the storage table (when the storage map is itself the best, it is the only one)."""
    multi = [r for r in recs if r["probe"]["fusion"] == "single" and len(r["seeds"]) > 1]
    others = [r for r in multi if r["probe"]["feature_keys"] != [args.storage_key]] or multi
    if not others:
        return None

    from probekit.reports.tables import selection_score

    sign = 1 if others[0]["higher_is_better"] else -1

    def seed0_val(r):  # the score the suite chose the map by; a record without one comes last
        val = selection_score(r, r["seeds"][:1])
        return -math.inf if val is None else sign * val

    return max(others, key=seed0_val)


def _fusion_vs_single(by, task, args) -> list[str]:
    out = []
    for backbone in BACKBONES[:2]:
        recs = by.get((backbone, task), [])
        single = _best_single(recs, args)
        for fusion in ("global", "spatial"):
            fused = next((r for r in recs if r["probe"]["fusion"] == fusion), None)
            if single is None or fused is None:
                continue
            sign = 1 if fused["higher_is_better"] else -1
            gain = sign * (fused["main_score"] - single["main_score"])
            spread = max(fused.get("main_score_std") or 0, single.get("main_score_std") or 0)
            unit = scores.info(fused["main_score_name"], fused)["unit"]
            verdict = ("within the seed-to-seed spread" if abs(gain) <= spread else
                       "better, beyond the spread" if gain > 0 else "worse, beyond the spread")
            out.append(f"- {backbone}, {fusion} fusion vs the best single map: "
                       f"{'+' if gain >= 0 else '-'}{scores.format_score(abs(gain), unit)} "
                       f"(largest std {scores.format_score(spread, unit)}): {verdict}." + _losses(fused, single)
                       + _edges(fused) + _other_metrics(fused, single))
    return out + [""] if out else []


def _edges(rec: dict) -> str:
    """Which seeds chose a learning rate at an end of the run's grid (the record flags each), and the own-loss
    weight every seed chose."""
    per_seed = rec.get("per_seed") or []
    at = [(s["seed"], s["selected_lr"], s["lr_at_edge"]) for s in per_seed if s.get("lr_at_edge")]
    out = ""
    if at:
        out += (" Chosen rate at the grid's end: "
                + ", ".join(f"seed {seed} {lr:g} ({edge})" for seed, lr, edge in at) + ".")
    own = [(s["seed"], s["selected_own_loss_weight"]) for s in per_seed
           if s.get("selected_own_loss_weight") is not None]
    if own:
        out += " Own-loss weight chosen: " + ", ".join(f"seed {seed} {w:g}" for seed, w in own) + "."
    return out


def _other_metrics(fused: dict, single: dict) -> str:
    """Depth: the fused and single probes' scores on the metric of the loss they train on (SILog), and two more of
    the field's, beside the RMSE the verdict is on (a loss in log space and a score in metres can disagree)."""
    if fused["task"] != "depth":
        return ""
    parts = []
    for name in ("SILog", "AbsRel", "delta1"):
        a, b = fused["metrics"].get(name), single["metrics"].get(name)
        if a is not None and b is not None:
            parts.append(f"{name} {a:.4g} vs {b:.4g}")
    return (" Fused vs single on " + "; ".join(parts) + " (SILog, the training loss's own metric, and AbsRel: lower "
            "is better; delta1: higher).") if parts else ""


def _final_loss(rec: dict, lr: float, own: float | None = None) -> float | None:
    trial = next((t for t in rec.get("trials") or [] if t["seed"] == rec["seeds"][0] and t["lr"] == lr
                  and t.get("own_loss_weight") == own), None)
    return trial["train_loss_per_epoch"][-1] if trial and trial.get("train_loss_per_epoch") else None


def _losses(fused: dict, single: dict) -> str:
    """Final training loss of both at the fused probe's chosen learning rate (and own-loss weight), first seed: a
    fused probe contains the single map, so ending above it means the optimisation, not the model, fell short."""
    lr, own = fused["config"].get("selected_lr"), fused["config"].get("selected_own_loss_weight")
    a, b = _final_loss(fused, lr, own), _final_loss(single, lr)
    if a is None or b is None:
        return ""
    return f" Final training loss at lr {lr:g}, seed {fused['seeds'][0]}: fused {a:.4f}, single {b:.4f}."


def _single_grid(by) -> list[str]:
    """Every map's one-seed score, per task, for the trained model and its random-init control."""
    cols = [(b, t) for t in TASKS for b in BACKBONES[:2]]
    short = {"shapeworld-mmdit": "trained", "shapeworld-mmdit-random": "random"}
    lines = ["## Every single map (one seed)", "",
             "| map | " + " | ".join(f"{t}, {short[b]}" for b, t in cols) + " |", "|---|" + "---|" * len(cols)]
    cells: dict[str, dict[tuple, str]] = {}
    for backbone, task in cols:
        for r in by.get((backbone, task), []):
            if r["probe"]["fusion"] == "single":
                per_seed = r.get("per_seed") or []
                seed0 = next((s["main_score"] for s in per_seed if s["seed"] == 0), r["main_score"])
                unit = scores.info(r["main_score_name"], r)["unit"]
                cells.setdefault(_cell(r["probe"]), {})[(backbone, task)] = scores.format_score(seed0, unit)
    for cell in sorted(cells, key=lambda c: (int(c.split()[0][2:]), c.split()[1])):
        lines.append(f"| {cell} | " + " | ".join(cells[cell].get(c, "-") for c in cols) + " |")
    return lines + ["", "(A map that was also run over three seeds shows its seed-0 score here.)", ""]


def _weights(by) -> list[str]:
    lines = ["## Learned global fusion weights: the share of each timestep (summed over blocks)", "",
             "Mean ± std over three seeds. Uniform would be 1 / (number of timesteps).", ""]
    for task in TASKS:
        rec = next((r for r in by.get(("shapeworld-mmdit", task), []) if r["probe"]["fusion"] == "global"), None)
        if rec is None:
            continue
        fw = rec["probe"]["fusion_weights"]
        ts = fw["timesteps"]
        shares = np.array([[sum(v for k, v in w.items() if k.startswith(f"t={t}/")) for t in ts]
                           for w in fw["per_seed"]])
        if not lines[-1].startswith("|"):
            lines += ["| task | " + " | ".join(f"t={t}" for t in ts) + " |", "|---|" + "---|" * len(ts)]
        lines.append(f"| {task} | " + " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in
                                                 zip(shares.mean(0), shares.std(0, ddof=1))) + " |")
    return lines + [""]


def _storage(by, args) -> list[str]:
    from probekit.extractors.storage import StorageOptions

    lines = ["## What storing less costs", "",
             f"The shipped model's maps stored reduced (`probekit extract --pool/--channels/--projection/"
             f"--store-dtype`; val and test reuse the training split's projection), probed on the map "
             f"{args.storage_key} alone (seg and depth) and with global fusion over all maps (seg), three seeds "
             "each. Bytes: the maps of one image.", "",
             "| storage | maps per image | seg, single | seg, global | depth, single |",
             "|---|---|---|---|---|"]
    for label, options in STORAGE.items():
        tag = StorageOptions(**{("dtype" if k == "store_dtype" else k): v for k, v in options.items()}).label()
        # A suite label names its results ("storage-pool8[pool8]"); runs made before labels named them carry the
        # registry name ("shapeworld-mmdit[pool8]").
        names = [f"storage-{_slug(label)}[{tag}]", f"shapeworld-mmdit[{tag}]"] if tag else ["shapeworld-mmdit"]
        name = next((n for n in names if (n, "seg") in by), names[0])
        cells = []
        for task in ("seg", "depth"):
            recs = by.get((name, task), [])
            single = next((r for r in recs if r["probe"]["fusion"] == "single" and len(r["seeds"]) > 1
                           and r["probe"]["feature_keys"][0] == args.storage_key), None)
            cells.append(_score(single) if single else "-")
            if task == "seg":
                fused = next((r for r in recs if r["probe"]["fusion"] == "global"), None)
                cells.append(_score(fused) if fused else "-")
        lines.append(f"| {label} | {_bytes(by.get((name, 'seg'), []))} | " + " | ".join(cells) + " |")
    return lines + [""]


def _bytes(recs) -> str:
    from probekit.extractors.plan import human
    from probekit.store import FeatureReader

    if not recs:
        return "-"
    with FeatureReader(recs[0]["features"]["train"]["path"]) as r:
        item = 4 if r.feature_dtype == "float32" else 2
        return human(sum(int(np.prod(r.shape(k))) * item for k in r.keys))


def concept_zero_shot(work: Path, args) -> list[str]:
    """Concept-attention zero-shot segmentation on the test split, both map modes, trained and control."""
    from probekit.api import build_extractor
    from probekit.datasets import load_dataset
    from probekit.extractors.concept_attention import ConceptAttentionExtractor
    from probekit.extractors.runner import extract_dataset
    from probekit.probes.zeroshot import zero_shot_segmentation

    ds = load_dataset("shapeworld", "test")
    rows = []
    for name in BACKBONES[:2]:
        path = work / "features" / name / "test-concepts.h5"
        base = build_extractor(name, timesteps=[250, 500], layers=[0], seed=0, device="cpu")
        extract_dataset(ConceptAttentionExtractor(base, ds.classes), ds, path, limit=args.n_test, batch_size=16,
                        progress=False)
        for mode in ("output", "cross"):
            rec = zero_shot_segmentation(path, mode=mode, results_root=work / "zeroshot", overwrite="overwrite")
            rows.append((name, mode, rec))
    per = list(rows[0][2]["metrics"]["per_class_iou"])
    definition = base.family.concept_definition
    lines = [ZEROSHOT_HEADING, "",
             "Concept words = the class names (background included), encoded by each model's own text encoder as "
             f"its family's reference does (the SD3 definition, `{definition.reference}`: the words joined into one "
             "prompt, each word's tokens averaged, the start token kept in the concept stream; attention vectors "
             "before the output projections, the image side from the concept pass, concept vectors L2-normalised); "
             "a softmax over concepts per block and timestep, averaged over every joint block and timesteps "
             f"[250, 500]; argmax over concepts, scored on the first {args.n_test} test images. Predicting background everywhere scores "
             f"{_all_background(ds, args.n_test)} mIoU on them; every row here is below that: concept maps do not "
             "segment zero-shot on this backbone, trained or random. Its text conditioning is weak (its model "
             "card: the shape word changes the denoising loss by a few per cent), so this says more about the "
             "backbone than about the method: the code path is what the tests check "
             "(tests/test_concept_attention.py, tests/test_family_sd3.py, tests/test_family_flux.py).", "",
             "| backbone | maps | mIoU | pixel acc | " + " | ".join(per) + " |", "|---|---|---|---|" + "---|" * len(per)]
    for name, mode, rec in rows:
        m = rec["metrics"]
        cells = " | ".join("-" if v is None else scores.format_score(v, "fraction") for v in m["per_class_iou"].values())
        lines.append(f"| {name} | {mode} | {scores.format_score(m['mIoU'], 'fraction')} | "
                     f"{scores.format_score(m['pixel_acc'], 'fraction')} | {cells} |")
    return lines + [""]


def _all_background(ds, n: int) -> str:
    """The mIoU of predicting background everywhere on the first n images (the trivial floor)."""
    from probekit.probes.ceiling import grid_ceiling

    got = grid_ceiling((ds[i].seg for i in range(n)), 16, len(ds.classes), ds.ignore_index)
    return scores.format_score(got["all_background"], "fraction")


ZEROSHOT_HEADING = "## Concept attention: zero-shot segmentation (no training)"


def splice_zeroshot(page: str, section: list[str]) -> str:
    """The page with its zero-shot section replaced (up to the next '## ' heading or the end)."""
    start = page.index(ZEROSHOT_HEADING)
    after = page.find("\n## ", start + len(ZEROSHOT_HEADING))
    rest = page[after + 1:] if after != -1 else ""
    return page[:start] + "\n".join(section) + ("\n" + rest if rest else "")


def _noise_sentence() -> str:
    """How timesteps map to noise levels for the shipped model (its scheduler's shift)."""
    from probekit.backbone.model import shipped_shift
    from probekit.models.noise import NoiseSchedule

    k = shipped_shift()
    sched = NoiseSchedule(kind="flow", shift=k)
    levels = ", ".join(f"t = {t}: s = {sched.sigma(t):.2f}" for t in (50, 250, 500, 750))
    rule = "s = u" if k == 1 else f"s = {k:g}u / (1 + {k - 1:g}u)"
    return (f"- Timesteps are integers in [0, 1000]; with the model's flow shift of {k:g} the noise level (the "
            f"weight of the noise in x_t = (1 - s) x_0 + s eps) is {rule}, u = t/1000: {levels}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("build/results-shapeworld"))
    parser.add_argument("--n-train", type=int, default=512)
    parser.add_argument("--n-val", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[50, 250, 500, 750])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--storage-key", default=STORAGE_KEY)
    parser.add_argument("--zeroshot-only", action="store_true",
                        help="Recompute the zero-shot section alone and splice it into the present page.")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.zeroshot_only:
        page = HERE / "shapeworld.md"
        page.write_text(splice_zeroshot(page.read_text(), concept_zero_shot(args.work, args)))
        print(f"rewrote the zero-shot section of {page}")
        return
    spec = suite(args)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "suite.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    run_suite(parse_suite(spec, str(args.work / "suite.yaml")), progress=True)
    zeroshot = concept_zero_shot(args.work, args)
    ceiling = grid_ceiling_lines(args.work, args)
    page = render(args.work, args, (time.perf_counter() - started) / 60, zeroshot, ceiling)
    (HERE / "shapeworld.md").write_text(page)
    print(page)


if __name__ == "__main__":
    main()
