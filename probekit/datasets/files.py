"""Benchmark datasets read from a user's copy on disk, driven by their manifests in data_manifests/.

A manifest says where each split's files are under the dataset's root and how to decode its labels; see
docs/datasets.md for the schema. Every path is resolved and must stay inside the root (a list file or a
symlink that points elsewhere is refused). Images are brought to the manifest's probe size (short side
resized and centre-cropped to a square, or resized to an exact (H, W)); labels follow with nearest
neighbour, so one batch stacks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from probekit.datasets.base import LABEL_NAMES, Sample, load_manifest, params_hash
from probekit.errors import ProbekitError, SampleError

ENV_ROOT = "PROBEKIT_DATA"


@dataclass
class Entry:
    """One sample's files, as paths relative to the dataset root."""

    id: str
    image: str
    labels: dict[str, str | None] = field(default_factory=dict)


def resolve_root(name: str, manifest: dict[str, Any], root: str | os.PathLike | None) -> Path:
    """``root`` if given, else ``$PROBEKIT_DATA/<manifest default_dir>``."""
    if root is None:
        base = os.environ.get(ENV_ROOT)
        if not base:
            raise ProbekitError(f"where is your copy of {name}? Pass its folder (the one that holds "
                                f"{_top_level(manifest)}) as --data-root DIR (--root for `probekit data check`), "
                                f"or set {ENV_ROOT} to a folder holding {manifest.get('default_dir', name)}/")
        root = Path(base) / manifest.get("default_dir", name)
    root = Path(root)
    if not root.is_dir():
        raise ProbekitError(f"data root {root} for {name} is not a directory")
    return root


def _top_level(manifest: dict[str, Any]) -> str:
    first = next(iter(manifest.get("splits", {}).values()), {})
    spec = first.get("images") or first.get("ids") or first.get("pairs") or {}
    text = spec.get("glob") if isinstance(spec, dict) else spec
    if isinstance(spec, dict) and "file" in spec:
        text = spec["file"]
    return str(text).split("/")[0] + "/" if text else "its files"


def confined(root: Path, relative: str, what: str) -> Path:
    """root/relative, refused when it (after symlinks and '..') leaves the root."""
    rel = relative.strip()
    if rel.startswith("/"):
        rel = rel.lstrip("/")  # list files of some datasets write root-relative paths with a leading '/'
    path = (root / rel).resolve()
    base = root.resolve()
    if path != base and base not in path.parents:
        raise ProbekitError(f"{what}: path {relative!r} escapes the data root {root} (resolves to {path}); "
                            "probekit reads only files inside the root")
    return path


def _fill(template: str, **values: str) -> str:
    try:
        return template.format(**values)
    except KeyError as exc:
        raise ProbekitError(f"manifest template {template!r} uses unknown field {exc}; known: "
                            f"{', '.join(values)}") from None


def list_entries(root: Path, spec: dict[str, Any], where: str) -> list[Entry]:
    """The samples of one split, from a glob, an id list file or a pairs list file (see docs/datasets.md)."""
    kinds = [k for k in LABEL_NAMES if k in spec]
    entries: list[Entry] = []
    if "images" in spec:  # glob over image files; labels from templates with {id}, {stem}, {parent}
        pattern = spec["images"]["glob"]
        strip = spec["images"].get("strip_suffix", "")
        for path in sorted(root.glob(pattern)):
            rel = path.relative_to(root).as_posix()  # a symlink out of the root is refused when read
            stem = path.stem
            ident = stem[: -len(strip)] if strip and stem.endswith(strip) else stem
            values = {"id": ident, "stem": stem, "parent": path.parent.name}
            entries.append(Entry(ident, rel, {k: _fill(spec[k], **values) for k in kinds}))
    elif "ids" in spec:  # a list file of ids, one per line
        list_path = confined(root, spec["ids"], where)
        if not list_path.is_file():
            raise ProbekitError(f"{where}: split list {spec['ids']} is missing under {root}")
        for line in list_path.read_text().splitlines():
            ident = line.strip()
            if ident:
                entries.append(Entry(ident, _fill(spec["image"], id=ident),
                                     {k: _fill(spec[k], id=ident) for k in kinds}))
    elif "pairs" in spec:  # a list file of "image label [extra...]" lines
        pairs = spec["pairs"]
        list_path = confined(root, pairs["file"], where)
        if not list_path.is_file():
            raise ProbekitError(f"{where}: split list {pairs['file']} is missing under {root}")
        image_base, label_base = pairs.get("image_base", ""), pairs.get("label_base", "")
        (kind,) = kinds
        for number, line in enumerate(list_path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise ProbekitError(f"{list_path}:{number}: expected 'image label ...', got {line!r}")
            image = f"{image_base}/{parts[0].lstrip('/')}" if image_base else parts[0]
            label = None if parts[1] == "None" else (f"{label_base}/{parts[1].lstrip('/')}" if label_base
                                                     else parts[1])
            ident = Path(parts[0].lstrip("/")).with_suffix("").as_posix()
            entries.append(Entry(ident, image, {kind: label}))
    else:
        raise ProbekitError(f"{where}: the manifest gives neither 'images', 'ids' nor 'pairs'")
    return entries


def read_image(path: Path, sample_id: str) -> Image.Image:
    if not path.is_file():
        raise SampleError(sample_id, f"image file {path} is missing")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated or corrupt file fails here, naming itself
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise SampleError(sample_id, f"image file {path} cannot be read (corrupt or not an image): {exc}") from None


def read_label_array(path: Path | None, kind: str, sample_id: str) -> np.ndarray:
    if path is None:
        raise SampleError(sample_id, f"the split list gives no {kind} label")
    if not path.is_file():
        raise SampleError(sample_id, f"{kind} label file {path} is missing")
    try:
        with Image.open(path) as im:
            im.load()
            # Palette PNGs (VOC) hold class indices: read the indices, never the colours.
            return np.array(im if im.mode in ("P", "L", "I", "I;16", "I;16B", "F", "1") else im.convert("L"))
    except (OSError, ValueError) as exc:
        raise SampleError(sample_id, f"{kind} label file {path} cannot be read: {exc}") from None


def decode_label(raw: np.ndarray, kind: str, spec: dict[str, Any], num_classes: int, ignore_index: int,
                 sample_id: str, path: Path) -> np.ndarray:
    """Raw label pixels -> probekit's convention (seg ids with ignore, depth metres, saliency 0/1)."""
    if kind == "seg":
        raw = raw.astype(np.int64)
        if spec.get("id_map") is not None:  # e.g. Cityscapes label ids -> 19 train ids, the rest ignored
            lut = np.full(max(256, raw.max() + 1), ignore_index, dtype=np.int64)
            for src, dst in spec["id_map"].items():
                lut[int(src)] = int(dst)
            raw = lut[raw]
        elif spec.get("reduce_zero_label"):  # ADE20K: 0 is "other", 1..150 are the classes
            raw = np.where(raw == 0, ignore_index, raw - 1)
        bad = (raw != ignore_index) & ((raw < 0) | (raw >= num_classes))
        if bad.any():
            values = sorted(set(np.unique(raw[bad]).tolist()))[:5]
            raise SampleError(sample_id, f"seg label {path} has values {values} outside 0..{num_classes - 1} "
                                         f"and the ignore index {ignore_index}")
        return raw.astype(np.uint8)
    if kind == "depth":
        return raw.astype(np.float32) * float(spec.get("scale", 1.0))
    if kind == "saliency":
        return (raw.astype(np.float32) > float(spec.get("threshold", 128))).astype(np.uint8)
    raise ProbekitError(f"unknown label kind {kind!r}")


def fit(image: Image.Image, size: int | list[int], resample) -> Image.Image:
    """Short side -> size and centre crop to size x size (int), or resize to exactly (H, W) (pair)."""
    if isinstance(size, (list, tuple)):
        h, w = int(size[0]), int(size[1])
        return image.resize((w, h), resample)
    s = int(size)
    w, h = image.size
    scale = s / min(w, h)
    nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
    image = image.resize((nw, nh), resample)
    left, top = (nw - s) // 2, (nh - s) // 2
    return image.crop((left, top, left + s, top + s))


class FolderDataset:
    """A benchmark dataset (ADE20K, VOC, Cityscapes, NYUv2, DUTS, ...) from the user's copy under ``root``."""

    def __init__(self, manifest: str, split: str = "test", root: str | os.PathLike | None = None,
                 image_size: int | list[int] | None = None):
        self.manifest, self.manifest_sha256 = load_manifest(manifest)
        self.name = self.manifest["name"]
        splits = self.manifest.get("splits", {})
        if split not in splits:
            raise ProbekitError(f"{self.name} has splits {', '.join(splits)}; got {split!r}")
        self.split = split
        self.spec = splits[split]
        self.root = resolve_root(self.name, self.manifest, root)
        self.classes = list(self.manifest.get("classes") or [])
        self.ignore_index = int(self.manifest.get("ignore_index", 255))
        self.depth_range = self.manifest.get("depth_range")
        self.label_specs: dict[str, dict[str, Any]] = self.manifest.get("labels", {})
        self.image_size = image_size if image_size is not None else self.manifest["protocol"]["probe"]["size"]
        self.entries = list_entries(self.root, self.spec, f"{self.name} {split}")
        if not self.entries:
            raise ProbekitError(f"{self.name} {split}: no samples found under {self.root} (expected "
                                f"{self.spec.get('count', '?')}); run `probekit data check {self.name} --root "
                                f"{self.root}` to see what is missing")

    def __len__(self) -> int:
        return len(self.entries)

    def sample_id(self, position: int) -> str:
        return f"{self.name}/{self.split}/{self.entries[position].id}"

    def __getitem__(self, position: int) -> Sample:
        if not 0 <= position < len(self.entries):
            raise IndexError(f"{self.name} {self.split} has {len(self.entries)} samples; {position} is out of range")
        entry, sid = self.entries[position], self.sample_id(position)
        image = read_image(confined(self.root, entry.image, sid), sid)
        labels: dict[str, np.ndarray] = {}
        for kind, rel in entry.labels.items():
            path = confined(self.root, rel, sid) if rel is not None else None
            raw = read_label_array(path, kind, sid)
            if raw.shape[:2] != (image.height, image.width):
                raise SampleError(sid, f"{kind} label {path} is {raw.shape[1]}x{raw.shape[0]} but its image "
                                       f"{entry.image} is {image.width}x{image.height}")
            value = decode_label(raw, kind, self.label_specs.get(kind, {}), len(self.classes), self.ignore_index,
                                 sid, path)
            mode_image = Image.fromarray(value)
            labels[kind] = np.asarray(fit(mode_image, self.image_size, Image.NEAREST))
        pixels = np.asarray(fit(image, self.image_size, Image.BILINEAR), dtype=np.uint8)
        return Sample(id=sid, index=position, image=pixels, caption="", meta={"file": entry.image}, **labels)

    def reference(self) -> dict[str, Any]:
        # The root is where this copy lives, not what the samples are: recorded, but outside the hashed params.
        params = {"image_size": self.image_size}
        ref = {"dataset": self.name, "split": self.split, "manifest_sha256": self.manifest_sha256,
               "params": params, "params_hash": params_hash(params), "size": len(self.entries),
               "classes": self.classes, "ignore_index": self.ignore_index, "depth_range": self.depth_range,
               "root": str(self.root.resolve())}
        if self.manifest.get("eval_crop"):
            ref["eval_crop"] = list(self.manifest["eval_crop"])
        return ref
