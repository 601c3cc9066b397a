"""A small randomly initialised pixel-space MM-DiT (diffusers SD3Transformer2DModel).

It is built from a seed, saved with ``save_pretrained`` into probekit's cache and loaded back with
``from_pretrained``, so it runs the exact code path of a downloaded model. It has never been
trained: its features are a control, not a result.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

TINY_MMDIT_CONFIG: dict[str, Any] = {
    "sample_size": 64, "patch_size": 4, "in_channels": 3, "out_channels": 3, "num_layers": 4,
    "attention_head_dim": 32, "num_attention_heads": 4, "joint_attention_dim": 64,
    "caption_projection_dim": 128, "pooled_projection_dim": 64, "pos_embed_max_size": 32,
}
SCHEDULER_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}




def build_tiny_mmdit(folder: str | os.PathLike, seed: int = 0, config: dict[str, Any] | None = None) -> Path:
    """Write a random-init tiny MM-DiT as a diffusers folder (transformer/ + scheduler/); returns it."""
    import torch
    from diffusers import SD3Transformer2DModel

    folder = Path(folder)
    if (folder / "transformer" / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".building-"))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = SD3Transformer2DModel(**(config or TINY_MMDIT_CONFIG))
        model.save_pretrained(tmp / "transformer")
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
        (tmp / "README.md").write_text(f"Randomly initialised SD3Transformer2DModel (seed {seed}); never trained.\n")
        try:
            tmp.rename(folder)  # atomic: a half-built folder is never visible under its final name
        except OSError:
            if not (folder / "transformer" / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
