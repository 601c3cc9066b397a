"""Dataset -> extractor -> feature file: the extraction stage as a library function.

The work is cut into shards (probekit.shards): each finished shard is committed atomically, so a killed run
resumes where it stopped, and ranks of a distributed run take disjoint shards.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from probekit.datasets.base import LABEL_NAMES
from probekit.errors import ProbekitError, SampleError
from probekit.extractors.base import Extractor
from probekit.provenance import base_provenance
from probekit.shards import DEFAULT_SHARD_SIZE, ExtractionRun, Shard, open_run
from probekit.workers import Workers

ON_ERROR = ("raise", "skip")


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)


def _check_sample(sample, reference) -> None:
    """Raise SampleError when a sample cannot be stacked with the others (shape, labels)."""
    image = sample.image
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise SampleError(sample.id, f"image must be uint8 (H, W, 3), got {getattr(image, 'dtype', type(image))} "
                                     f"{getattr(image, 'shape', '')}")
    if reference is not None and image.shape != reference.image.shape:
        raise SampleError(sample.id, f"image is {image.shape[1]}x{image.shape[0]} but the dataset's images are "
                                     f"{reference.image.shape[1]}x{reference.image.shape[0]} (its loader should "
                                     "resize to one size)")
    for name in LABEL_NAMES:
        label = getattr(sample, name)
        if label is not None and label.shape[:2] != image.shape[:2]:
            raise SampleError(sample.id, f"label {name!r} is {label.shape[1]}x{label.shape[0]} but its image is "
                                         f"{image.shape[1]}x{image.shape[0]}")
        if reference is not None and (label is None) != (getattr(reference, name) is None):
            raise SampleError(sample.id, f"label {name!r} is {'missing' if label is None else 'present'} here but "
                                         f"{'present' if label is None else 'missing'} in {reference.id}")


def _load(dataset, index: int, reference, on_error: str, skipped: list[dict[str, Any]]):
    """dataset[index], checked; with on_error="skip" a bad sample is recorded and None returned."""
    try:
        sample = dataset[index]
        _check_sample(sample, reference)
        return sample
    except Exception as exc:  # noqa: BLE001 - a loader may fail in many ways; each is reported with its sample
        sample_id = exc.sample_id if isinstance(exc, SampleError) else dataset.sample_id(index)
        reason = exc.reason if isinstance(exc, SampleError) else f"{type(exc).__name__}: {exc}"
        if on_error != "skip":
            raise SampleError(sample_id, reason) from exc
        skipped.append({"id": sample_id, "index": int(index), "error": reason})
        return None


def run_fingerprint(extractor: Extractor, reference: dict[str, Any], num_samples: int) -> dict:
    """What determines the features: a rerun must match it to resume. Batch size, device index and --on-error
    do not count: a run stopped by a bad sample can go on with --on-error skip and keep its shards."""
    config = dict(extractor.config())
    if "device" in config:
        config["device"] = str(config["device"]).split(":")[0]  # ranks use cuda:0, cuda:1, ...
    return {"extractor": config, "weights": extractor.weights_identity(), "dataset": reference,
            "num_samples": num_samples}


def _extract_shard(extractor, dataset, run: ExtractionRun, shard: Shard, attrs, batch_size, on_error, bar) -> None:
    start = time.perf_counter()
    skipped: list[dict[str, Any]] = []
    samples = []
    for i in shard.positions():
        sample = _load(dataset, i, samples[0] if samples else None, on_error, skipped)
        if sample is not None:
            samples.append(sample)
    writer, tmp = run.shard_writer(shard, [s.id for s in samples], [s.index for s in samples], attrs)
    with writer:
        for a in range(0, len(samples), batch_size):
            batch = samples[a:a + batch_size]
            feats = extractor.extract(_to_tensor([s.image for s in batch]), [s.caption for s in batch],
                                      [s.index for s in batch])
            labels = {name: np.stack([getattr(s, name) for s in batch])
                      for name in LABEL_NAMES if getattr(batch[0], name) is not None}
            # float16 (the stored type) converted by torch: several times faster than numpy's astype
            writer.write_batch(range(a, a + len(batch)), {k: v.to(torch.float16).numpy() for k, v in feats.items()},
                               labels, [s.caption for s in batch])
            bar.update(len(batch))
        bar.update(len(skipped))
        writer.set_attr("skipped", skipped)
        writer.set_attr("extract_wall_time_s", round(time.perf_counter() - start, 3))
        writer.finalize()
    run.commit(shard, tmp)


def extract_dataset(extractor: Extractor, dataset, out: str | os.PathLike, *, limit: int | None = None,
                    batch_size: int = 8, overwrite: bool = False, progress: bool = True,
                    run_params: dict[str, Any] | None = None, shard_size: int = DEFAULT_SHARD_SIZE,
                    on_error: str = "raise", workers: Workers | None = None, echo=None) -> Path:
    """Extract features for the first ``limit`` samples of ``dataset`` into ``out`` (HDF5), resumably.

    ``on_error="skip"`` leaves out samples that fail to load or check, recording their ids and errors in the
    file's ``skipped`` attribute. ``workers`` splits the shards: torchrun ranks (rank 0 merges after a
    barrier) or independent ``--part I/N`` jobs (merged afterwards by ``merge_parts``). Returns ``out``, or the
    parts directory when this worker did not merge.
    """
    workers = workers or Workers()
    echo = echo or (lambda msg: None)
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    if n <= 0:
        raise ValueError(f"nothing to extract: the dataset has {len(dataset)} samples and limit is {limit}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    reference = dataset.reference()
    provenance = {
        **base_provenance(),
        "stage": "extract",
        "extractor": extractor.config(),
        "weights": extractor.weights_identity(),
        "dataset": reference,
        "run": {"limit": limit, "batch_size": batch_size, "shard_size": shard_size, "on_error": on_error,
                "world_size": workers.world_size, **(run_params or {})},
        "notes": extractor.notes(),
    }
    attrs = {
        "extractor": extractor.name, "timesteps": extractor.timesteps, "layers": extractor.layers,
        "seed": extractor.config().get("seed"), "ensemble": extractor.config().get("ensemble"),
        "dataset": reference, "provenance": provenance,
    }
    run = ExtractionRun(out, run_fingerprint(extractor, reference, n), n, shard_size)
    distributed_jobs = workers.world_size > 1 and not workers.distributed
    if distributed_jobs and overwrite:
        raise ProbekitError("--overwrite cannot be combined with --part: remove the output and its .parts "
                            "directory first, then start the parts")
    state = run.prepare(overwrite) if workers.is_main or distributed_jobs else None
    workers.barrier()  # rank 0 has created (or wiped) the parts directory
    if state is None:
        state = run.prepare(overwrite=False)
    if state == "finished":
        echo(f"{out} is already complete with these settings; nothing to do (--overwrite to redo it)")
        return Path(out)
    mine = [s for k, s in enumerate(run.shards) if k % workers.world_size == workers.rank]
    run.discard_temporaries(mine)
    pending = [s for s in mine if not run.is_done(s)]
    if state == "resumed" and workers.is_main:
        echo(f"resuming: {len(run.shards) - len(run.missing())} of {len(run.shards)} shards already done in {run.dir}")
    total = sum(s.stop - s.start for s in mine)
    desc = f"extract {extractor.name} -> {Path(out).name}"
    if workers.world_size > 1:
        desc += f" [part {workers.rank}/{workers.world_size}]"
    bar = tqdm(total=total, initial=total - sum(s.stop - s.start for s in pending), desc=desc, unit="img",
               disable=not progress)
    try:
        for shard in pending:
            _extract_shard(extractor, dataset, run, shard, attrs, batch_size, on_error, bar)
    except SampleError as exc:
        done = len(run.shards) - len(run.missing())
        raise ProbekitError(f"{exc}. {done} of {len(run.shards)} shards are done and kept in {run.dir}; fix the "
                            "input and rerun the same command to resume, or pass --on-error skip") from None
    finally:
        bar.close()
    workers.barrier()  # every rank's shards are committed
    if distributed_jobs:  # independent jobs cannot agree on who merges: the user does, once all are done
        echo(f"part {workers.rank}/{workers.world_size} done; {len(run.missing())} of {len(run.shards)} shards "
             f"remain. When every part is done: probekit merge {out}")
        return run.dir
    if not workers.is_main:
        return run.dir
    path = run.merge()
    echo(f"wrote {path}")
    return path


def merge_parts(out: str | os.PathLike) -> Path:
    """Join the shards of OUT.parts into OUT (after ``--part`` jobs, or to finish an interrupted merge)."""
    return open_run(out).merge()

