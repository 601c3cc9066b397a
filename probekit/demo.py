"""`probekit demo`: the main job on the embedded default, end to end in a few minutes on a CPU."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

BACKBONE = "shapeworld-mmdit"
CONTROL = "shapeworld-mmdit-random"


def run_demo(out: str | Path = "probekit-demo", *, n_train: int = 256, n_test: int = 128,
             timesteps: Sequence[int] = (50, 250, 500, 750), layers: Sequence[int] = (2, 4), epochs: int = 10,
             seed: int = 0, control: bool = True, progress: bool = True,
             echo: Callable[[str], None] = print) -> dict[str, Path]:
    """ShapeWorld -> extract the shipped MM-DiT (and its random-init control) at every (t, layer)
    -> a linear segmentation probe on each -> Markdown/CSV tables."""
    from probekit.api import build_extractor, run_extraction
    from probekit.probes.trainer import train_probe
    from probekit.reports.tables import write_tables
    from probekit.store import feature_key

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
        for t in extractor.timesteps:
            for layer in extractor.layers:
                record = train_probe(feats["train"], feats["test"], task="seg", key=feature_key(t, layer),
                                     head="linear", epochs=epochs, seed=seed, results_root=out / "results",
                                     overwrite="overwrite", progress=False)  # one line per probe, not a bar each
                echo(f"{name:<24} seg mIoU {100 * record['main_score']:6.2f}  t={t:<4} layer={layer}")
    written = write_tables([out / "results"], out / "report")
    echo("")
    echo(written["markdown"].read_text())
    echo(f"done in {time.perf_counter() - started:.0f} s. Table: {written['markdown']}  CSV: {written['csv']}  "
         f"runs: {out / 'results'}")
    return written
