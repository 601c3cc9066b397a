"""A probe run brought back to life: its record, its task and its weights (``probekit generate`` labels
generated images with it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from probekit.errors import ProbekitError
from probekit.probes.model import Probe
from probekit.results import read_record


class TrainedProbe:
    """A trained probe (fusion + head) rebuilt from its run directory, ready to predict on new features."""

    def __init__(self, run_dir: str | Path):
        from safetensors.torch import load_file

        from probekit.registries import FUSIONS, HEADS, TASKS

        self.run_dir = Path(run_dir)
        if not (self.run_dir / "result.json").is_file():
            raise ProbekitError(f"{self.run_dir} holds no result.json (a probe run directory is needed)")
        self.record = read_record(self.run_dir)
        probe, cfg = self.record["probe"], self.record["config"]
        if probe.get("guidance_keys") or probe.get("fusion") not in FUSIONS:  # zero-shot maps: no fusion to rebuild
            raise ProbekitError(f"{self.run_dir}: guided and zero-shot probes cannot label generated images")
        self.task_name = self.record["task"]
        reference = {"classes": cfg["task_config"].get("classes"), "ignore_index": cfg["task_config"].get("ignore_index"),
                     "depth_range": cfg["task_config"].get("depth_range")}
        self.task = TASKS.build(self.task_name, reference=reference, depth_output=cfg.get("depth_output", "bins"))
        self.keys = list(probe["feature_keys"])
        self.model = Probe(probe["fusion"], HEADS.get(probe["head"]).load(), self.keys, probe["in_channels"],
                           self.task.out_channels, cfg.get("fusion_dim"),
                           head_transform=getattr(self.task, "head_transform", None),
                           fusion_level=cfg.get("fusion_level", "features"))
        self.model.load_state_dict(load_file(str(self.run_dir / probe.get("head_weights", "head.safetensors"))))
        self.model.eval()
        extractor = self.record["features"]["train"]["provenance"].get("extractor", {})
        self.extractor = extractor
        self.conditioning = extractor.get("conditioning", "empty")
        self.weights_files = self.record["features"]["train"]["provenance"].get("weights", {}).get("files", {})

    def predict(self, feats: dict[str, torch.Tensor], size: tuple[int, int]) -> np.ndarray:
        with torch.inference_mode():
            return self.task.predict(self.model(feats, size)).cpu().numpy()
