"""The backbone's training images rendered once into a memory map, so a training step costs the model, not
the renderer (rendering ShapeWorld bounded GPU training at about 1,500 images/s on 14 loader processes).

``cache_dir()/shapeworld-<split>-<key>/``::

    images.u8     (N, H, W, 3) uint8, row i = dataset[i] (a sparse file: only rendered rows take disk space)
    captions.json the captions of the rows rendered so far
    progress.json rows rendered so far (written after each chunk is flushed: a kill loses at most one chunk)

Rows are rendered in order, as many as a run needs (steps x batch size, or the whole split), and a later run
that needs more extends the same cache.

``key`` is a hash of the dataset reference (manifest sha256, seed, image size, scene overrides, size), so a
changed manifest or scene never reads a stale cache. Building is resumable and shows a progress bar; the
images read back are exactly what rendering gives (tested), so training from the cache changes nothing but
speed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from probekit import atomic
from probekit.provenance import cache_dir

CHUNK = 1024


class Rendered:
    """The same interface as the cache, rendering each image when asked."""

    def __init__(self, dataset):
        self.dataset = dataset

    def item(self, i: int) -> tuple[np.ndarray, str]:
        sample = self.dataset[i]
        return sample.image, sample.caption

    def __len__(self) -> int:
        return len(self.dataset)


class ImageCache:
    def __init__(self, dataset, root: str | Path | None = None):
        self.dataset = dataset
        ref = dataset.reference()
        key = hashlib.sha256(json.dumps(ref, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.dir = Path(root or cache_dir()) / f"shapeworld-{dataset.split}-{key}"
        self.size, self.shape = len(dataset), (dataset.image_size, dataset.image_size, 3)
        self._images: np.memmap | None = None
        self._captions: list[str] | None = None

    @property
    def done(self) -> int:
        path = self.dir / "progress.json"
        return int(json.loads(path.read_text())["rows"]) if path.is_file() else 0

    @property
    def complete(self) -> bool:
        return self.done == self.size

    def build(self, rows: int | None = None, progress: bool = True, log=print, workers: int = 0) -> "ImageCache":
        """Render rows up to ``rows`` (default: all) that are not there yet, resuming an earlier build;
        ``workers`` > 1 renders chunks in that many processes (the rows are the same: each is a pure function of
        its index)."""
        from tqdm.auto import tqdm

        target = self.size if rows is None else min(int(rows), self.size)
        start = self.done
        if start >= target:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "images.u8"
        if not path.is_file():
            np.memmap(path, dtype=np.uint8, mode="w+", shape=(self.size, *self.shape)).flush()
        captions_path = self.dir / "captions.json"
        captions = json.loads(captions_path.read_text())[:start] if captions_path.is_file() else []
        if start:
            log(f"resuming the image cache at {start} of {target} images ({self.dir})")
        bar = tqdm(total=target, initial=start, desc="render training images", unit="img", disable=not progress)
        chunks = [(self.dataset, str(path), (self.size, *self.shape), a, min(a + CHUNK, target))
                  for a in range(start, target, CHUNK)]
        pool = None
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            pool = ProcessPoolExecutor(workers)
        try:
            # in order, so progress.json only ever counts rows that are all on disk
            for stop, chunk_captions in (pool.map(_render_chunk, chunks) if pool else map(_render_chunk, chunks)):
                captions.extend(chunk_captions)
                atomic.write_text(captions_path, json.dumps(captions))
                atomic.write_text(self.dir / "progress.json", json.dumps({"rows": stop}))
                bar.update(len(chunk_captions))
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)
            bar.close()
        self._images = None
        return self

    def _open(self) -> None:
        if self._images is None:
            self._images = np.memmap(self.dir / "images.u8", dtype=np.uint8, mode="r",
                                     shape=(self.size, *self.shape))
            self._captions = json.loads((self.dir / "captions.json").read_text())

    def item(self, i: int) -> tuple[np.ndarray, str]:
        """(uint8 image, caption) of row ``i``, as ``dataset[i]`` renders them."""
        self._open()
        if i >= len(self._captions):
            raise IndexError(f"row {i} of the image cache {self.dir} is not rendered yet (build it further)")
        return np.asarray(self._images[i]), self._captions[i]

    def __len__(self) -> int:
        return self.size


def _render_chunk(task) -> tuple[int, list[str]]:
    """Render rows [a, b) into the memory map; returns (b, their captions)."""
    dataset, path, shape, a, b = task
    images = np.memmap(path, dtype=np.uint8, mode="r+", shape=shape)
    captions = []
    for i in range(a, b):
        sample = dataset[i]
        images[i] = sample.image
        captions.append(sample.caption)
    images.flush()
    del images
    return b, captions
