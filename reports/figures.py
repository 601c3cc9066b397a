"""Paper-style figures from result records and the files saved beside them (never the datasets).

One style for all: the Okabe-Ito colour-blind-safe palette, 8 pt text, widths for a 3.3 in paper column or a
6.9 in page. Each figure function returns a matplotlib Figure; ``save`` writes it as PNG and PDF. A figure
that does not apply to the records at hand raises ``NotApplicable``; any other error is a real problem that
the report names.

Seeds: a run with several seeds shows its mean, with error bars (curves), bands (reference lines) or a
``± std`` line (heatmap cells) for the spread over seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from probekit import scores  # noqa: E402
from probekit.keys import FeatureKey, timesteps_of  # noqa: E402
from probekit.reports.records import fusion_can, is_task, task_can, task_key, task_title  # noqa: E402

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
COLUMN_IN, PAGE_IN = 3.3, 6.9


class NotApplicable(ValueError):
    """The records at hand hold nothing this figure draws (not an error)."""


class NotDrawn(NotApplicable):
    """The records hold what this figure draws, but too little for it to say anything (one timestep, say): the
    report says so in its text instead of showing an empty plot."""


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
def fusion_records(records: list[dict[str, Any]], extractor: str) -> dict[str, dict[str, Any]]:
    """Per task, the record whose learned weights to show: global fusion, else spatial (mean weights)."""
    chosen: dict[str, dict[str, Any]] = {}
    learned = {r.get("probe", {}).get("fusion") for r in records} - {None}
    # fusions whose weights are one per map first (global), then those whose weights vary across the image
    for preference in sorted((f for f in learned if fusion_can(f, "learns_weights")),
                             key=lambda f: (bool(fusion_can(f, "spatial")), f)):
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
    chosen = fusion_records(records, extractor)
    tasks = sorted(chosen, key=task_key)
    if not tasks:
        raise NotApplicable(f"no global or spatial fusion records with weights for {extractor!r}")
    timesteps = _matrix(chosen[tasks[0]])[1]
    data = np.full((len(tasks), len(timesteps)), np.nan)
    spread = np.full_like(data, np.nan)
    for i, task in enumerate(tasks):
        fw = chosen[task]["probe"]["fusion_weights"]
        ts = fw["timesteps"]
        per_seed = fw.get("per_seed") or [fw["per_key"]]
        shares = np.array([_per_timestep(w, ts) for w in per_seed])  # (seeds, T), summed over layers
        for j, t in enumerate(ts):
            if t in timesteps:
                data[i, timesteps.index(t)] = shares[:, j].mean()
                if len(shares) > 1:
                    spread[i, timesteps.index(t)] = shares[:, j].std(ddof=1)
    fig, ax = plt.subplots(figsize=(COLUMN_IN, 0.5 * len(tasks) + 1.1))
    im = ax.imshow(data, cmap="viridis", vmin=0, vmax=max(0.5, float(np.nanmax(data))), aspect="auto")
    for (i, j), v in np.ndenumerate(data):
        if np.isfinite(v):
            text = f"{v:.2f}" + (f"\n±{spread[i, j]:.2f}" if np.isfinite(spread[i, j]) else "")
            ax.text(j, i, text, ha="center", va="center", color="white" if v < 0.35 else "black", fontsize=5.5)
    ax.set_xticks(range(len(timesteps)), [str(t) for t in timesteps])
    ax.set_yticks(range(len(tasks)), [f"{task_title(t)}\n{_run_name(chosen[t])}" for t in tasks])
    ax.set_xlabel("timestep t (0 = clean image)")
    ax.set_ylabel("task, probe")
    ax.set_title(f"Timestep contribution (learned fusion weights), {extractor}")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the fused map")
    return fig


def _run_name(rec: dict[str, Any]) -> str:
    """The probe a panel shows, with its seeds: "linear-global, 3 seeds"."""
    n = len(rec.get("seeds") or [None])
    return f"{rec['probe'].get('name', '')}, {n} seed{'s' if n > 1 else ''}"


def _per_timestep(weights: dict[str, float], timesteps: list[int]) -> list[float]:
    """A key -> weight dict summed over layers per timestep, renormalised to sum to 1."""
    per_t = np.array([sum(v for k, v in weights.items() if FeatureKey(k).timestep == t) for t in timesteps])
    return (per_t / per_t.sum()).tolist() if per_t.sum() > 0 else per_t.tolist()


def timestep_layer_heatmaps(records: list[dict[str, Any]], extractor: str):
    """One panel per task: the learned weight of every (timestep, layer)."""
    style()
    chosen = fusion_records(records, extractor)
    tasks = [t for t in sorted(chosen, key=task_key) if is_task(t)]
    if not tasks:
        raise NotApplicable(f"no global or spatial fusion records with weights for {extractor!r}")
    fig, axes = plt.subplots(1, len(tasks), figsize=(min(PAGE_IN, 2.3 * len(tasks)), 2.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        m, ts, layers = _matrix(chosen[task])
        im = ax.imshow(m, cmap="viridis", vmin=0, aspect="auto")
        ax.set_xticks(range(len(layers)), layers)
        ax.set_yticks(range(len(ts)), [str(t) for t in ts])
        ax.set_xlabel("layer")
        ax.set_ylabel("timestep t")
        ax.set_title(f"{task_title(task)}\n{chosen[task]['probe'].get('name', '')}")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"Fusion weight per (timestep, layer), {extractor}", fontsize=8)
    fig.tight_layout()
    return fig


def metric_vs_timestep(records: list[dict[str, Any]], extractor: str, task: str):
    """Single-map probes: score against timestep, one line per layer (error bars: std over seeds); fused
    probes as reference lines labelled at the right with their name and score (band: std over seeds). Probes
    at fewer than two timesteps make no curve: ``NotDrawn`` says so."""
    style()
    singles = [r for r in records if r.get("extractor") == extractor and r["task"] == task
               and fusion_can(r["probe"].get("fusion"), "reads_one_map") and r["probe"].get("timestep") is not None]
    if not singles:
        raise NotApplicable(f"no single-timestep {task} records for {extractor!r}")
    timesteps = sorted({r["probe"]["timestep"] for r in singles})
    if len(timesteps) < 2:
        raise NotDrawn(f"{task_title(task)} vs timestep for {extractor}: its single-map probes are at one "
                       f"timestep (t={timesteps[0]}), and a curve needs two")
    metric = singles[0]["main_score_name"]
    info = scores.info(metric, singles[0])
    scale = 100 if info["unit"] == "fraction" else 1
    fig, ax = plt.subplots(figsize=(COLUMN_IN, 2.3))
    layers = sorted({str(r["probe"]["layer"]) for r in singles}, key=lambda x: (len(x), x))
    markers = "osD^v<>p"
    for i, layer in enumerate(layers):
        pts = sorted((r["probe"]["timestep"], r["main_score"] * scale, (r.get("main_score_std") or 0.0) * scale)
                     for r in singles if str(r["probe"]["layer"]) == layer)
        xs, ys, err = zip(*pts)
        ax.errorbar(xs, ys, yerr=err if any(err) else None, marker=markers[i % len(markers)], ms=3, lw=1.2,
                    capsize=2, label=f"layer {layer}")
    fused = [r for r in records if r.get("extractor") == extractor and r["task"] == task
             and reference_style(r["probe"].get("fusion")) is not None]
    _reference_lines(ax, fused, scale, info["unit"])
    ax.set_xlabel("timestep t (0 = clean image)")
    direction = "" if info["higher_is_better"] else " (lower is better)"
    ax.set_ylabel(f"{metric}{scores.unit_label(info['unit'])}{direction}")
    ax.set_title(f"{task_title(task)} vs timestep, {extractor}")
    ax.legend(frameon=False, ncol=2)
    fig.tight_layout()
    return fig


def reference_style(fusion: str | None) -> str | None:
    """The line of a fused probe on a single-map curve, by what its fusion does: per-location weights "-", one
    weight per map "--", no weights ":"; None for a fusion that reads one map or is not registered."""
    if fusion_can(fusion, "reads_one_map", True):
        return None
    return "-" if fusion_can(fusion, "spatial") else "--" if fusion_can(fusion, "learns_weights") else ":"
LABEL_GAP = 0.08  # of the y-axis range: reference labels closer than this are moved apart


def _reference_lines(ax, fused: list[dict[str, Any]], scale: float, unit: str) -> None:
    """A horizontal line (and a band for the spread over seeds) per fused probe, each labelled at the right edge
    with its probe's name and score; labels of lines that (nearly) coincide are spread apart so all stay
    readable, while the lines stay where their scores are."""
    if not fused:
        return
    ys = []
    for rec in fused:
        y = rec["main_score"] * scale
        ax.axhline(y, color="0.2", ls=reference_style(rec["probe"]["fusion"]), lw=1)
        if rec.get("main_score_std"):
            std = rec["main_score_std"] * scale
            ax.axhspan(y - std, y + std, color="0.2", alpha=0.12, lw=0)
        ys.append(y)
    lo, hi = ax.get_ylim()
    gap = LABEL_GAP * (hi - lo)
    places = spread(ys, gap)
    ax.set_ylim(min(lo, float(np.min(places)) - gap / 2), max(hi, float(np.max(places)) + gap / 2))
    for rec, y, place in zip(fused, ys, places):
        text = f"{rec['probe'].get('name', '')} {scores.format_score(rec['main_score'], unit)}"
        style = reference_style(rec["probe"]["fusion"])  # the connector in the line's own style
        ax.annotate(text, xy=(1.0, y), xycoords=("axes fraction", "data"), xytext=(1.08, place),
                    textcoords=("axes fraction", "data"), va="center", ha="left", fontsize=6, color="0.2",
                    arrowprops={"arrowstyle": "-", "color": "0.2", "lw": 0.8, "ls": style, "shrinkA": 1, "shrinkB": 0})


def spread(ys: list[float], gap: float) -> np.ndarray:
    """Label positions for values ``ys``: in the same order, at least ``gap`` apart, each group of labels that
    would overlap centred on the mean of its values (a lone label stays at its value)."""
    ys = np.asarray(ys, dtype=float)
    order = np.argsort(ys, kind="stable")
    clusters: list[list[int]] = []
    for i in order:
        clusters.append([int(i)])
        while len(clusters) > 1 and _top(clusters[-2], ys, gap) + gap > _bottom(clusters[-1], ys, gap) - 1e-12:
            clusters[-2:] = [clusters[-2] + clusters[-1]]
    out = np.empty_like(ys)
    for members in clusters:
        start = _bottom(members, ys, gap)
        for k, i in enumerate(members):
            out[i] = start + k * gap
    return out


def _bottom(members: list[int], ys: np.ndarray, gap: float) -> float:
    return float(np.mean(ys[members])) - (len(members) - 1) * gap / 2


def _top(members: list[int], ys: np.ndarray, gap: float) -> float:
    return _bottom(members, ys, gap) + (len(members) - 1) * gap


# -- image panels ----------------------------------------------------------------------------
def load_examples(rec: dict[str, Any]) -> dict[str, Any]:
    """The evaluation examples a probe saved beside its record: pred, truth, image (thumbnail, if stored)."""
    from safetensors import safe_open

    name = rec["probe"].get("examples")
    if not name:
        raise NotApplicable(f"{rec['_path']}: this run saved no example images (written by an older probekit; "
                            "rerun the probe to draw them)")
    path = Path(rec["_path"]).parent / name
    with safe_open(str(path), "np") as f:
        out = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata() or {}
    out["indices"] = [int(x) for x in meta.get("dataset_indices", "").split(",") if x]
    return out


def _show_label(ax, task: str, array: np.ndarray, num_classes: int = 7, depth_max: float | None = None) -> None:
    kind = task_can(task, "label_kind", "values")
    if kind == "classes":
        from matplotlib.colors import ListedColormap

        cmap = ListedColormap(["#222222"] + OKABE_ITO[:max(1, num_classes - 1)])
        ax.imshow(array, cmap=cmap, vmin=0, vmax=num_classes - 1, interpolation="nearest")
    elif kind == "mask":
        ax.imshow(array, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(array, cmap="magma_r", vmin=0, vmax=depth_max or float(np.nanmax(array)), interpolation="nearest")


def qualitative_panels(task_records: dict[str, dict[str, Any]], n: int = 4):
    """Rows: evaluation images; columns: image (when stored), then ground truth and prediction for each task."""
    style()
    tasks = [t for t in sorted(task_records, key=task_key) if is_task(t)]
    if not tasks:
        raise NotApplicable("no records to draw")
    examples = {t: load_examples(task_records[t]) for t in tasks}
    first = examples[tasks[0]]
    rows = min(n, len(first["pred"]))
    image = "image" in first
    cols = int(image) + 2 * len(tasks)
    fig, axes = plt.subplots(rows, cols, figsize=(min(PAGE_IN, 1.05 * cols), 1.05 * rows + 0.45), squeeze=False)
    for r in range(rows):
        if image:
            axes[r, 0].imshow(first["image"][r])
        for j, task in enumerate(tasks):
            ex = examples[task]
            k = ex["indices"].index(first["indices"][r]) if first["indices"] else r
            tc = task_records[task]["config"].get("task_config", {})
            ncls = len(tc.get("classes") or [None] * 7)
            dmax = (tc.get("depth_range") or [0, None])[1]
            _show_label(axes[r, int(image) + 2 * j], task, ex["truth"][k], ncls, dmax)
            _show_label(axes[r, int(image) + 2 * j + 1], task, ex["pred"][k], ncls, dmax)
    titles = (["image"] if image else []) + [f"{task_title(t)}\n{w}" for t in tasks for w in ("truth", "prediction")]
    _grid_finish(fig, axes, titles)
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
    name = rec["probe"].get("spatial_weights") or "spatial_weights.safetensors"
    with safe_open(str(Path(rec["_path"]).parent / name), "np") as f:
        weights, keys = f.get_tensor("weights"), f.metadata()["keys"].split(",")
    timesteps = timesteps_of(keys)
    per_t = np.stack([weights[:, [i for i, k in enumerate(keys) if FeatureKey(k).timestep == t]].sum(1)
                      for t in timesteps], axis=1)  # (img, T, h, w)
    ex = load_examples(rec)
    task = rec["task"]
    rows = min(n, len(ex["pred"]), len(per_t))
    image = "image" in ex
    cols = int(image) + 2 + len(timesteps)
    fig, axes = plt.subplots(rows, cols, figsize=(min(PAGE_IN, 0.95 * cols), 0.95 * rows + 0.55), squeeze=False)
    tc = rec["config"].get("task_config", {})
    ncls = len(tc.get("classes") or [None] * 7)
    dmax = (tc.get("depth_range") or [0, None])[1]
    for r in range(rows):
        if image:
            axes[r, 0].imshow(ex["image"][r])
        _show_label(axes[r, int(image)], task, ex["truth"][r], ncls, dmax)
        _show_label(axes[r, int(image) + 1], task, ex["pred"][r], ncls, dmax)
        for j in range(len(timesteps)):
            im = axes[r, int(image) + 2 + j].imshow(per_t[r, j], cmap="viridis", vmin=0, vmax=1)
    _grid_finish(fig, axes, (["image"] if image else []) + ["truth", "prediction"] + [f"w(t={t})" for t in timesteps],
                 im, int(image) + 2, "fusion weight")
    fig.suptitle(f"Spatial fusion weights, {task_title(task)} {rec['probe'].get('name', '')}, "
                 f"{rec['extractor']}", fontsize=8)
    return fig


def concept_maps_grid(features: str | Path, n: int = 3, mode: str = "output"):
    """Rows: images (the feature file's thumbnails); columns: the image, then one concept-attention map per
    concept."""
    from probekit.store import FeatureReader

    style()
    with FeatureReader(features) as r:
        key = f"concepts={mode}"
        rows = list(range(min(n, r.num_samples)))
        maps = r.read(key, rows)
        concepts = r.provenance["extractor"]["concepts"]
        thumbs = r.read_thumbnails(rows)
        extractor = r.attr("extractor")
    image = thumbs is not None
    cols = int(image) + len(concepts)
    fig, axes = plt.subplots(len(maps), cols, figsize=(min(PAGE_IN, 0.9 * cols), 0.9 * len(maps) + 0.4),
                             squeeze=False)
    for i in range(len(maps)):
        if image:
            axes[i, 0].imshow(thumbs[i])
        for j in range(len(concepts)):
            im = axes[i, int(image) + j].imshow(maps[i, j], cmap="viridis", vmin=0, vmax=1)
    _grid_finish(fig, axes, (["image"] if image else []) + concepts, im, int(image), "concept probability")
    fig.suptitle(f"Concept attention ({mode}), {extractor}", fontsize=8)
    return fig
