"""Feature store: one HDF5 file per (extractor run, dataset split). See docs/feature-store.md.

Layout::

    /                        attrs: format, format_version, complete, num_samples, feature_keys, feature_dtype,
                             storage, timesteps, layers, extractor, provenance (JSON), dataset (JSON)
    /sample_ids   (N,)       utf-8 strings, e.g. "shapeworld/train/000012"
    /indices      (N,)       int64 index of each sample in its dataset split
    /done         (N,)       uint8, 1 once every feature and label of the sample is written
    /captions     (N,)       utf-8 strings
    /thumbnails   (N,h,w,3)  uint8 images, at most THUMBNAIL_SIZE px on a side (what reports draw)
    /labels/<name> (N,H,W)   seg uint8 | depth float32 | saliency uint8
    /features/<key> (N,C,h,w) float16 (or float32, or bfloat16 kept as its uint16 bit pattern), one chunk per
                             sample, keys like "t=250/layer=2"
    /projection/<key>/{components,mean}   the fixed channel projection applied before storing, if any

An extraction writes shard files in this layout and then an *index* file (format 2) whose per-sample datasets
are HDF5 virtual datasets over the shards: joining shards costs metadata, not a second copy of every byte.
Any HDF5 reader sees the index as one file; this reader goes to the shard files directly for speed.

Readers loop over samples (one chunk each) instead of fancy-indexing: on chunked datasets h5py's fancy
indexing was measured ~60x slower than a per-sample loop.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from probekit.dtypes import STORED_DTYPES
from probekit.errors import FeatureFileError
from probekit.keys import feature_key, parse_key  # noqa: F401  (re-exported: the store's key vocabulary)

FORMAT = "probekit-features"
FORMAT_VERSION = 2  # 2: index files over shards (virtual datasets), storage dtype and projection
# The attributes FeatureWriter sets itself (an index computes its own; consolidating a file does not copy them).
FORMAT_ATTRS = frozenset({"format", "format_version", "complete", "num_samples", "feature_keys", "label_names",
                          "feature_dtype"})
PARTS_SUFFIX = ".parts"  # OUT's shards live in the folder OUT.parts/ beside it
SHARD_GLOB = "shard-*.h5"
# Stored dtype of each storage choice; bfloat16 has no HDF5 type and is kept as its raw 16-bit pattern.
# bfloat16 has no numpy type: its bits are stored as uint16 (and marked as such)
FEATURE_DTYPES = dict(zip(STORED_DTYPES, (np.float16, np.uint16, np.float32), strict=True))
DEFAULT_FEATURE_DTYPE = "float16"
LABEL_DTYPES = {"seg": np.uint8, "depth": np.float32, "saliency": np.uint8}
THUMBNAIL_SIZE = 128
_STR = h5py.string_dtype("utf-8")


def format_attrs() -> dict[str, Any]:
    """The attributes that name a file as a feature file of this format and version."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION}


def parts_dir(out: str | os.PathLike) -> Path:
    """The folder of OUT's shards (an index file OUT refers to them there): ``OUT.parts/``."""
    return Path(f"{out}{PARTS_SUFFIX}")


def shard_name(start: int, stop: int) -> str:
    """The file name, in ``parts_dir(OUT)``, of the shard holding samples [start, stop) (matches ``SHARD_GLOB``)."""
    return f"shard-{start:09d}-{stop:09d}.h5"


class NonFiniteFeatures(FeatureFileError):
    """Features that hold NaN or inf: never stored, never trained on, never scored."""

    def __init__(self, where: str, key: str, rows: Sequence[int], sample_ids: Sequence[str] | None = None):
        self.key, self.rows = key, list(rows)
        self.sample_ids = list(sample_ids) if sample_ids is not None else None
        named = self.sample_ids if self.sample_ids else [f"row {r}" for r in self.rows]
        more = f" and {len(named) - 3} more" if len(named) > 3 else ""
        super().__init__(f"{where}: feature {key!r} of {', '.join(map(str, named[:3]))}{more} holds NaN or inf "
                         "values")


def to_float32(raw: np.ndarray, feature_dtype: str) -> np.ndarray:
    """Stored feature values -> float32 (numpy)."""
    if feature_dtype == "bfloat16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def as_tensor(raw: np.ndarray, feature_dtype: str):
    """Stored feature values -> a torch tensor in a floating dtype (float16, bfloat16 or float32), no copy."""
    import torch

    tensor = torch.from_numpy(raw)
    return tensor.view(torch.bfloat16) if feature_dtype == "bfloat16" else tensor


def nonfinite_rows(array: np.ndarray, feature_dtype: str = "float32") -> list[int]:
    """Rows (first axis) of a stored or float array that hold NaN or inf."""
    if feature_dtype == "bfloat16":  # exponent bits all ones
        bad = (array & 0x7F80) == 0x7F80
    else:
        bad = ~np.isfinite(array)
    if not bad.any():
        return []
    return np.flatnonzero(bad.reshape(len(array), -1).any(axis=1)).tolist()


def _attr_value(value: Any) -> Any:
    if isinstance(value, np.generic):  # e.g. attributes copied from another feature file
        value = value.item()
    return value if isinstance(value, (str, int, float, bool)) else json.dumps(value, default=str)


class FeatureWriter:
    """Appends samples to a new feature file; datasets are created on the first batch.

    ``capacity`` is the most samples the file will hold (rows left unused are trimmed by ``finalize``, so
    samples skipped on the way leave no gap). Every batch is checked for non-finite values first.
    """

    def __init__(self, path: str | os.PathLike, *, capacity: int, attrs: dict[str, Any], overwrite: bool = False,
                 feature_dtype: str = DEFAULT_FEATURE_DTYPE):
        self.path = Path(path)
        if feature_dtype not in FEATURE_DTYPES:
            raise FeatureFileError(f"unknown feature dtype {feature_dtype!r}; choose from {', '.join(FEATURE_DTYPES)}")
        if self.path.exists() and not overwrite:
            raise FeatureFileError(f"{self.path} already exists; pass overwrite=True (--overwrite) to replace it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.capacity, self.rows, self.feature_dtype = int(capacity), 0, feature_dtype
        self._file = h5py.File(self.path, "w")
        f = self._file
        f.attrs.update(format_attrs())
        f.attrs["complete"] = False
        f.attrs["num_samples"] = 0
        f.attrs["feature_dtype"] = feature_dtype
        for name, value in attrs.items():
            self.set_attr(name, value)
        # Resizable, so that finalize can trim rows left unused by skipped samples.
        rows = dict(shape=(self.capacity,), maxshape=(None,), chunks=(max(1, min(self.capacity, 4096)),))
        f.create_dataset("sample_ids", dtype=_STR, **rows)
        f.create_dataset("indices", dtype=np.int64, **rows)
        f.create_dataset("done", dtype=np.uint8, fillvalue=0, **rows)
        f.create_dataset("captions", dtype=_STR, **rows)
        self._keys: list[str] | None = None
        self._labels: list[str] = []

    def _create(self, features: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> None:
        f = self._file
        for key, arr in features.items():
            shape = tuple(arr.shape[1:])
            # One chunk per sample: never let h5py choose chunks (it cut across samples in our tests).
            f.create_dataset(f"features/{key}", shape=(self.capacity, *shape), maxshape=(None, *shape),
                             dtype=FEATURE_DTYPES[self.feature_dtype], chunks=(1, *shape))
        for name, arr in labels.items():
            shape = tuple(arr.shape[1:])
            f.create_dataset(f"labels/{name}", shape=(self.capacity, *shape), maxshape=(None, *shape),
                             dtype=LABEL_DTYPES.get(name, arr.dtype), chunks=(1, *shape))
        self._keys, self._labels = list(features), list(labels)
        f.attrs["feature_keys"] = json.dumps(self._keys)
        f.attrs["label_names"] = json.dumps(list(labels))

    def _stored(self, arr: np.ndarray) -> np.ndarray:
        """An array in the stored dtype: float arrays are converted, arrays already stored pass through."""
        target = FEATURE_DTYPES[self.feature_dtype]
        if arr.dtype == target:
            return arr
        if self.feature_dtype == "bfloat16":
            import torch

            return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(torch.bfloat16).view(
                torch.int16).numpy().view(np.uint16)
        with np.errstate(over="ignore"):  # values beyond float16's range become inf, refused just below
            return arr.astype(target)

    def append(self, features: dict[str, np.ndarray], labels: dict[str, np.ndarray], sample_ids: Sequence[str],
               indices: Sequence[int], captions: Sequence[str], *, thumbnails: np.ndarray | None = None,
               checked: bool = False) -> None:
        """Add one batch of samples after those already written, and mark them done.

        Features holding NaN or inf are refused (``NonFiniteFeatures`` names the samples), unless the caller
        has ``checked`` them already (the extraction runner does, on the device).
        """
        n = len(sample_ids)
        if n == 0:
            return
        if self._keys is None:
            self._create(features, labels)
        if set(features) != set(self._keys):
            raise FeatureFileError(f"{self.path}: batch has keys {sorted(features)}, file has {sorted(self._keys)}")
        if self.rows + n > self.capacity:
            raise FeatureFileError(f"{self.path}: {self.rows + n} samples exceed the planned {self.capacity}")
        stored = {key: self._stored(np.asarray(arr)) for key, arr in features.items()}
        for key, arr in ({} if checked else stored).items():
            bad = nonfinite_rows(arr, self.feature_dtype)
            if bad:
                raise NonFiniteFeatures(str(self.path), key, bad, [sample_ids[i] for i in bad])
        f = self._file
        rows = np.s_[self.rows:self.rows + n]  # one slab write per dataset
        for key, arr in stored.items():
            f[f"features/{key}"][rows] = arr
        for name, arr in labels.items():
            f[f"labels/{name}"][rows] = np.asarray(arr)
        if thumbnails is not None:
            if "thumbnails" not in f:
                shape = tuple(thumbnails.shape[1:])
                f.create_dataset("thumbnails", shape=(self.capacity, *shape), maxshape=(None, *shape), dtype=np.uint8,
                                 chunks=(1, *shape))
            f["thumbnails"][rows] = thumbnails
        f["sample_ids"][rows] = np.asarray(list(sample_ids), dtype=object)
        f["indices"][rows] = np.asarray(indices, dtype=np.int64)
        f["captions"][rows] = np.asarray(list(captions), dtype=object)
        # Marked done only after all its data is written, so an interrupted write is never counted.
        f["done"][rows] = 1
        self.rows += n
        f.attrs["num_samples"] = self.rows
        f.flush()

    def set_attr(self, name: str, value: Any) -> None:
        self._file.attrs[name] = _attr_value(value)

    def write_array(self, name: str, array: np.ndarray) -> None:
        """A dataset outside the per-sample layout (e.g. a projection's components)."""
        self._file.create_dataset(name, data=array)

    def finalize(self) -> None:
        """Trim unused rows and mark the file complete."""
        f = self._file
        for name in ("sample_ids", "indices", "done", "captions"):
            f[name].resize((self.rows,))
        names = [f"features/{k}" for k in self._keys or []] + [f"labels/{n}" for n in self._labels]
        names += ["thumbnails"] if "thumbnails" in f else []
        for name in names:
            f[name].resize((self.rows, *f[name].shape[1:]))
        f.attrs["num_samples"] = self.rows
        f.attrs["complete"] = True
        f.flush()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def thumbnail(image: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """An (H, W, 3) uint8 image brought within ``size`` px on its longer side (unchanged when already small)."""
    h, w = image.shape[:2]
    if max(h, w) <= size:
        return image
    from PIL import Image

    scale = size / max(h, w)
    return np.asarray(Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                    Image.BILINEAR))


def write_features(path: str | os.PathLike, features: dict[str, np.ndarray], labels: dict[str, np.ndarray],
                   sample_ids: Sequence[str], *, attrs: dict[str, Any], indices: Sequence[int] | None = None,
                   captions: Sequence[str] | None = None, feature_dtype: str = DEFAULT_FEATURE_DTYPE,
                   overwrite: bool = False, thumbnails: np.ndarray | None = None) -> Path:
    """A complete feature file from whole arrays (features (N, C, h, w) per key, labels (N, H, W) per name)."""
    n = len(sample_ids)
    with FeatureWriter(path, capacity=n, attrs=attrs, overwrite=overwrite, feature_dtype=feature_dtype) as w:
        w.append(features, labels, sample_ids, list(range(n)) if indices is None else indices,
                 [""] * n if captions is None else captions, thumbnails=thumbnails)
        w.finalize()
    return Path(path)


class _Rows:
    """Row reads from one chunked (or contiguous) HDF5 dataset, the fastest way for the row pattern asked."""

    def __init__(self, ds: h5py.Dataset):
        self.ds = ds
        self.raw_chunks = (ds.chunks == (1, *ds.shape[1:]) and ds.id.get_create_plist().get_nfilters() == 0)

    def read_into(self, positions: np.ndarray, out: np.ndarray, out_rows: np.ndarray) -> None:
        ds = self.ds
        if len(positions) and np.array_equal(positions, np.arange(positions[0], positions[0] + len(positions))) \
                and np.array_equal(out_rows, np.arange(out_rows[0], out_rows[0] + len(out_rows))):
            ds.read_direct(out, np.s_[positions[0]:positions[0] + len(positions)],
                           np.s_[out_rows[0]:out_rows[0] + len(out_rows)])  # consecutive: one read
        elif self.raw_chunks:
            # Shuffled rows: each row is one whole chunk, read as bytes (~3x faster than a selection).
            zeros = (0,) * (ds.ndim - 1)
            for row, pos in zip(out_rows, positions):
                out[row] = np.frombuffer(ds.id.read_direct_chunk((int(pos), *zeros))[1],
                                         dtype=ds.dtype).reshape(ds.shape[1:])
        else:
            for row, pos in zip(out_rows, positions):
                ds.read_direct(out, np.s_[int(pos)], np.s_[int(row)])


class _VirtualRows:
    """Row reads from a virtual dataset, served from its source (shard) datasets directly."""

    def __init__(self, ds: h5py.Dataset, index_path: Path, open_source):
        self.ds = ds
        self.starts, self.sources = [], []
        for vds in ds.virtual_sources():
            start, stop = vds.vspace.get_select_bounds()
            # probekit maps whole shard datasets (selection "all", whose bounds h5py cannot report): row 0 on.
            src_start = (0 if vds.src_space.get_select_type() == h5py.h5s.SEL_ALL
                         else int(vds.src_space.get_select_bounds()[0][0]))
            self.starts.append((int(start[0]), int(stop[0]) + 1, src_start))
            self.sources.append((vds.file_name, vds.dset_name))
        order = np.argsort([s[0] for s in self.starts])
        self.starts = [self.starts[i] for i in order]
        self.sources = [self.sources[i] for i in order]
        self._bounds = np.array([s[0] for s in self.starts] + [ds.shape[0]])
        self._open_source = open_source
        self._rows: dict[int, _Rows] = {}

    def source_files(self) -> list[str]:
        return [name for name, _ in self.sources]

    def _source(self, i: int) -> _Rows:
        if i not in self._rows:
            name, dset = self.sources[i]
            self._rows[i] = _Rows(self._open_source(name)[dset])
        return self._rows[i]

    def read_into(self, positions: np.ndarray, out: np.ndarray, out_rows: np.ndarray) -> None:
        which = np.searchsorted(self._bounds, positions, side="right") - 1
        for i in np.unique(which):
            sel = which == i
            start, stop, src_start = self.starts[i]
            if np.any(positions[sel] >= stop):
                raise FeatureFileError(f"{self.ds.file.filename}: rows {positions[sel][:3].tolist()} are not mapped "
                                       "to any shard (damaged index?)")
            self._source(int(i)).read_into(positions[sel] - start + src_start, out, out_rows[sel])


class FeatureReader:
    """Read-only view of a feature file (standalone, or an index over shards) with minibatch iteration."""

    def __init__(self, path: str | os.PathLike, allow_incomplete: bool = False):
        self.path = Path(path)
        self._sources: dict[str, h5py.File] = {}
        if not self.path.is_file():
            parts = parts_dir(self.path)
            if parts.is_dir():
                done = len(list(parts.glob(SHARD_GLOB)))
                raise FeatureFileError(f"feature file {self.path} is not finished: its extraction was interrupted "
                                       f"({done} shard(s) done in {parts}); rerun the same `probekit extract` "
                                       "command to resume it")
            raise FeatureFileError(f"feature file {self.path} does not exist")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise FeatureFileError(f"{self.path} cannot be read as HDF5 (truncated or not HDF5?): {exc}") from None
        try:
            self._validate(allow_incomplete)
        except (OSError, KeyError, ValueError) as exc:  # h5py raises these on damaged files
            self.close()
            raise FeatureFileError(f"{self.path} cannot be read as a feature file (truncated or damaged?): "
                                   f"{exc}") from None
        except FeatureFileError:
            self.close()
            raise

    def _validate(self, allow_incomplete: bool) -> None:
        f = self._file
        fmt = f.attrs.get("format")
        if fmt != FORMAT:
            raise FeatureFileError(f"{self.path} is not a probekit feature file (attribute 'format' is {fmt!r}, "
                                   f"expected {FORMAT!r})")
        version = int(f.attrs["format_version"])
        if version > FORMAT_VERSION:
            raise FeatureFileError(f"{self.path} has feature-store format {version}; this probekit reads up to "
                                   f"{FORMAT_VERSION}: upgrade probekit")
        self.format_version = version
        self.num_samples = int(f.attrs["num_samples"])
        if not bool(f.attrs["complete"]) and not allow_incomplete:
            written = int(f["done"][...].sum())
            raise FeatureFileError(f"{self.path} is incomplete: {written} samples were written but the file was "
                                   "never finished (the extraction was interrupted?). Rerun the extraction.")
        self.keys: list[str] = json.loads(f.attrs.get("feature_keys", "[]"))
        self.label_names: list[str] = json.loads(f.attrs.get("label_names", "[]"))
        self.feature_dtype: str = str(f.attrs.get("feature_dtype", DEFAULT_FEATURE_DTYPE))
        n = self.num_samples
        self.sample_ids: list[str] = [s.decode() if isinstance(s, bytes) else s for s in f["sample_ids"][:n]]
        self.indices = f["indices"][:n]
        self._rows: dict[str, _Rows | _VirtualRows] = {}
        missing = sorted({name for ds in self._datasets() if ds.is_virtual
                          for name in self._rows_of(ds).source_files() if not self._source_path(name).is_file()})
        if missing:
            raise FeatureFileError(f"{self.path} is an index over shard files, and {len(missing)} of them are "
                                   f"missing (first: {self._source_path(missing[0])}). Keep the folder "
                                   f"{parts_dir(self.path).name}/ beside it (or write one standalone file with "
                                   "`probekit merge --standalone`).")

    def _datasets(self) -> list[h5py.Dataset]:
        f = self._file
        return ([f[f"features/{k}"] for k in self.keys] + [f[f"labels/{n}"] for n in self.label_names]
                + ([f["thumbnails"]] if "thumbnails" in f else []))

    def _source_path(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else self.path.parent / path

    def _open_source(self, name: str) -> h5py.File:
        if name not in self._sources:
            try:
                self._sources[name] = h5py.File(self._source_path(name), "r")
            except OSError as exc:
                raise FeatureFileError(f"{self._source_path(name)} (a shard of {self.path}) cannot be read: "
                                       f"{exc}") from None
        return self._sources[name]

    def _rows_of(self, ds: h5py.Dataset) -> _Rows | _VirtualRows:
        if ds.name not in self._rows:
            self._rows[ds.name] = _VirtualRows(ds, self.path, self._open_source) if ds.is_virtual else _Rows(ds)
        return self._rows[ds.name]

    # -- metadata ---------------------------------------------------------------------------
    def attr(self, name: str, default: Any = None) -> Any:
        value = self._file.attrs.get(name, default)
        if isinstance(value, str) and value[:1] in "[{":
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                return value
        return value.item() if isinstance(value, np.generic) else value

    def raw_attrs(self) -> dict[str, Any]:
        """Root attributes exactly as stored (JSON ones still as strings)."""
        return dict(self._file.attrs)

    @property
    def provenance(self) -> dict[str, Any]:
        return self.attr("provenance", {})

    @property
    def dataset(self) -> dict[str, Any]:
        return self.attr("dataset", {})

    @property
    def storage(self) -> dict[str, Any]:
        """How the maps were reduced before storing (pooling, channel projection, dtype); {} for plain maps."""
        return self.attr("storage", {}) or {}

    def feature_dtype_of(self, key: str) -> str:
        """The stored dtype of ``key`` (one per file; combined readers differ per source)."""
        return self.feature_dtype

    @property
    def is_index(self) -> bool:
        """True when the per-sample data lives in shard files beside this one."""
        return any(ds.is_virtual for ds in self._datasets())

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._dataset(key).shape[1:])

    def label_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._label(name).shape[1:])

    def captions(self) -> list[str]:
        return [s.decode() if isinstance(s, bytes) else s for s in self._file["captions"][:self.num_samples]]

    def projection(self, key: str) -> dict[str, np.ndarray] | None:
        """The fixed projection applied to ``key`` before storing: {"components": (D, C), "mean": (C,)}."""
        group = self._file.get(f"projection/{key}")
        if group is None:
            return None
        return {"components": group["components"][...], "mean": group["mean"][...]}

    # -- data -------------------------------------------------------------------------------
    def _dataset(self, key: str) -> h5py.Dataset:
        if key not in self.keys:
            raise FeatureFileError(f"{self.path} has no feature {key!r}; it has: {', '.join(self.keys)}")
        return self._file[f"features/{key}"]

    def _label(self, name: str) -> h5py.Dataset:
        if name not in self.label_names:
            raise FeatureFileError(f"{self.path} has no label {name!r}; it has: {', '.join(self.label_names) or 'none'}")
        return self._file[f"labels/{name}"]

    def read(self, key: str, positions: Sequence[int]) -> np.ndarray:
        """Rows `positions` of one feature, as float32."""
        return to_float32(self.read_raw(key, positions), self.feature_dtype)

    def read_raw(self, key: str, positions: Sequence[int]) -> np.ndarray:
        """Rows `positions` of one feature in the stored dtype (see ``feature_dtype``; ``as_tensor`` converts)."""
        return self._read_rows(self._dataset(key), positions, f"feature {key!r}")

    def read_labels(self, name: str, positions: Sequence[int]) -> np.ndarray:
        return self._read_rows(self._label(name), positions, f"label {name!r}")

    def read_thumbnails(self, positions: Sequence[int]) -> np.ndarray | None:
        """Small uint8 copies of the images (None for files written before thumbnails were stored)."""
        if "thumbnails" not in self._file:
            return None
        return self._read_rows(self._file["thumbnails"], positions, "thumbnails")

    def _read_rows(self, ds: h5py.Dataset, positions: Sequence[int], what: str) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) and (positions.min() < 0 or positions.max() >= self.num_samples):
            raise FeatureFileError(f"{self.path}: rows {positions.min()}..{positions.max()} are outside its "
                                   f"{self.num_samples} samples")
        out = np.empty((len(positions), *ds.shape[1:]), dtype=ds.dtype)
        try:
            self._rows_of(ds).read_into(positions, out, np.arange(len(positions)))
        except OSError as exc:  # damaged data that opened fine
            raise FeatureFileError(f"{self.path}: cannot read {what} of rows {positions[:1].tolist()}... (truncated "
                                   f"or damaged file?): {exc}") from None
        return out

    def batches(self, keys: Sequence[str], batch_size: int, *, labels: Sequence[str] = (),
                shuffle: bool = False, seed: int = 0, epoch: int = 0,
                subset: Sequence[int] | None = None, raw: bool = False) -> Iterator[dict[str, Any]]:
        """Minibatches {"positions", "features": {key: (B,C,h,w)}, "labels": {name: (B,H,W)}}.

        ``subset`` restricts to those rows. Shuffling is a seeded permutation per (seed, epoch), so runs are
        reproducible. ``raw`` leaves features in the stored dtype (``as_tensor`` converts them in torch, much
        faster than numpy).
        """
        read = self.read_raw if raw else self.read
        order = np.arange(self.num_samples) if subset is None else np.asarray(subset, dtype=np.int64)
        if shuffle:
            order = order[np.random.default_rng([seed, epoch]).permutation(len(order))]
        for start in range(0, len(order), batch_size):
            pos = order[start:start + batch_size]
            yield {
                "positions": pos,
                "features": {k: read(k, pos) for k in keys},
                "labels": {n: self.read_labels(n, pos) for n in labels},
            }

    def close(self) -> None:
        for f in self._sources.values():
            if f.id.valid:
                f.close()
        self._sources = {}
        if getattr(self, "_file", None) is not None and self._file.id.valid:
            self._file.close()

    def __enter__(self) -> "FeatureReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
