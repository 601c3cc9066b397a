"""Paper-style figures from result records (and, for image panels, the records' saved predictions).

One style for all: the Okabe-Ito colour-blind-safe palette, 8 pt text, widths for a 3.3 in paper column or a
6.9 in page. Each figure function returns a matplotlib Figure; ``save`` writes it as PNG and PDF.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
COLUMN_IN, PAGE_IN = 3.3, 6.9
TASK_ORDER = ["seg", "saliency", "depth"]
TASK_LABEL = {"seg": "segmentation", "saliency": "saliency", "depth": "depth"}


def style() -> None:
    plt.rcParams.update({
        "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
        "legend.fontsize": 7, "axes.prop_cycle": matplotlib.cycler(color=OKABE_ITO), "axes.spines.top": False,
        "axes.spines.right": False, "figure.dpi": 100, "savefig.dpi": 200, "savefig.bbox": "tight",
        "pdf.fonttype": 42, "image.cmap": "viridis",
    })


def save(fig, out_dir: str | Path, name: str) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"png": out / f"{name}.png", "pdf": out / f"{name}.pdf"}
    fig.savefig(paths["png"])
    fig.savefig(paths["pdf"])
    plt.close(fig)
    return paths


# -- fusion weights --------------------------------------------------------------------------
def _fusion_records(records: list[dict[str, Any]], extractor: str) -> dict[str, dict[str, Any]]:
    """Per task, the record whose learned weights to show: global fusion, else spatial (mean weights)."""
    chosen: dict[str, dict[str, Any]] = {}
    for preference in ("global", "spatial"):
        for rec in records:
            fw = rec.get("probe", {}).get("fusion_weights")
            if rec.get("extractor") != extractor or rec["probe"].get("fusion") != preference or not fw:
                continue
            if fw.get("matrix") and rec["task"] not in chosen:
                chosen[rec["task"]] = rec
    return chosen


def _matrix(rec: dict[str, Any]) -> tuple[np.ndarray, list[int], list[str]]:
    fw = rec["probe"]["fusion_weights"]
    m = np.array([[np.nan if v is None else v for v in row] for row in fw["matrix"]], dtype=float)
    return m, fw["timesteps"], [str(x) for x in fw["layers"]]


def timestep_task_heatmap(records: list[dict[str, Any]], extractor: str):
    """Rows: tasks; columns: timesteps; cells: the learned weight of each timestep (summed over layers)."""
    style()
    chosen = _fusion_records(records, extractor)
    tasks = [t for t in TASK_ORDER if t in chosen] + sorted(set(chosen) - set(TASK_ORDER))
    if not tasks:
        raise ValueError(f"no global or spatial fusion records with weights for {extractor!r}")
    timesteps = _matrix(chosen[tasks[0]])[1]
    data = np.full((len(tasks), len(timesteps)), np.nan)
    for i, task in enumerate(tasks):
        m, ts, _ = _matrix(chosen[task])
        per_t = np.nansum(m, axis=1)
        per_t = per_t / per_t.sum()
        for j, t in enumerate(ts):
            if t in timesteps:
                data[i, timesteps.index(t)] = per_t[j]
    fig, ax = plt.subplots(figsize=(COLUMN_IN, 0.45 * len(tasks) + 1.0))
    im = ax.imshow(data, cmap="viridis", vmin=0, vmax=max(0.5, float(np.nanmax(data))), aspect="auto")
    for (i, j), v in np.ndenumerate(data):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.35 else "black", fontsize=6)
    ax.set_xticks(range(len(timesteps)), [str(t) for t in timesteps])
    ax.set_yticks(range(len(tasks)), [TASK_LABEL.get(t, t) for t in tasks])
    ax.set_xlabel("timestep t (0 = clean image)")
    ax.set_ylabel("task")
    kinds = sorted({chosen[t]["probe"]["fusion"] for t in tasks})
    ax.set_title(f"Timestep contribution ({'/'.join(kinds)} fusion weights), {extractor}")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="weight")
    return fig


def timestep_layer_heatmaps(records: list[dict[str, Any]], extractor: str):
    """One panel per task: the learned weight of every (timestep, layer)."""
    style()
    chosen = _fusion_records(records, extractor)
    tasks = [t for t in TASK_ORDER if t in chosen]
    if not tasks:
        raise ValueError(f"no global or spatial fusion records with weights for {extractor!r}")
    fig, axes = plt.subplots(1, len(tasks), figsize=(min(PAGE_IN, 2.3 * len(tasks)), 2.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        m, ts, layers = _matrix(chosen[task])
        im = ax.imshow(m, cmap="viridis", vmin=0, aspect="auto")
        ax.set_xticks(range(len(layers)), layers)
        ax.set_yticks(range(len(ts)), [str(t) for t in ts])
        ax.set_xlabel("layer")
        ax.set_ylabel("timestep t")
        ax.set_title(f"{TASK_LABEL.get(task, task)} ({chosen[task]['probe']['fusion']})")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"Fusion weight per (timestep, layer), {extractor}", fontsize=8)
    fig.tight_layout()
    return fig


def metric_vs_timestep(records: list[dict[str, Any]], extractor: str, task: str):
    """Single-map probes: score against timestep, one line per layer; fused probes as reference lines."""
    style()
    singles = [r for r in records if r.get("extractor") == extractor and r["task"] == task
               and r["probe"].get("fusion") == "single" and r["probe"].get("timestep") is not None]
    if not singles:
        raise ValueError(f"no single-timestep {task} records for {extractor!r}")
    metric = singles[0]["main_score_name"]
    scale = 100 if metric in ("mIoU", "maxF") else 1
    fig, ax = plt.subplots(figsize=(COLUMN_IN, 2.3))
    layers = sorted({str(r["probe"]["layer"]) for r in singles}, key=lambda x: (len(x), x))
    markers = "osD^v<>p"
    for i, layer in enumerate(layers):
        pts = sorted((r["probe"]["timestep"], r["main_score"] * scale) for r in singles
                     if str(r["probe"]["layer"]) == layer)
        ax.plot(*zip(*pts), marker=markers[i % len(markers)], ms=3, lw=1.2, label=f"layer {layer}")
    styles = {"spatial": "-", "global": "--", "concat": ":"}
    for rec in records:
        fusion = rec["probe"].get("fusion")
        if rec.get("extractor") == extractor and rec["task"] == task and fusion in styles:
            ax.axhline(rec["main_score"] * scale, color="0.2", ls=styles[fusion], lw=1, label=f"{fusion} fusion")
    ax.set_xlabel("timestep t (0 = clean image)")
    ax.set_ylabel(f"{metric}{' (%)' if scale == 100 else ''} {'(lower is better)' if metric == 'RMSE' else ''}")
    ax.set_title(f"{TASK_LABEL.get(task, task)} vs timestep, {extractor}")
    ax.legend(frameon=False, ncol=2)
    fig.tight_layout()
    return fig


# -- image panels ----------------------------------------------------------------------------
def _eval_samples(rec: dict[str, Any], indices: list[int]):
    from probekit.datasets import load_dataset

    ref = rec["features"]["eval"]["provenance"].get("dataset") or {}
    if "sources" in rec["features"]["eval"]["provenance"]:  # combined features: the first source's dataset
        ref = rec["features"]["eval"]["provenance"]["sources"][0]["provenance"]["dataset"]
    ds = load_dataset(ref["dataset"], ref["split"], **ref.get("params", {}))
    return [ds[i] for i in indices]


def _load_predictions(rec: dict[str, Any]) -> tuple[np.ndarray, list[int]]:
    from safetensors import safe_open

    path = Path(rec["_path"]).parent / rec["probe"].get("predictions", "predictions.safetensors")
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
        return f.get_tensor("pred"), [int(x) for x in meta["dataset_indices"].split(",")]


def _show_label(ax, task: str, array: np.ndarray, num_classes: int = 7, depth_max: float | None = None) -> None:
    if task == "seg":
        from matplotlib.colors import ListedColormap

        cmap = ListedColormap(["#222222"] + OKABE_ITO[:max(1, num_classes - 1)])
        ax.imshow(array, cmap=cmap, vmin=0, vmax=num_classes - 1, interpolation="nearest")
    elif task == "saliency":
        ax.imshow(array, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(array, cmap="magma_r", vmin=0, vmax=depth_max or float(np.nanmax(array)), interpolation="nearest")


def qualitative_panels(task_records: dict[str, dict[str, Any]], n: int = 4):
    """Rows: evaluation images; columns: image, then ground truth and prediction for each task."""
    style()
    tasks = [t for t in TASK_ORDER if t in task_records]
    if not tasks:
        raise ValueError("no records to draw")
    preds = {t: _load_predictions(task_records[t]) for t in tasks}
    indices = preds[tasks[0]][1][:n]
    samples = _eval_samples(task_records[tasks[0]], indices)
    cols = 1 + 2 * len(tasks)
    fig, axes = plt.subplots(len(samples), cols, figsize=(min(PAGE_IN, 1.0 * cols), 1.0 * len(samples) + 0.3),
                             squeeze=False)
    for r, sample in enumerate(samples):
        axes[r, 0].imshow(sample.image)
        for j, task in enumerate(tasks):
            pred, pred_idx = preds[task]
            k = pred_idx.index(sample.index)
            ncls = len(task_records[task]["config"].get("task_config", {}).get("classes") or [None] * 7)
            dmax = (task_records[task]["config"].get("task_config", {}).get("depth_range") or [0, None])[1]
            _show_label(axes[r, 1 + 2 * j], task, getattr(sample, task), ncls, dmax)
            _show_label(axes[r, 2 + 2 * j], task, pred[k], ncls, dmax)
    _grid_finish(fig, axes, ["image"] + [f"{TASK_LABEL[t]} {w}" for t in tasks for w in ("truth", "prediction")])
    fig.tight_layout()
    return fig


def _grid_finish(fig, axes, titles: list[str], image=None, first_map_col: int = 0, label: str = "") -> None:
    """Column titles, no ticks, and one colour bar for the map columns (from ``first_map_col`` on)."""
    for c, title in enumerate(titles):
        axes[0, c].set_title(title)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes[:, first_map_col:].ravel().tolist(), fraction=0.02, pad=0.01, label=label)


def spatial_weight_maps(rec: dict[str, Any], n: int = 3):
    """For a spatial-fusion run: image | truth | prediction | the weight map of each timestep (summed over layers)."""
    from safetensors import safe_open

    style()
    path = Path(rec["_path"]).parent / "spatial_weights.safetensors"
    with safe_open(str(path), "np") as f:
        weights, keys = f.get_tensor("weights"), f.metadata()["keys"].split(",")
    from probekit.store import parse_key

    timesteps = sorted({int(parse_key(k)["t"]) for k in keys if "t" in parse_key(k)})
    per_t = np.stack([weights[:, [i for i, k in enumerate(keys) if parse_key(k).get("t") == str(t)]].sum(1)
                      for t in timesteps], axis=1)  # (img, T, h, w)
    pred, pred_idx = _load_predictions(rec)
    samples = _eval_samples(rec, pred_idx[:n])
    task = rec["task"]
    cols = 3 + len(timesteps)
    fig, axes = plt.subplots(len(samples), cols, figsize=(min(PAGE_IN, 0.95 * cols), 0.95 * len(samples) + 0.5),
                             squeeze=False)
    ncls = len(rec["config"].get("task_config", {}).get("classes") or [None] * 7)
    dmax = (rec["config"].get("task_config", {}).get("depth_range") or [0, None])[1]
    for r, sample in enumerate(samples):
        axes[r, 0].imshow(sample.image)
        _show_label(axes[r, 1], task, getattr(sample, task), ncls, dmax)
        _show_label(axes[r, 2], task, pred[r], ncls, dmax)
        for j in range(len(timesteps)):
            im = axes[r, 3 + j].imshow(per_t[r, j], cmap="viridis", vmin=0, vmax=1)
    _grid_finish(fig, axes, ["image", "truth", "prediction"] + [f"w(t={t})" for t in timesteps], im, 3,
                 "fusion weight")
    fig.suptitle(f"Spatial fusion weights, {TASK_LABEL.get(task, task)}, {rec['extractor']}", fontsize=8)
    return fig


def concept_maps_grid(features: str | Path, n: int = 3, mode: str = "output"):
    """Rows: images; columns: the image, then one concept-attention map per concept."""
    from probekit.store import FeatureReader

    style()
    with FeatureReader(features) as r:
        key = f"concepts={mode}"
        maps = r.read(key, list(range(min(n, r.num_samples))))
        concepts = r.provenance["extractor"]["concepts"]
        ref, indices = r.dataset, [int(i) for i in r.indices[: len(maps)]]
        extractor = r.attr("extractor")
    from probekit.datasets import load_dataset

    ds = load_dataset(ref["dataset"], ref["split"], **ref.get("params", {}))
    cols = 1 + len(concepts)
    fig, axes = plt.subplots(len(maps), cols, figsize=(min(PAGE_IN, 0.9 * cols), 0.9 * len(maps) + 0.4),
                             squeeze=False)
    for i, idx in enumerate(indices):
        axes[i, 0].imshow(ds[idx].image)
        for j in range(len(concepts)):
            im = axes[i, 1 + j].imshow(maps[i, j], cmap="viridis", vmin=0, vmax=1)
    _grid_finish(fig, axes, ["image"] + concepts, im, 1, "concept probability")
    fig.suptitle(f"Concept attention ({mode}), {extractor}", fontsize=8)
    return fig
