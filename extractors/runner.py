"""Dataset -> extractor -> feature file: the extraction stage as a library function.

The work is cut into shards (``extractors/shards.py``): each finished shard is committed atomically, so a
killed run resumes where it stopped, and ranks of a distributed run take disjoint shards. Three things
overlap, so the device never waits for the disk when the disk can keep up:

- a loader thread reads and checks the next batch of images (``probekit.prefetch``);
- the main thread runs the model, reduces each map on the device (pooling, projection, the storage dtype:
  ``extractors/storage.py``) and starts non-blocking copies into pinned host memory;
- the writer thread (``extractors/writer.py``) waits for the copies, writes HDF5 and commits shards.

Before the first forward the plan (maps, shapes, bytes) is printed and checked against the free space of the
output's disk (``extractors/plan.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from probekit.datasets.base import LABEL_NAMES
from probekit.errors import DiskFullError, FeatureFileError, ProbekitError, SampleError, is_disk_full
from probekit.extractors.base import Extractor
from probekit.extractors.plan import ExtractionPlan, free_bytes
from probekit.extractors.shards import DEFAULT_SHARD_SIZE, ExtractionRun, Shard, open_run
from probekit.extractors.storage import Projection, Reducer, StorageOptions, stored_shape
from probekit.extractors.workers import Workers
from probekit.extractors.writer import BackgroundWriter, HostBatch
from probekit.prefetch import prefetched
from probekit.provenance import base_provenance
from probekit.store import thumbnail

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


def _first_sample(dataset, n: int, on_error: str):
    """The first usable sample: it fixes the image size (for the plan) and the labels every sample must have."""
    skipped: list[dict[str, Any]] = []
    for i in range(n):
        sample = _load(dataset, i, None, on_error, skipped)
        if sample is not None:
            return sample
    raise ProbekitError(f"none of the {n} samples could be loaded (first error: {skipped[0]['id']}: "
                        f"{skipped[0]['error']})")


def run_fingerprint(extractor: Extractor, reference: dict[str, Any], num_samples: int,
                    storage: dict[str, Any] | None = None) -> dict:
    """What determines the features: a rerun must match it to resume. Batch size, device index and --on-error
    do not count: a run stopped by a bad sample can go on with --on-error skip and keep its shards."""
    config = dict(extractor.config())
    if "device" in config:
        config["device"] = str(config["device"]).split(":")[0]  # ranks use cuda:0, cuda:1, ...
    out = {"extractor": config, "weights": extractor.weights_identity(), "dataset": reference,
           "num_samples": num_samples}
    if storage:
        out["storage"] = storage
    return out


SHARD_BYTES = 256 << 20  # a shard holds about this much: what a kill can lose, and the size of the last fsync


def auto_shard_size(bytes_per_image: int) -> int:
    """Samples per shard: DEFAULT_SHARD_SIZE, fewer for large maps so that a shard stays near SHARD_BYTES."""
    return max(1, min(DEFAULT_SHARD_SIZE, SHARD_BYTES // max(1, bytes_per_image)))


def _storage_fingerprint(options: StorageOptions, source: Projection | None) -> dict[str, Any] | None:
    """The storage choices that change the stored values (None for plain float16 maps)."""
    if not options.reduces and options.dtype == "float16":
        return None
    out: dict[str, Any] = {"pool": options.pool, "channels": options.channels, "dtype": options.dtype}
    if options.drop_massive is not None:
        out["drop_massive"] = options.drop_massive
        out["projection"] = {"from": source.sha256()} if source is not None else {"fit_samples": options.fit_samples}
    if options.channels is not None:
        out["projection"] = options.projection if source is None else {"from": source.sha256()}
        if source is None and options.projection == "pca":
            out["fit_samples"] = options.fit_samples
        if source is None and options.projection == "random":
            out["seed"] = options.seed
    return out


@dataclass
class LoadedBatch:
    """One batch as the loader thread prepares it: everything but the model's work is done off the main thread."""

    shard: Shard
    samples: list
    skipped: list[dict[str, Any]]
    last: bool  # the shard's last batch
    images: torch.Tensor | None = None  # (B, 3, H, W) float in [0, 1]
    labels: dict[str, np.ndarray] | None = None
    thumbnails: np.ndarray | None = None


def _load_batches(dataset, shards: list[Shard], batch_size: int, reference, on_error: str) -> Iterator[LoadedBatch]:
    """Every batch of the given shards, in order, loaded, checked and stacked."""
    for shard in shards:
        positions = list(shard.positions())
        for a in range(0, len(positions), batch_size):
            skipped: list[dict[str, Any]] = []
            samples = [s for s in (_load(dataset, i, reference, on_error, skipped)
                                   for i in positions[a:a + batch_size]) if s is not None]
            batch = LoadedBatch(shard, samples, skipped, a + batch_size >= len(positions))
            if samples:
                batch.images = _to_tensor([s.image for s in samples])
                batch.labels = {name: np.stack([getattr(s, name) for s in samples])
                                for name in LABEL_NAMES if getattr(samples[0], name) is not None}
                batch.thumbnails = np.stack([thumbnail(s.image) for s in samples])
            yield batch


def _to_host(feats: dict[str, torch.Tensor], keys: list[str], reducer: Reducer):
    """Reduce every map on its device and start copying it to the host: (host maps, finite flags, event)."""
    reduced = {k: reducer(k, feats[k]) for k in keys}
    # max |x| is inf where any value is inf and NaN where any is NaN: one cheap reduction (isfinite on every
    # element was measured 17x slower on a CPU for float16 maps)
    finite = torch.stack([torch.isfinite(v.abs().amax(dim=tuple(range(1, v.ndim)))) for v in reduced.values()], dim=1)
    if finite.device.type != "cuda":
        return reduced, finite, None
    host = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True).copy_(v, non_blocking=True)
            for k, v in reduced.items()}
    finite_host = torch.empty(finite.shape, dtype=torch.bool, pin_memory=True).copy_(finite, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, finite_host, event


def _fit_batches(extractor, dataset, reference, n: int, batch_size: int, reducer: Reducer) -> Iterator[dict]:
    """Pooled maps of the first ``n`` usable samples, for fitting a PCA projection."""
    samples, skipped, i = [], [], 0
    while len(samples) < n and i < len(dataset):
        sample = _load(dataset, i, reference, "skip", skipped)
        if sample is not None:
            samples.append(sample)
        i += 1
    for a in range(0, len(samples), batch_size):
        batch = samples[a:a + batch_size]
        feats = extractor.extract(_to_tensor([s.image for s in batch]), [s.caption for s in batch],
                                  [s.index for s in batch])
        yield {k: reducer.pool(v) for k, v in feats.items()}


def _projection(extractor, dataset, first, split: str | None, run: ExtractionRun, options: StorageOptions, source,
                raw_shapes, batch_size: int, workers: Workers, echo) -> Projection | None:
    """The run's channel projection: kept in OUT.parts/ (so a resumed run reuses it), made once."""
    if not options.projects:
        return None
    path = run.projection_path
    if not path.is_file():
        if workers.distributed and not workers.is_main:
            workers.barrier()  # rank 0 makes it
        else:
            if source is not None:
                projection = source
            elif options.drop_massive is not None:
                echo(f"finding the {options.drop_massive} massive-activation channels of each map on the first "
                     f"{options.fit_samples} images")
                with torch.inference_mode():
                    projection = Projection.drop_massive(
                        _fit_batches(extractor, dataset, first, options.fit_samples, batch_size, Reducer(options)),
                        options.drop_massive, {"fit_samples": options.fit_samples, "fit_split": split})
                _echo_dropped(projection, echo)
            elif options.projection == "random":
                channels = {k: s[0] for k, s in raw_shapes.items()}
                projection = Projection.random(channels, options.channels, options.seed)
            else:
                echo(f"fitting PCA to {options.channels} channels on the first {options.fit_samples} images")
                with torch.inference_mode():
                    projection = Projection.fit_pca(
                        _fit_batches(extractor, dataset, first, options.fit_samples, batch_size,
                                     Reducer(options)), options.channels,
                        {"fit_samples": options.fit_samples, "fit_split": split})
            _save_first(projection, path)
            if workers.distributed:
                workers.barrier()
    elif workers.distributed:
        workers.barrier()
    return Projection.load(path)


def _echo_dropped(projection: Projection, echo) -> None:
    for key, channels in projection.info["dropped"].items():
        shown = ", ".join(f"{d['channel']} ({d['mean_abs']:.3g}, {d['over_median']:.0f}x the median)"
                          if d["over_median"] else str(d["channel"]) for d in channels)
        echo(f"  {key}: dropped channels {shown}")


def _save_first(projection: Projection, path: Path) -> None:
    """Save unless another job got there first (independent --part jobs): exclusive, via a hard link."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    projection.save(tmp)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def extract_dataset(extractor: Extractor, dataset, out: str | os.PathLike, *, limit: int | None = None,
                    batch_size: int = 8, overwrite: bool = False, progress: bool = True,
                    run_params: dict[str, Any] | None = None, shard_size: int | None = None,
                    on_error: str = "raise", workers: Workers | None = None, echo=None,
                    storage: StorageOptions | None = None, dry_run: bool = False, queue_depth: int = 4,
                    on_progress=None):
    """Extract features for the first ``limit`` samples of ``dataset`` into ``out`` (HDF5), resumably:
    ``plan_extraction`` then ``run_extraction``.

    ``on_error="skip"`` leaves out samples that fail to load or check, or whose maps are not finite, recording
    their ids and errors in the file's ``skipped`` attribute. ``workers`` splits the shards: torchrun ranks
    (rank 0 writes the index after a barrier) or independent ``--part I/N`` jobs (indexed afterwards by
    ``merge_parts``). ``storage`` reduces what is stored. ``on_progress(n)`` is called as samples are done (for
    a progress display over several runs). Returns ``out``, or the parts directory when this worker did not
    write the index; with ``dry_run``, the plan, printed in full, after the checks the real run would make
    (nothing is written).
    """
    echo = echo or (lambda msg: None)
    job = plan_extraction(extractor, dataset, out, limit=limit, batch_size=batch_size, overwrite=overwrite,
                          shard_size=shard_size, on_error=on_error, workers=workers, storage=storage,
                          allow_pending_projection=dry_run)
    if not dry_run:
        return run_extraction(job, progress=progress, run_params=run_params, echo=echo, queue_depth=queue_depth,
                              on_progress=on_progress)
    if job.workers.is_main:
        for line in job.plan.lines(free_bytes(job.out.parent), verbose=True) + extractor.memory_plan():
            echo(line)
    return _dry_run(job.plan, job.run, job.storage, overwrite, job.projection_pending, echo)


@dataclass
class Extraction:
    """One extraction as decided before any work (``plan_extraction``) and carried out by ``run_extraction``:
    what it stores and how much of it is done (``plan``), its shard folder (``run``), and what the work reads."""

    extractor: Extractor
    dataset: Any
    plan: ExtractionPlan
    run: ExtractionRun
    first: Any  # the first sample: its image size set the map shapes
    reference: dict[str, Any]  # the dataset's description, recorded in the file
    storage: StorageOptions
    source: Projection | None  # the channel projection taken from another file (--projection-from)
    raw_shapes: dict[str, tuple[int, ...]]
    limit: int | None
    batch_size: int
    overwrite: bool
    on_error: str
    workers: Workers
    projection_pending: bool = False  # a dry run's --projection-from file that is not extracted yet

    @property
    def out(self) -> Path:
        return self.run.out

    @property
    def finished(self) -> bool:
        return bool(self.plan.finished)


def plan_extraction(extractor: Extractor, dataset, out: str | os.PathLike, *, limit: int | None = None,
                    batch_size: int = 8, overwrite: bool = False, shard_size: int | None = None,
                    on_error: str = "raise", workers: Workers | None = None, storage: StorageOptions | None = None,
                    allow_pending_projection: bool = False) -> Extraction:
    """Decide an extraction without writing anything: check the arguments, read the first sample, size the maps
    and shards, fingerprint the run, and find what an earlier run already finished (``plan.finished``,
    ``plan.shards_done``). ``allow_pending_projection``: a ``--projection-from`` file that does not exist yet is
    noted (a dry run of val/test before train), not refused."""
    workers = workers or Workers()
    storage = storage or StorageOptions()
    _check_arguments(batch_size, shard_size, limit, on_error)
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    if n <= 0:
        raise ProbekitError(f"nothing to extract: the dataset has {len(dataset)} samples")
    out = Path(out)
    reference = dataset.reference()
    first = _first_sample(dataset, n, on_error)
    raw_shapes = extractor.feature_shapes(tuple(first.image.shape[:2]))
    pending = (allow_pending_projection and storage.projection_from is not None
               and not Path(storage.projection_from).exists())
    source = None
    if storage.projection_from is not None and not pending:
        source = Projection.from_feature_file(storage.projection_from, list(raw_shapes),
                                              {k: s[0] for k, s in raw_shapes.items()},
                                              {k: storage.stored_channels(s[0]) for k, s in raw_shapes.items()})
    plan = _plan(out, n, shard_size, raw_shapes, storage, first)
    run = ExtractionRun(out, run_fingerprint(extractor, reference, n, _storage_fingerprint(storage, source)), n,
                        plan.shard_size)
    plan.finished = not overwrite and not pending and run.finished_output()
    if plan.finished:
        plan.shards_done = plan.num_shards
    elif not overwrite and not out.exists() and run.resumable():
        plan.shards_done = len(run.shards) - len(run.missing())
    return Extraction(extractor, dataset, plan, run, first, reference, storage, source, raw_shapes, limit,
                      batch_size, overwrite, on_error, workers, pending)


def run_extraction(job: Extraction, *, progress: bool = True, run_params: dict[str, Any] | None = None, echo=None,
                   queue_depth: int = 4, on_progress=None) -> Path:
    """Carry out a planned extraction: print its plan, check the free space, hold the output's lock, then
    extract every shard not yet done and index them. A finished one is said once and left as it is."""
    echo = echo or (lambda msg: None)
    plan, run, workers = job.plan, job.run, job.workers
    if job.finished:  # said once, without a plan of work that will not happen
        if workers.is_main:
            echo(f"{job.out} is already complete with these settings; nothing to do (--overwrite to redo it)")
        return job.out
    free = free_bytes(job.out.parent)
    if workers.is_main:
        for line in plan.lines(free, verbose=False):
            echo(line)
    plan.check_space(free)
    distributed_jobs = workers.world_size > 1 and not workers.distributed
    if distributed_jobs and job.overwrite:
        raise ProbekitError("--overwrite cannot be combined with --part: remove the output and its .parts "
                            "directory first, then start the parts")
    part = f"-part-{workers.rank}-of-{workers.world_size}" if workers.world_size > 1 else ""
    with run.lock(part):
        return _prepared_run(run, workers, job.overwrite, distributed_jobs, echo,
                             lambda state: _extract(job.extractor, job.dataset, run, state, job.first,
                                                    job.reference, job.storage, job.source,
                                                    job.raw_shapes, job.limit, job.batch_size, progress, run_params,
                                                    job.on_error, workers, echo, queue_depth, on_progress))


def _check_arguments(batch_size: int, shard_size: int | None, limit: int | None, on_error: str) -> None:
    if batch_size <= 0:
        raise ProbekitError(f"--batch-size must be positive, got {batch_size}")
    if shard_size is not None and shard_size <= 0:
        raise ProbekitError(f"--shard-size must be positive, got {shard_size}")
    if limit is not None and limit <= 0:
        raise ProbekitError(f"--limit must be positive, got {limit}")
    if on_error not in ON_ERROR:
        raise ProbekitError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def _plan(out: Path, n: int, shard_size: int | None, raw_shapes, storage: StorageOptions, first) -> ExtractionPlan:
    """What the run stores (shapes, bytes, shards), from the first sample and the extractor's map shapes."""
    plan = ExtractionPlan(out=out, num_samples=n, shard_size=shard_size or 1, shards_done=0,
                          raw_shapes=raw_shapes, shapes={k: stored_shape(s, storage) for k, s in raw_shapes.items()},
                          feature_dtype=storage.dtype,
                          label_shapes={name: getattr(first, name).shape for name in LABEL_NAMES
                                        if getattr(first, name) is not None}, storage=storage,
                          thumbnail_bytes=thumbnail(first.image).nbytes)
    if shard_size is None:
        plan.shard_size = auto_shard_size(plan.bytes_per_image)
    return plan


def _dry_run(plan: ExtractionPlan, run: ExtractionRun, storage: StorageOptions, overwrite: bool, pending: bool,
             echo):
    """The end of a dry run: what the real run would refuse, or find already done."""
    if pending:  # a plan of val/test before train exists: the shapes are known, the rest is not
        echo(f"channel projection: from {storage.projection_from}, which does not exist yet (extract it first)")
        plan.waits_for = str(storage.projection_from)
        return plan
    problem = run.conflict(overwrite)
    if problem:  # the real run would refuse: say so now, not after the plan looked fine
        raise FeatureFileError(problem)
    if plan.finished:
        echo(f"{run.out} is already complete with these settings: nothing would be done")
    return plan


def _prepared_run(run: ExtractionRun, workers: Workers, overwrite: bool, distributed_jobs: bool, echo, extract):
    """Create or resume the shard directory (rank 0 first), then ``extract(state)``. A run that computed nothing
    leaves no parts behind; a full disk is said in one sentence; an interrupted run leaves only whole shards."""
    state = run.prepare(overwrite) if workers.is_main or distributed_jobs else None
    workers.barrier()  # rank 0 has created (or wiped) the parts directory
    if state is None:
        state = run.prepare(overwrite=False)
    if state == "finished":
        echo(f"{run.out} is already complete with these settings; nothing to do (--overwrite to redo it)")
        return run.out
    try:
        return extract(state)
    except BaseException as exc:
        if state == "new" and workers.is_main and not distributed_jobs:
            run.abandon_if_empty()  # nothing was computed: leave no parts behind for the corrected command
        if is_disk_full(exc):
            raise DiskFullError(run.dir) from None
        raise


def _prepare(extractor: Extractor, dataset, shards: list[Shard], reference, echo) -> None:
    """Hand the extractor every caption it will see (read from the samples still to extract), once."""
    captions: list[str] = []
    if extractor.uses_captions:
        skipped: list[dict[str, Any]] = []
        for shard in shards:
            for i in shard.positions():
                sample = _load(dataset, i, reference, "skip", skipped)  # bad samples are reported by the main pass
                if sample is not None:
                    captions.append(sample.caption)
        echo(f"encoding {len(set(captions))} distinct captions once, before the model loads")
    extractor.prepare(captions)


def _extract(extractor, dataset, run: ExtractionRun, state: str, first, reference, storage: StorageOptions, source,
             raw_shapes, limit, batch_size, progress, run_params, on_error, workers: Workers, echo, queue_depth,
             on_progress=None):
    mine = [s for k, s in enumerate(run.shards) if k % workers.world_size == workers.rank]
    _prepare(extractor, dataset, [s for s in mine if not run.is_done(s)], first, echo)
    projection = _projection(extractor, dataset, first, reference.get("split"), run, storage, source, raw_shapes,
                             batch_size, workers, echo)
    reducer = Reducer(storage, projection)
    attrs = _file_attrs(extractor, reference, reducer, run, limit, batch_size, on_error, workers, run_params)
    run.discard_temporaries(mine)
    pending = [s for s in mine if not run.is_done(s)]
    if state == "resumed" and workers.is_main:
        echo(f"resuming: {len(run.shards) - len(run.missing())} of {len(run.shards)} shards already done in {run.dir}")
    total = sum(s.size for s in mine)
    desc = f"extract {extractor.name} -> {run.out.name}"
    if workers.world_size > 1:
        desc += f" [part {workers.rank}/{workers.world_size}]"
    bar = tqdm(total=total, initial=total - sum(s.size for s in pending), desc=desc, unit="img",
               disable=not progress)
    keys = extractor.feature_keys()
    writer = BackgroundWriter(run, attrs, storage.dtype, on_error, depth=queue_depth)
    skipped_shown = 0
    try:
        with torch.inference_mode():
            for batch in prefetched(_load_batches(dataset, pending, batch_size, first, on_error), depth=2):
                writer.skip(batch.shard, batch.skipped)
                samples = batch.samples
                if samples:
                    feats = extractor.extract(batch.images, [s.caption for s in samples], [s.index for s in samples])
                    host, finite, event = _to_host(feats, keys, reducer)
                    writer.write(HostBatch(batch.shard, host, finite, event, batch.labels, [s.id for s in samples],
                                           [s.index for s in samples], [s.caption for s in samples],
                                           batch.thumbnails))
                if batch.last:
                    writer.commit(batch.shard)
                bar.update(len(samples) + len(batch.skipped))
                if on_progress is not None:
                    on_progress(len(samples) + len(batch.skipped))
                if len(writer.skipped) != skipped_shown:  # counted by the writer thread, so shown a little late
                    skipped_shown = len(writer.skipped)
                    bar.set_postfix(skipped=skipped_shown)
        writer.close()
    except SampleError as exc:
        try:  # a bad input sample (read ahead): first write and commit everything before it
            writer.close()
        except BaseException:  # noqa: BLE001 - the writer's own error (e.g. non-finite maps) is reported instead
            writer.abort()
        run.discard_temporaries(mine)
        done = len(run.shards) - len(run.missing())
        raise ProbekitError(f"{exc}. {done} of {len(run.shards)} shards are done and kept in {run.dir}; fix the "
                            "input and rerun the same command to resume, or pass --on-error skip") from None
    except BaseException:
        writer.abort()
        run.discard_temporaries(mine)  # this process holds the lock: its unfinished shards are its own
        raise
    finally:
        bar.close()
    return _finish(run, writer, workers, total, echo)


def _file_attrs(extractor, reference, reducer: Reducer, run: ExtractionRun, limit, batch_size, on_error,
                workers: Workers, run_params) -> dict[str, Any]:
    """The attributes every shard (and the index) carries: what was extracted, how, and its provenance."""
    provenance = {
        **base_provenance(),
        "stage": "extract",
        "extractor": extractor.config(),
        "weights": extractor.weights_identity(),
        "dataset": reference,
        "storage": reducer.describe(),
        "run": {"limit": limit, "batch_size": batch_size, "shard_size": run.shard_size, "on_error": on_error,
                "world_size": workers.world_size, **(run_params or {})},
        "notes": extractor.notes(),
    }
    return {
        "extractor": extractor.name, "timesteps": extractor.timesteps, "layers": extractor.layers,
        "seed": extractor.config().get("seed"), "ensemble": extractor.config().get("ensemble"),
        "dataset": reference, "provenance": provenance, "storage": reducer.describe(),
    }


def _finish(run: ExtractionRun, writer: BackgroundWriter, workers: Workers, total: int, echo) -> Path:
    """After this process's shards are committed: say what was skipped, wait for the other ranks, and index the
    shards (rank 0 of a distributed run, or a whole run); a ``--part`` job leaves indexing to ``probekit merge``."""
    if writer.skipped:
        echo(f"skipped {len(writer.skipped)} of {total} samples (their ids and reasons are in the file's "
             f"'skipped' attribute); first: {writer.skipped[0]['id']}: {writer.skipped[0]['error']}")
    workers.barrier()  # every rank's shards are committed
    if workers.world_size > 1 and not workers.distributed:  # independent jobs cannot agree on who indexes
        echo(f"part {workers.rank}/{workers.world_size} done; {len(run.missing())} of {len(run.shards)} shards "
             f"remain. When every part is done: probekit merge {run.out}")
        return run.dir
    if not workers.is_main:
        return run.dir
    path = run.write_index()
    echo(f"wrote {path} (an index over {run.dir.name}/; keep the two together)")
    return path


def merge_parts(out: str | os.PathLike, standalone: bool = False, progress: bool = False) -> Path:
    """Index the shards of OUT.parts as OUT (after ``--part`` jobs, or to finish an interrupted run); with
    ``standalone``, copy everything into one self-contained file instead."""
    from probekit.extractors.shards import consolidate

    out = Path(out)
    if not out.exists():
        open_run(out).write_index()
    return consolidate(out, progress=progress) if standalone else out
