"""Miniature copies of the benchmark datasets in their real layouts (files generated here, nothing downloaded).

The layouts are written from the datasets' own distributions, independently of the manifests, so a manifest
that disagrees with the real layout fails the tests that use them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

RNG = np.random.default_rng(0)
H, W = 30, 40


def image_file(path: Path, h: int = H, w: int = W) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def label_file(path: Path, values, h: int = H, w: int = W, dtype=np.uint8, palette: bool = False) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = RNG.choice(np.asarray(values), size=(h, w)).astype(dtype)
    im = Image.fromarray(arr)
    if palette:  # VOC stores class indices in a palette PNG
        im = im.convert("P")
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
        im.putdata(arr.ravel().tolist())
    im.save(path)
    return arr


def saliency_file(path: Path) -> None:
    label_file(path, [0, 255])


CITY_IDS = [0, 1, 7, 8, 11, 21, 23, 24, 26, 33]


def build(name: str, root: Path, n: int = 3) -> Path:
    """A miniature copy of ``name`` with ``n`` samples per split, in the dataset's real layout."""
    if name == "ade20k":
        for split, tag in (("training", "train"), ("validation", "val")):
            for i in range(1, n + 1):
                image_file(root / f"ADEChallengeData2016/images/{split}/ADE_{tag}_{i:08d}.jpg")
                label_file(root / f"ADEChallengeData2016/annotations/{split}/ADE_{tag}_{i:08d}.png", range(0, 151))
    elif name == "voc2012":
        base = root / "VOCdevkit/VOC2012"
        for split in ("train", "val"):
            ids = [f"2007_{split}{i:03d}" for i in range(n)]
            (base / "ImageSets/Segmentation").mkdir(parents=True, exist_ok=True)
            (base / f"ImageSets/Segmentation/{split}.txt").write_text("\n".join(ids) + "\n")
            for ident in ids:
                image_file(base / f"JPEGImages/{ident}.jpg")
                label_file(base / f"SegmentationClass/{ident}.png", list(range(21)) + [255], palette=True)
    elif name == "cityscapes":
        for split, city in (("train", "aachen"), ("val", "frankfurt")):
            for i in range(n):
                stem = f"{city}_000000_{i:06d}"
                image_file(root / f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png")
                label_file(root / f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png", CITY_IDS)
                label_file(root / f"gtFine/{split}/{city}/{stem}_gtFine_color.png", [0, 10])  # present in real copies
    elif name == "nyuv2":
        for listing, base in (("nyudepthv2_train_files_with_gt.txt", "sync"),
                              ("nyudepthv2_test_files_with_gt.txt", "official_splits/test")):
            lines = []
            for i in range(n):
                scene = "kitchen_0004" if i % 2 else "bathroom_0001"
                image_file(root / f"{base}/{scene}/rgb_{i:05d}.jpg", 48, 64)
                label_file(root / f"{base}/{scene}/sync_depth_{i:05d}.png", [0, 800, 2500, 9000], 48, 64, np.uint16)
                lines.append(f"{'/' if base == 'sync' else ''}{scene}/rgb_{i:05d}.jpg "
                             f"{'/' if base == 'sync' else ''}{scene}/sync_depth_{i:05d}.png 518.8579")
            (root / listing).write_text("\n".join(lines) + "\n")
    elif name == "duts":
        for split in ("TR", "TE"):
            for i in range(n):
                image_file(root / f"DUTS-{split}/DUTS-{split}-Image/ILSVRC2012_test_{i:08d}.jpg")
                saliency_file(root / f"DUTS-{split}/DUTS-{split}-Mask/ILSVRC2012_test_{i:08d}.png")
    elif name == "ecssd":
        for i in range(1, n + 1):
            image_file(root / f"images/{i:04d}.jpg")
            saliency_file(root / f"ground_truth_mask/{i:04d}.png")
    elif name == "dut-omron":
        for i in range(n):
            image_file(root / f"DUT-OMRON-image/im{i:03d}.jpg")
            saliency_file(root / f"pixelwiseGT-new-PNG/im{i:03d}.png")
    elif name == "hku-is":
        for i in range(n):
            image_file(root / f"imgs/{i:04d}.png")
            saliency_file(root / f"gt/{i:04d}.png")
    else:
        raise ValueError(name)
    return root
