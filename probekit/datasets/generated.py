"""A dataset written by `probekit generate` (images + labels predicted by trained heads), loaded from its folder."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from probekit.datasets.base import Sample, params_hash
from probekit.errors import ProbekitError


class GeneratedDataset:
    name = "generated"

    def __init__(self, root: str | Path, split: str = "train", size: int | None = None):
        self.root = Path(root)
        path = self.root / "manifest.yaml"
        if not path.is_file():
            raise ProbekitError(f"{self.root} has no manifest.yaml (not a generated dataset)")
        raw = path.read_bytes()
        self.manifest: dict[str, Any] = yaml.safe_load(raw)
        self.manifest_sha256 = hashlib.sha256(raw).hexdigest()
        if split != "train":
            raise ProbekitError(f"a generated dataset has one split, 'train'; got {split!r}")
        self.split = split
        self.classes = self.manifest.get("classes") or []
        self.ignore_index = int(self.manifest.get("ignore_index", 255))
        self.depth_range = self.manifest.get("depth_range")
        self.prompts = self.manifest.get("prompts") or []
        written = sorted(int(p.stem) for p in (self.root / "images").glob("[0-9]*.png") if p.stem.isdigit())
        self.indices = written[:size] if size is not None else written

    def __len__(self) -> int:
        return len(self.indices)

    def sample_id(self, position: int) -> str:
        return f"generated/{self.manifest.get('name', self.root.name)}/{self.indices[position]:06d}"

    def _png(self, sub: str, index: int) -> np.ndarray | None:
        path = self.root / sub / f"{index:06d}.png"
        if not path.is_file():
            return None
        try:
            with Image.open(path) as im:
                return np.array(im)
        except OSError as exc:
            raise ProbekitError(f"{path} is not a readable image: {exc}") from None

    def __getitem__(self, position: int) -> Sample:
        if not 0 <= position < len(self.indices):
            raise IndexError(f"{self.root} has {len(self.indices)} samples; {position} is out of range")
        i = self.indices[position]
        image = self._png("images", i)
        seg = self._png("seg", i)
        depth = self._png("depth", i)
        sal = self._png("saliency", i)
        return Sample(
            id=self.sample_id(position), index=position, image=image[..., :3],
            seg=None if seg is None else seg.astype(np.uint8),
            depth=None if depth is None else (depth.astype(np.float32) * float(self.manifest["depth_scale"])),
            saliency=None if sal is None else (sal > 127).astype(np.uint8),
            caption=self.prompts[i] if i < len(self.prompts) else "", meta={"generated_index": i})

    def reference(self) -> dict[str, Any]:
        params = {"root": str(self.root.resolve()), "size": len(self.indices)}
        return {"dataset": self.name, "split": self.split, "manifest_sha256": self.manifest_sha256,
                "params": params, "params_hash": params_hash(params), "size": len(self.indices),
                "classes": self.classes, "ignore_index": self.ignore_index, "depth_range": self.depth_range}
