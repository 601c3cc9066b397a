"""Linear seg probes of candidate backbones, so a training lever is judged by what probes read, not only by
samples: for each NAME=FOLDER, extract ShapeWorld train/val/test (512/200/300 images, t = 50, 250, 750 at
blocks 3 and 5, the empty prompt) and probe each map alone (learning rates 1e-2, 3e-2, 1e-1 chosen on val, seed 0).

    python docs/backbones/lever_probes.py --work build/cand shipped=probekit/backbone/weights/shapeworld-mmdit \
        lr3e-3=build/sweep/w128-d6-p4-lr3e-3/model-step4000

writes docs/backbones/lever-probes.json ({name: {folder, "t=50/layer=5": test mIoU, ...}}). Resumable: finished
feature files and probe runs are kept (the CLI's own resume and --skip-existing).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPLITS = {"train": 512, "val": 200, "test": 300}
TIMESTEPS, LAYERS, LRS = "50,250,750", "3,5", "0.01,0.03,0.1"


def _probekit(*words: str) -> None:
    subprocess.run([sys.executable, "-m", "probekit", "--threads", "2", *words], check=True)


def probe_backbone(name: str, folder: str, work: Path) -> dict:
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    for split, n in SPLITS.items():
        if not (out / f"{split}.h5").is_file():
            _probekit("extract", "-e", "shapeworld-mmdit", "-w", folder, "-s", split, "--limit", str(n), "-t",
                      TIMESTEPS, "-l", LAYERS, "-b", "16", "--device", "cpu", "-o", str(out / f"{split}.h5"), "-q")
    for t in TIMESTEPS.split(","):
        for layer in LAYERS.split(","):
            _probekit("probe", "-f", str(out / "train.h5"), "-V", str(out / "val.h5"), "-E", str(out / "test.h5"),
                      "--task", "seg", "--fusion", "single", "--timestep", t, "--layer", layer, "--lrs", LRS,
                      "--results-root", str(out / "results"), "-q", "--skip-existing")
    scores = {"folder": folder}
    for record in sorted((out / "results").rglob("linear-single-*/result.json")):
        r = json.loads(record.read_text())
        scores[r["config"]["keys"][0]] = round(100 * r["main_score"], 2)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", metavar="NAME=FOLDER")
    parser.add_argument("--work", type=Path, default=Path("build/lever-probes"))
    parser.add_argument("--out", type=Path, default=HERE / "lever-probes.json")
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for item in args.models:
        name, _, folder = item.partition("=")
        results[name] = probe_backbone(name, folder, args.work)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(name, results[name], flush=True)


if __name__ == "__main__":
    main()
