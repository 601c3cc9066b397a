"""`probekit demo`: the main job on the embedded default, end to end in a few minutes on a CPU.

For the shipped ShapeWorld MM-DiT and, as a control, the same architecture with random weights:

1. extract 4 timesteps x 2 blocks of ShapeWorld train and test images;
2. segmentation: every single (timestep, block) map (one seed), then the best of them on validation again over
   three seeds, and saliency and depth probes on that cell, so the `single` row has every task;
3. global fusion for every task over three seeds (the timestep-contribution heatmap's weights, with their
   spread); for segmentation also spatial fusion (its weight maps) and concatenation, one seed each;
4. the report: leaderboard (rows with seeds as mean ± std), timestep-contribution heatmaps, curves, spatial
   weight maps, qualitative panels.

The control runs the single maps and global fusion, one seed each. Probes use a shorter schedule than
`probekit probe`'s defaults (10 epochs, learning rates 3e-3 to 1e-1): on these features it reaches the
20-epoch scores within the seed-to-seed spread (docs/results/shapeworld.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BACKBONE = "shapeworld-mmdit"
CONTROL = "shapeworld-mmdit-random"
DEMO_LRS = (3e-3, 1e-2, 3e-2, 1e-1)
DEMO_EPOCHS = 10
SEEDS = 3


def _plan(keys: list[str], seeds: int, full: bool) -> list[dict[str, Any]]:
    """The probes of one backbone after its single-map grid (the best cell's are added once it is known)."""
    cells = [{"task": task, "fusion": "global", "seeds": seeds} for task in ("seg", "saliency", "depth")]
    if full:
        cells += [{"task": "seg", "fusion": "spatial", "seeds": 1}, {"task": "seg", "fusion": "concat", "seeds": 1}]
    return cells


def run_demo(out: str | Path = "probekit-demo", *, n_train: int = 256, n_test: int = 128,
             timesteps: Sequence[int] = (50, 250, 500, 750), layers: Sequence[int] = (2, 4),
             epochs: int | None = None, lrs: Sequence[float] = DEMO_LRS, seed: int = 0, control: bool = True,
             progress: bool = True, echo: Callable[[str], None] = print) -> dict[str, Path]:
    """ShapeWorld -> extract the shipped MM-DiT (and its random-init control) -> probes -> report."""
    from tqdm.auto import tqdm

    from probekit import scores
    from probekit.api import build_extractor, run_extraction
    from probekit.probes.trainer import train_probe
    from probekit.reports.report import write_report

    started = time.perf_counter()
    out = Path(out)
    epochs = epochs or DEMO_EPOCHS
    backbones = [(BACKBONE, SEEDS, True)] + ([(CONTROL, 1, False)] if control else [])
    keys = [f"t={t}/layer={layer}" for t in timesteps for layer in layers]
    total = sum(len(lrs) * (len(keys) + (n if n > 1 else 0) + 2 + sum(c["seeds"] for c in _plan(keys, n, full)))
                for _, n, full in backbones)
    bar = tqdm(total=total, desc="probes", unit="trial", disable=not progress)
    common = dict(epochs=epochs, lrs=list(lrs), results_root=out / "results", overwrite="overwrite",
                  progress=False, tick=lambda _: bar.update(1))

    def say(line: str) -> None:
        (bar.write if progress else echo)(line)

    def run(name: str, feats: dict[str, Path], cell: dict[str, Any]) -> dict[str, Any]:
        seeds = [seed + i for i in range(cell.get("seeds", 1))]
        rec = train_probe(feats["train"], feats["test"], task=cell["task"], fusion=cell["fusion"],
                          keys=cell.get("keys"), seeds=seeds, **common)
        unit = scores.info(rec["main_score_name"], rec)["unit"]
        say(f"{name:<24} {rec['task']:<8} {rec['main_score_name']:<5} "
            f"{scores.format_score(rec['main_score'], unit, rec.get('main_score_std')):>14}  {rec['probe']['name']}"
            + (f" ({len(seeds)} seeds)" if len(seeds) > 1 else ""))
        return rec

    for name, n_seeds, full in backbones:
        extractor = build_extractor(name, timesteps=list(timesteps), layers=list(layers), seed=seed, device="cpu")
        for note in extractor.notes():
            say(f"note: {note}")
        feats = {split: run_extraction(extractor, "shapeworld", split, out / "features" / name / f"{split}.h5",
                                       limit=n, batch_size=16, overwrite=True, progress=progress)
                 for split, n in (("train", n_train), ("test", n_test))}
        singles = [run(name, feats, {"task": "seg", "fusion": "single", "keys": [k]}) for k in keys]
        # The best cell by its validation score (never the test score), again over as many seeds as the fused
        # probes: the fair comparison; saliency and depth on the same cell.
        best = max(singles, key=lambda r: r["config"]["val_score"])["probe"]["feature_keys"]
        if n_seeds > 1:
            run(name, feats, {"task": "seg", "fusion": "single", "keys": best, "seeds": n_seeds})
        for task in ("saliency", "depth"):
            run(name, feats, {"task": task, "fusion": "single", "keys": best})
        for cell in _plan(keys, n_seeds, full):
            run(name, feats, cell)
    bar.close()
    written = write_report([out / "results"], out / "report")
    echo("")
    echo(written["leaderboard"].read_text())
    echo(f"done in {time.perf_counter() - started:.0f} s.\n  report:      {written['html']}\n"
         f"  tables:      {written['markdown']}  {written['csv']}  {written['leaderboard']}\n"
         f"  figures:     {out / 'report' / 'figures'}\n  runs:        {out / 'results'}")
    return written
