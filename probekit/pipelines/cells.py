"""The cells of a suite: one unit of work each, with its inputs, outputs, dependencies, state and run.

A cell is named by an id (``extract/flux-dev/ade20k/train``, ``probe/flux-dev/ade20k/seg/linear-single/each-map``)
that a fresh process can run alone from the suite (``probekit run SUITE --cell ID``): everything a cell reads
comes from the suite and from its dependencies' outputs on disk, never from another cell's memory. That is
what lets the launchers (probekit.pipelines.launchers) put cells anywhere: this process, N worker processes,
Slurm jobs.

Each cell keeps a home folder, OUT/cells/ID/, with its log (``log.txt``) and its stamp (``state.json``: the hash
of the settings it ran with, how long it took, what it wrote). Its state is read from disk:
"done" (its outputs exist, made with these settings), "stale" (outputs of other settings, or of unknown
settings, are there: running it replaces or reuses them) or "pending" (nothing yet).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from probekit.errors import ProbekitError
from probekit.pipelines.suite import Suite, seeds_of

LOG_FILE = "log.txt"
STATE_FILE = "state.json"
CHOICE_FILE = "choice.json"


@dataclass
class CellContext:
    """What a cell may use while it runs: where to write its log lines, where to count progress, and in one
    process, the extractors already loaded (None: load what it needs)."""

    overwrite: bool = False
    echo: Callable[[str], None] = print
    tick: Callable[[float], None] = lambda n: None
    models: dict[str, Any] | None = None


def settings_hash(settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Cell:
    """One unit of work. Subclasses say what it reads, writes and does."""

    kind: ClassVar[str] = ""

    def __init__(self, suite: Suite, id: str, needs: list[str] | None = None, after: list[str] | None = None):
        self.suite, self.id = suite, id
        self.needs = list(needs or [])  # cells that must be done (their failure blocks this one)
        self.after = list(after or [])  # cells that must have finished, done or not (the report)

    # -- what it is ----------------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        return self.id

    @property
    def home(self) -> Path:
        return self.suite.out / "cells" / self.id

    def outputs(self) -> list[Path]:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """Everything its outputs depend on besides its inputs' contents: a change makes it stale."""
        raise NotImplementedError

    def units(self) -> float:
        """Expected work, in the units its progress ticks count (samples, trials): the ETA scales by it."""
        return 1.0

    def run(self, ctx: CellContext) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """All a fresh process needs to run this cell alone."""
        return {"id": self.id, "kind": self.kind, "suite": str(plan_file(self.suite)), "needs": self.needs,
                "after": self.after, "outputs": [str(p) for p in self.outputs()], "home": str(self.home),
                "command": f"probekit run {plan_file(self.suite)} --cell {self.id}"}

    # -- its state on disk ---------------------------------------------------------------------------------
    def stamp(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.home / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None

    def write_stamp(self, status: str, seconds: float, ticks: float, info: dict[str, Any]) -> None:
        from probekit.atomic import write_text

        self.home.mkdir(parents=True, exist_ok=True)
        write_text(self.home / STATE_FILE, json.dumps(
            {"id": self.id, "status": status, "settings": settings_hash(self.settings()), "seconds": round(seconds, 3),
             "units": self.units(), "ticks": ticks, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info},
            indent=1, default=str))

    def state(self) -> tuple[str, str]:
        """("done" | "stale" | "pending", why)."""
        stamp = self.stamp()
        made = all(p.exists() for p in self.outputs())
        if stamp and stamp.get("status") == "done" and made:
            if stamp.get("settings") == settings_hash(self.settings()):
                return "done", ""
            return "stale", "made with other settings: the run redoes it"
        if made:
            return "stale", "its outputs are there, of unknown settings: the run checks them"
        return "pending", ""


def plan_file(suite: Suite) -> Path:
    """The suite as every cell reads it, overrides applied (written by the plan before anything runs)."""
    return suite.out / "plan" / "suite.yaml"


# -- extraction -----------------------------------------------------------------------------------------------
def extractor_options(suite: Suite, label: str) -> dict[str, Any]:
    spec = suite.extractors[label]
    resolution = spec.get("resolution")
    return {"name": spec.get("extractor", label), "weights": spec.get("weights"),
            "timesteps": spec.get("timesteps"), "layers": spec.get("layers"), "seed": spec.get("seed", suite.seed),
            "ensemble": spec.get("ensemble"), "conditioning": spec.get("conditioning"),
            "resolution": tuple(resolution) if isinstance(resolution, list) else resolution,
            "device": spec.get("device", "auto"), "dtype": spec.get("dtype", "auto"), "sites": spec.get("sites")}


def storage_options(suite: Suite, label: str, projection_from: Path | None):
    from probekit.extractors.storage import StorageOptions

    spec = suite.extractors[label]
    channels, drop = spec.get("channels"), spec.get("drop_massive")
    return StorageOptions(pool=spec.get("pool"), channels=channels, projection=spec.get("projection", "pca"),
                          projection_from=str(projection_from) if (channels or drop) and projection_from else None,
                          fit_samples=spec.get("fit_samples", 64), dtype=spec.get("store_dtype", "float16"),
                          seed=spec.get("seed", suite.seed), drop_massive=drop)


def build_extractor_of(suite: Suite, label: str, ctx: CellContext):
    """The suite's extractor LABEL, loaded once per process when the context keeps models."""
    from probekit.api import build_extractor

    if ctx.models is not None and label in ctx.models:
        return ctx.models[label]
    opts = extractor_options(suite, label)
    name = opts.pop("name")
    model = build_extractor(name, **{k: v for k, v in opts.items() if v is not None})
    if label != name:
        # The suite's label names the results: two labels over one registry entry (two weight folders of `dit`,
        # say) must not write to the same runs.
        model.name = label
    if ctx.models is not None:
        ctx.models[label] = model
    return model


def projected(suite: Suite, label: str) -> bool:
    spec = suite.extractors[label]
    return bool(spec.get("channels") or spec.get("drop_massive"))


class ExtractCell(Cell):
    """Extract one dataset split with one backbone into OUT/features/LABEL/DATASET/ROLE.h5 (or one part of it:
    ``part=(i, n)`` writes every n-th shard into the parts folder, a merge cell indexes them)."""

    kind = "extract"

    def __init__(self, suite: Suite, label: str, dataset: str, role: str, part: tuple[int, int] | None = None,
                 needs: list[str] | None = None):
        tail = f"/part-{part[0]}-of-{part[1]}" if part else ""
        super().__init__(suite, f"extract/{label}/{dataset}/{role}{tail}", needs)
        self.label_, self.dataset, self.role, self.part = label, dataset, role, part

    @property
    def split(self) -> dict[str, Any]:
        return self.suite.datasets[self.dataset][self.role]

    @property
    def out(self) -> Path:
        return self.suite.feature_path(self.label_, self.dataset, self.role)

    @property
    def label(self) -> str:
        part = f" [part {self.part[0]}/{self.part[1]}]" if self.part else ""
        return f"extract {self.label_} {self.dataset}/{self.split['split']}{part} -> {self.out}"


    def outputs(self) -> list[Path]:
        from probekit.store import parts_dir  # the feature format's own naming of a part's folder

        return [parts_dir(self.out)] if self.part else [self.out]

    def settings(self) -> dict[str, Any]:
        ds = self.suite.datasets[self.dataset]
        return {"extractor": self.suite.extractors[self.label_], "seed": self.suite.seed, "split": self.split,
                "image_size": ds.get("image_size"), "data_root": ds.get("data_root"), "part": self.part}

    def units(self) -> float:
        return float(self.split.get("limit") or dataset_size(self.dataset, self.split["split"],
                                                             self.suite.datasets[self.dataset])) / (
            self.part[1] if self.part else 1)

    def _kwargs(self, ctx: CellContext) -> tuple[Any, dict[str, Any]]:
        from probekit.datasets import load_dataset
        from probekit.extractors.workers import Workers

        spec, ds_spec = self.suite.extractors[self.label_], self.suite.datasets[self.dataset]
        ds = load_dataset(self.dataset, self.split["split"], root=ds_spec.get("data_root"),
                          image_size=ds_spec.get("image_size"))
        train = self.suite.feature_path(self.label_, self.dataset, "train") if self.role != "train" else None
        workers = Workers(rank=self.part[0], world_size=self.part[1]) if self.part else None
        return ds, dict(limit=self.split.get("limit"), batch_size=spec.get("batch_size", 8),
                        shard_size=spec.get("shard_size"), overwrite=ctx.overwrite and not self.part,
                        progress=False, storage=storage_options(self.suite, self.label_, train), workers=workers,
                        echo=ctx.echo)

    def preview(self, ctx: CellContext):
        """The extraction's plan (loads the model to know its map shapes; writes nothing)."""
        ds, kwargs = self._kwargs(ctx)
        kwargs["echo"] = lambda line: None
        return ds, extract_plan(build_extractor_of(self.suite, self.label_, ctx), ds, self.out, kwargs)

    def run(self, ctx: CellContext) -> dict[str, Any]:
        from probekit.extractors.runner import plan_extraction, run_extraction

        ds, kwargs = self._kwargs(ctx)
        model = build_extractor_of(self.suite, self.label_, ctx)
        for note in model.notes():
            ctx.echo(f"note: {note}")
        planned = {k: v for k, v in kwargs.items() if k not in ("progress", "echo")}
        job = plan_extraction(model, ds, self.out, **planned)
        if not ctx.overwrite and not self.part and job.finished:
            ctx.echo(f"{self.out} is already complete with these settings")
            return {"notes": model.notes(), "reused": True}
        run_extraction(job, progress=kwargs["progress"], echo=kwargs["echo"], on_progress=ctx.tick)
        return {"notes": model.notes()}


def extract_plan(model, ds, out: Path, kwargs: dict[str, Any]):
    from probekit.extractors.runner import extract_dataset

    return extract_dataset(model, ds, out, dry_run=True, **kwargs)


_SIZES: dict[tuple, int] = {}


def dataset_size(name: str, split: str, spec: dict[str, Any]) -> int:
    key = (name, split, spec.get("data_root"), spec.get("image_size"))
    if key not in _SIZES:
        from probekit.datasets import load_dataset

        try:
            _SIZES[key] = len(load_dataset(name, split, root=spec.get("data_root"), image_size=spec.get("image_size")))
        except (ProbekitError, OSError):
            _SIZES[key] = 1
    return _SIZES[key]


class MergeCell(Cell):
    """Index the parts of a split extraction as one feature file (``probekit merge``)."""

    kind = "merge"

    def __init__(self, suite: Suite, label: str, dataset: str, role: str, needs: list[str]):
        super().__init__(suite, f"merge/{label}/{dataset}/{role}", needs)
        self.label_, self.dataset, self.role = label, dataset, role

    @property
    def out(self) -> Path:
        return self.suite.feature_path(self.label_, self.dataset, self.role)

    @property
    def label(self) -> str:
        return f"merge {len(self.needs)} parts -> {self.out}"


    def outputs(self) -> list[Path]:
        return [self.out]

    def settings(self) -> dict[str, Any]:
        return {"parts": self.needs}

    def run(self, ctx: CellContext) -> dict[str, Any]:
        from probekit.extractors.runner import merge_parts

        ctx.echo(f"indexed {merge_parts(self.out)}")
        return {}


class CombineCell(Cell):
    """Several backbones' features of the same samples read as one (keys prefixed src=LABEL): checks that the
    files hold the same samples, and writes the list of files each split reads (OUT/features/NAME/DATASET/
    combined.json), which the combination's probes read."""

    kind = "combine"

    def __init__(self, suite: Suite, name: str, parts: list[str], dataset: str, needs: list[str]):
        super().__init__(suite, f"combine/{name}/{dataset}", needs)
        self.name, self.parts, self.dataset = name, parts, dataset

    @property
    def out(self) -> Path:
        return self.suite.out / "features" / self.name / self.dataset / "combined.json"

    @property
    def label(self) -> str:
        return f"combine {' + '.join(self.parts)} {self.dataset} -> {self.out}"


    def outputs(self) -> list[Path]:
        return [self.out]

    def settings(self) -> dict[str, Any]:
        return {"parts": self.parts}

    def files(self) -> dict[str, list[str]]:
        roles = [r for r in ("train", "val", "eval") if r in self.suite.datasets[self.dataset]]
        return {role: [str(self.suite.feature_path(p, self.dataset, role)) for p in self.parts] for role in roles}

    def run(self, ctx: CellContext) -> dict[str, Any]:
        from probekit.atomic import write_text
        from probekit.combined import open_features

        files = self.files()
        for role, paths in files.items():
            with open_features(paths) as reader:  # refuses files of different samples, naming them
                ctx.echo(f"{role}: {len(reader.keys)} maps of {reader.num_samples} samples from {len(paths)} files")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        write_text(self.out, json.dumps(files, indent=1))
        return {}


# -- probes ---------------------------------------------------------------------------------------------------
def maps_of(suite: Suite, label: str) -> int:
    """How many maps an extractor's file will hold, from its settings (for the ETA before the file exists)."""
    spec = suite.extractors[label]
    return max(1, len(spec.get("timesteps") or [1]) * len(spec.get("layers") or [1]) * len(spec.get("sites") or [1]))


class ProbeCell(Cell):
    """One probe entry of a source (an extractor's label or a combination) for one task on one dataset:
    every map alone (each_map), the map chosen on validation (best_map_of, read from its choose cell's
    output), the maps named (keys), or a fusion of all maps."""

    kind = "probe"

    def __init__(self, suite: Suite, id: str, source: str, parts: list[str], dataset: str, task: str,
                 probe: dict[str, Any], needs: list[str], files_from: CombineCell | None = None,
                 choice_from: "ChooseCell | None" = None):
        super().__init__(suite, id, needs)
        self.source, self.parts, self.dataset, self.task, self.probe = source, parts, dataset, task, probe
        self.files_from, self.choice_from = files_from, choice_from
        self.seeds = seeds_of(probe, suite.seed)

    @property
    def fusion(self) -> str:
        return self.probe.get("fusion", "single")

    @property
    def head(self) -> str:
        return self.probe.get("head", "linear")

    @property
    def what(self) -> str:
        p = self.probe
        return "each map" if p.get("each_map") else f"best {p['best_map_of']} map" if p.get("best_map_of") else (
            "maps " + ",".join(p["keys"]) if p.get("keys") else self.fusion)

    @property
    def label(self) -> str:
        return (f"probe {self.source} {self.dataset} {self.task} {self.head}-{self.what}"
                + (f" x{len(self.seeds)} seeds" if len(self.seeds) > 1 else ""))


    def outputs(self) -> list[Path]:
        return []  # run folders whose names depend on the maps: the state reads the records instead

    def options(self) -> dict[str, Any]:
        return {**self.suite.training, **({"lrs": self.probe["lrs"]} if "lrs" in self.probe else {})}

    def settings(self) -> dict[str, Any]:
        return {"probe": self.probe, "training": self.options(), "seeds": self.seeds, "task": self.task}

    def units(self) -> float:
        """Trials: learning rates (and own-loss weights after the first at the chosen rate) per seed, per map."""
        from probekit.probes.config import ProbeConfig

        cfg = ProbeConfig.build(task=self.task, fusion=self.fusion, head=self.head, seeds=self.seeds,
                                fusion_level=self.probe.get("fusion_level", "auto"),
                                **{k: v for k, v in self.options().items() if k != "device"})
        per_seed = len(cfg.lrs) + max(0, len(cfg.own_loss_weights or [1]) - 1)
        maps = sum(maps_of(self.suite, p) for p in self.parts) if self.probe.get("each_map") else 1
        return float(per_seed * len(self.seeds) * maps)

    def files(self) -> dict[str, Any]:
        if self.files_from is not None:
            files = json.loads(self.files_from.out.read_text())
        else:
            roles = [r for r in ("train", "val", "eval") if r in self.suite.datasets[self.dataset]]
            files = {r: [str(self.suite.feature_path(p, self.dataset, r)) for p in self.parts] for r in roles}
        return {role: paths[0] if len(paths) == 1 else paths for role, paths in files.items()}

    def state(self) -> tuple[str, str]:
        state, why = probe_state(self.suite, self.parts, self.dataset, self.task, self.probe, self.seeds)
        stamp = self.stamp() or {}
        if state == "done" and self.probe.get("each_map") and stamp.get("status") != "done":
            # one map's record makes probe_state say done; the cell is done when every map's is, which only its
            # own stamp says (and the choice of the best map reads the runs listed there)
            return "stale", "an interrupted run of it left some maps unprobed: the run completes them"
        return state, why

    def run(self, ctx: CellContext) -> dict[str, Any]:
        from probekit.probes.trainer import train_probe

        files = self.files()
        common = dict(task=self.task, fusion=self.fusion, head=self.head, seeds=self.seeds,
                      fusion_level=self.probe.get("fusion_level", "auto"), val_features=files.get("val"),
                      results_root=self.suite.results, overwrite="overwrite" if ctx.overwrite else "reuse",
                      progress=False, tick=lambda _: ctx.tick(1), return_existing=True, **self.options())
        if self.probe.get("each_map"):
            from probekit.combined import open_features

            with open_features(files["train"]) as reader:
                keys = list(reader.keys)
            recs = [train_probe(files["train"], files["eval"], keys=[k], **common) for k in keys]
        else:
            keys = self.probe.get("keys")
            if self.choice_from is not None:
                keys = json.loads((self.choice_from.home / CHOICE_FILE).read_text())["keys"]
                ctx.echo(f"the best {self.probe['best_map_of']} map on validation: {', '.join(keys)}")
            recs = [train_probe(files["train"], files["eval"], keys=keys, **common)]
        recs = [r for r in recs if r is not None]
        return {"runs": [str(run_dir_of(self.suite, r)) for r in recs],
                "trained_runs": [str(run_dir_of(self.suite, r)) for r in recs if not r.get("_skipped")]}


def run_dir_of(suite: Suite, record: dict[str, Any]) -> Path:
    from probekit.results import default_run_dir

    return default_run_dir(suite.results, record["extractor"], record["dataset"], record["task"],
                           record["probe"]["name"])


class ChooseCell(Cell):
    """The single map whose each-map probe for TASK scored best on validation (never on test): written to
    choice.json, which the best_map_of probes read."""

    kind = "choose"

    def __init__(self, suite: Suite, source: str, dataset: str, task: str, each_map: ProbeCell):
        super().__init__(suite, f"choose/{source}/{dataset}/{task}", [each_map.id])
        self.source, self.dataset, self.task, self.each_map = source, dataset, task, each_map

    @property
    def label(self) -> str:
        return f"choose the best {self.task} map of {self.source} {self.dataset} on validation"


    def outputs(self) -> list[Path]:
        return [self.home / CHOICE_FILE]

    def settings(self) -> dict[str, Any]:
        """The records it chooses among (a rewritten one makes the choice stale), compared on which seeds."""
        runs = (self.each_map.stamp() or {}).get("runs") or []
        return {"seeds": self.each_map.seeds, "records": [(run, _mtime(Path(run) / "result.json")) for run in runs]}

    def run(self, ctx: CellContext) -> dict[str, Any]:
        from probekit.atomic import write_text
        from probekit.results import read_record

        stamp = self.each_map.stamp() or {}
        records = []
        for run in stamp.get("runs", []):
            try:
                records.append(read_record(run))
            except (ProbekitError, OSError):
                ctx.echo(f"skipped {run}: its record cannot be read")
        keys = best_keys(records, self.each_map.seeds)
        if keys is None:
            raise ProbekitError(f"no single-map {self.task} probe of {self.source} on {self.dataset} has a "
                                "validation score to choose the best map by (see the each-map cell's log: "
                                f"{self.each_map.home / LOG_FILE})")
        choice = {"task": self.task, "keys": keys, "seeds": self.each_map.seeds, "among": len(records)}
        ctx.echo(f"chose {', '.join(keys)} among {len(records)} maps")
        write_text(self.home / CHOICE_FILE, json.dumps(choice, indent=1))
        return {"keys": keys}


def best_keys(recs: list[dict], seeds: list[int]) -> list[str] | None:
    """The single map whose probe scored best on validation (never on test), compared over ``seeds``, the seeds
    every map was probed with: a map whose run was later extended to more seeds (the best map's own three-seed
    run shares its folder) is judged on the same seeds as the others, so a rerun of the suite chooses the same
    map."""
    from probekit.reports.tables import selection_score

    scored = [r for r in recs if selection_score(r, seeds) is not None]
    if not scored:
        return None
    from probekit.scores import better

    best = scored[0]
    for rec in scored[1:]:  # a tie keeps the first
        if better(selection_score(rec, seeds), selection_score(best, seeds), scored[0]["higher_is_better"]):
            best = rec
    return list(best["probe"]["feature_keys"])


def probe_state(suite: Suite, parts: list[str], ds_name: str, task: str, probe: dict,
                seeds: list[int]) -> tuple[str, str]:
    """"done" when a result of this probe of these extractors under the suite's results was made with the
    settings and seeds the run would use (each_map: any map's), "stale" when results exist but none was (the
    run replaces them, as ``overwrite="reuse"`` does), else "pending". A label's results sit under LABEL, or
    LABEL[storage] when its maps are stored reduced; a combination's under its parts' folder names joined by
    '+'."""
    root = suite.results
    if not root.exists():
        return "pending", ""
    from probekit.probes.config import ProbeConfig, fusion_class, probe_stem
    from probekit.probes.trainer import settings_differ

    head, fusion = probe.get("head", "linear"), probe.get("fusion", "single")
    pattern = probe_stem(head, fusion, probe.get("fusion_level", "auto")) + ("-*" if fusion_class(fusion).reads_one_map else "")
    # not a glob over the label: labels may hold glob characters ([, *)
    folder_name = re.compile(r"\+".join(re.escape(p) + r"(\[[^\]]*\])?" for p in parts))
    paths = [path for folder in root.iterdir() if folder_name.fullmatch(folder.name)
             for path in sorted((folder / ds_name / task).glob(f"{pattern}/result.json"))]
    if not paths:
        return "pending", ""
    cfg = ProbeConfig.build(task=task, fusion=fusion, head=head, seeds=seeds,
                            fusion_level=probe.get("fusion_level", "auto"),
                            **{**suite.training, **({"lrs": probe["lrs"]} if "lrs" in probe else {})})
    differ: set[str] = set()
    for path in paths:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # unreadable: the run replaces it
        old = record.get("config") or {}
        names = settings_differ(old, cfg, skip=("keys",))  # which map: chosen when the run reads the files
        if not names and set(seeds) <= set(record.get("seeds") or [old.get("seed")]):
            return "done", ""
        differ.update(names or ["seeds"])
    return "stale", f"results of other settings ({', '.join(sorted(differ))}): the run replaces them"


# -- the report -----------------------------------------------------------------------------------------------
class ReportCell(Cell):
    """The report and leaderboard over every record under OUT/results (after every probe cell, done or not)."""

    kind = "report"

    def __init__(self, suite: Suite, after: list[str]):
        super().__init__(suite, "report", after=after)

    @property
    def label(self) -> str:
        return f"report -> {self.suite.out / self.suite.report}"


    def outputs(self) -> list[Path]:
        return [self.suite.out / self.suite.report / "report.html"]

    def settings(self) -> dict[str, Any]:
        """The records it reads (a new or rewritten record makes it stale)."""
        return {"records": records_fingerprint(self.suite.results)}

    def run(self, ctx: CellContext) -> dict[str, Any]:
        from probekit.reports.report import write_report

        if not any(self.suite.results.rglob("result.json")) if self.suite.results.exists() else True:
            ctx.echo("no probe has a result yet: nothing to report")
            return {"written": {}}
        written = write_report([self.suite.results], self.suite.out / self.suite.report, skip_invalid=True)
        return {"written": {k: str(v) for k, v in written.items()}}


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def records_fingerprint(root: Path) -> list[tuple[str, int]]:
    if not root.exists():
        return []
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("result.json"))

