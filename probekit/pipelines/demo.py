"""`probekit demo`: the main job on the embedded default, end to end in a few minutes on a CPU."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

BACKBONE = "shapeworld-mmdit"
CONTROL = "shapeworld-mmdit-random"


def run_demo(out: str | Path = "probekit-demo", *, n_train: int = 256, n_test: int = 128,
             timesteps: Sequence[int] = (50, 250, 500, 750), layers: Sequence[int] = (2, 4), epochs: int = 10,
             lrs: Sequence[float] = (1e-2,), seed: int = 0, control: bool = True, progress: bool = True,
             echo: Callable[[str], None] = print) -> dict[str, Path]:
    """ShapeWorld -> extract the shipped MM-DiT (and its random-init control) at every (t, layer) -> linear
    probes: the segmentation grid (each map, concat, global, spatial) and fused saliency and depth probes
    -> report (HTML page, tables, figures)."""
    from probekit.api import build_extractor, run_extraction
    from probekit.probes.grid import run_grid
    from probekit.probes.trainer import train_probe
    from probekit.reports.report import write_report

    started = time.perf_counter()
    out = Path(out)
    backbones = [BACKBONE, CONTROL] if control else [BACKBONE]
    for name in backbones:
        extractor = build_extractor(name, timesteps=list(timesteps), layers=list(layers), seed=seed, device="cpu")
        for note in extractor.notes():
            echo(f"note: {note}")
        feats = {}
        for split, n in (("train", n_train), ("test", n_test)):
            feats[split] = run_extraction(extractor, "shapeworld", split, out / "features" / name / f"{split}.h5",
                                          limit=n, batch_size=16, overwrite=True, progress=progress)
        # Segmentation: the whole ablation grid; saliency and depth: the fused probes (for the heatmaps).
        run_grid(feats["train"], feats["test"], task="seg", head="linear", epochs=epochs, lrs=list(lrs), seed=seed,
                 results_root=out / "results", overwrite="overwrite", progress=False,
                 echo=lambda line, name=name: echo(f"{name:<24} {line}"))
        for task in ("saliency", "depth"):
            for fusion in ("global", "spatial"):
                rec = train_probe(feats["train"], feats["test"], task=task, fusion=fusion, head="linear",
                                  epochs=epochs, lrs=list(lrs), seed=seed, results_root=out / "results", overwrite="overwrite",
                                  progress=False)
                shown = f"{100 * rec['main_score']:6.2f}" if task == "saliency" else f"{rec['main_score']:.3f} m"
                echo(f"{name:<24} {task} {rec['main_score_name']} {shown}  {rec['probe']['name']}")
    written = write_report([out / "results"], out / "report")
    echo("")
    echo(written["leaderboard"].read_text())
    echo(f"done in {time.perf_counter() - started:.0f} s.\n  report:      {written['html']}\n"
         f"  tables:      {written['markdown']}  {written['csv']}  {written['leaderboard']}\n"
         f"  figures:     {out / 'report' / 'figures'}\n  runs:        {out / 'results'}")
    return written
