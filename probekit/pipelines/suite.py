"""`probekit run SUITE.yaml`: compare backbones on tasks in one command.

A suite names extractors (with their weights, timesteps, layers and storage options), datasets and the splits
that play each role (train, eval, optionally val), and the probes to train on each (fusion x head x tasks x
seeds). The runner extracts (reusing a finished feature file with the same settings, resuming an interrupted
one), probes (skipping finished runs unless asked to redo them), and writes the report and leaderboard; a cell
that fails is reported and the others go on. The schema is in docs/suites.md; shipped suites are in
``probekit/suites/`` (``probekit run demo`` runs the demo).
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from probekit.errors import ProbekitError

SUITE_VERSION = 1
TOP_KEYS = {"suite", "version", "description", "out", "seed", "training", "datasets", "extractors", "combine",
            "probe_sets", "report"}
EXTRACTOR_KEYS = {"extractor", "weights", "timesteps", "layers", "batch_size", "shard_size", "resolution",
                  "conditioning", "ensemble", "device", "dtype", "pool", "channels", "projection", "fit_samples",
                  "store_dtype", "probes", "seed", "sites", "drop_massive"}
COMBINE_KEYS = {"name", "of", "probes"}
DATASET_KEYS = {"train", "eval", "val", "image_size", "data_root"}
SPLIT_KEYS = {"split", "limit"}
PROBE_KEYS = {"fusion", "head", "tasks", "seeds", "each_map", "best_map_of", "keys", "fusion_level", "lrs"}
TRAINING_KEYS = {"epochs", "lrs", "batch_size", "fusion_lr", "weight_decay", "own_loss_weights", "own_loss_weight",
                 "depth_loss", "device"}


# -- the suite file --------------------------------------------------------------------------------
def _check_keys(where: str, got: dict, allowed: set[str], source: str) -> None:
    if not isinstance(got, dict):
        raise ProbekitError(f"{source}: {where} must be a mapping, got {type(got).__name__}")
    for key in got:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(sorted(allowed))})"
            raise ProbekitError(f"{source}: unknown key {key!r} in {where}{hint}")


def _need(where: str, value: Any, kind, source: str, what: str):
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ProbekitError(f"{source}: {where} must be {what}, got {value!r}")
    return value


@dataclass
class Suite:
    name: str
    source: str
    out: Path
    seed: int
    training: dict[str, Any]
    datasets: dict[str, dict[str, Any]]
    extractors: dict[str, dict[str, Any]]
    combine: list[dict[str, Any]]
    probe_sets: dict[str, list[dict[str, Any]]]
    description: str = ""
    report: str = "report"

    @property
    def results(self) -> Path:
        return self.out / "results"

    def feature_path(self, extractor: str, dataset: str, role: str) -> Path:
        return self.out / "features" / extractor / dataset / f"{role}.h5"

    def probes_of(self, entry: dict[str, Any]) -> list[dict[str, Any]]:
        return self.probe_sets[entry.get("probes", "default")]


def shipped_suites() -> dict[str, Path]:
    folder = resources.files("probekit").joinpath("suites")
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def load_suite(name_or_path: str | Path, out: str | Path | None = None) -> Suite:
    """A suite from a YAML file, or a shipped one by name; every key checked, unknown ones named."""
    path = Path(name_or_path)
    if not path.is_file():
        shipped = shipped_suites()
        if str(name_or_path) not in shipped:
            close = difflib.get_close_matches(str(name_or_path), sorted(shipped), n=1)
            raise ProbekitError(f"no suite file {name_or_path} (and no shipped suite of that name"
                                + (f"; did you mean {close[0]!r}?" if close else f"; shipped: {', '.join(sorted(shipped))}")
                                + ")")
        path = shipped[str(name_or_path)]
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProbekitError(f"{path} is not valid YAML: {exc}") from None
    return parse_suite(raw, str(path), out)


def parse_suite(raw: Any, source: str = "suite", out: str | Path | None = None) -> Suite:
    _check_keys("the suite", raw, TOP_KEYS, source)
    version = raw.get("version", SUITE_VERSION)
    if version != SUITE_VERSION:
        raise ProbekitError(f"{source}: suite version {version!r}; this probekit reads version {SUITE_VERSION}")
    training = raw.get("training") or {}
    _check_keys("training", training, TRAINING_KEYS, source)
    datasets = raw.get("datasets") or {}
    _need("datasets", datasets, dict, source, "a mapping of dataset names")
    if not datasets:
        raise ProbekitError(f"{source}: no datasets")
    for name, spec in datasets.items():
        _check_keys(f"datasets.{name}", spec, DATASET_KEYS, source)
        if spec.get("val", "") is None:  # `val: null` says "no validation split" as leaving it out does
            del spec["val"]
        for role in ("train", "eval"):
            if role not in spec:
                raise ProbekitError(f"{source}: datasets.{name} needs a {role!r} split ({{split: ..., limit: ...}})")
        for role in ("train", "eval", "val"):
            if role in spec:
                if isinstance(spec[role], str):
                    spec[role] = {"split": spec[role]}
                _check_keys(f"datasets.{name}.{role}", spec[role], SPLIT_KEYS, source)
                if "split" not in spec[role]:
                    raise ProbekitError(f"{source}: datasets.{name}.{role} names no split")
    probe_sets = raw.get("probe_sets") or {}
    _need("probe_sets", probe_sets, dict, source, "a mapping of names to lists of probes")
    for set_name, probes in probe_sets.items():
        _need(f"probe_sets.{set_name}", probes, list, source, "a list of probes")
        for i, probe in enumerate(probes):
            _check_keys(f"probe_sets.{set_name}[{i}]", probe, PROBE_KEYS, source)
            _check_probe(probe, f"probe_sets.{set_name}[{i}]", source)
    extractors = raw.get("extractors") or {}
    _need("extractors", extractors, dict, source, "a mapping of names to extractor settings")
    if not extractors:
        raise ProbekitError(f"{source}: no extractors")
    for label, spec in extractors.items():
        spec = spec or {}
        extractors[label] = spec
        _check_keys(f"extractors.{label}", spec, EXTRACTOR_KEYS, source)
        _check_probe_set(spec, f"extractors.{label}", probe_sets, source)
    combine = raw.get("combine") or []
    _need("combine", combine, list, source, "a list")
    for i, spec in enumerate(combine):
        _check_keys(f"combine[{i}]", spec, COMBINE_KEYS, source)
        if "name" not in spec or len(spec.get("of") or []) < 2:
            raise ProbekitError(f"{source}: combine[{i}] needs a name and at least two extractors under 'of'")
        for part in spec["of"]:
            if part not in extractors:
                raise ProbekitError(f"{source}: combine[{i}] names extractor {part!r}, which the suite does not "
                                    f"define (it defines: {', '.join(extractors)})")
        _check_probe_set(spec, f"combine[{i}]", probe_sets, source)
    from probekit.registries import EXTRACTORS

    for label, spec in extractors.items():
        name = spec.get("extractor", label)
        if not str(name).startswith("timm:"):
            try:
                EXTRACTORS.get(name)
            except ProbekitError as exc:
                raise ProbekitError(f"{source}: extractors.{label}: {exc}") from None
    root = Path(out) if out is not None else Path(raw.get("out") or Path("suites") / str(raw.get("suite", "suite")))
    return Suite(name=str(raw.get("suite", Path(source).stem)), source=source, out=root,
                 seed=int(raw.get("seed", 0)), training=training, datasets=datasets, extractors=extractors,
                 combine=combine, probe_sets=probe_sets, description=str(raw.get("description", "")),
                 report=str(raw.get("report", "report")))


def _check_probe_set(spec: dict, where: str, probe_sets: dict, source: str) -> None:
    name = spec.get("probes", "default")
    if name not in probe_sets:
        close = difflib.get_close_matches(str(name), sorted(probe_sets), n=1)
        raise ProbekitError(f"{source}: {where}.probes names probe set {name!r}, which is not defined"
                            + (f"; did you mean {close[0]!r}?" if close else f" (defined: {', '.join(probe_sets)})"))


def _check_probe(probe: dict, where: str, source: str) -> None:
    from probekit.registries import FUSIONS, HEADS, TASKS

    for name, registry, default in (("fusion", FUSIONS, "single"), ("head", HEADS, "linear")):
        try:
            registry.get(probe.get(name, default))
        except ProbekitError as exc:
            raise ProbekitError(f"{source}: {where}: {exc}") from None
    from probekit.probes.config import ProbeConfig

    try:  # the probe's own settings, checked as `probekit probe` checks them
        ProbeConfig.build(fusion=probe.get("fusion", "single"), head=probe.get("head", "linear"),
                          fusion_level=probe.get("fusion_level", "auto"),
                          **({"lrs": probe["lrs"]} if "lrs" in probe else {}))
    except (ProbekitError, TypeError, ValueError) as exc:
        raise ProbekitError(f"{source}: {where}: {exc}") from None
    tasks = probe.get("tasks")
    if not tasks or not isinstance(tasks, list):
        raise ProbekitError(f"{source}: {where} needs 'tasks', a list such as [seg, saliency, depth]")
    for task in tasks:
        try:
            TASKS.get(task)
        except ProbekitError as exc:
            raise ProbekitError(f"{source}: {where}: {exc}") from None
    single = probe.get("fusion", "single") == "single"
    ways = sum(bool(probe.get(k)) for k in ("each_map", "best_map_of", "keys"))
    if single and ways != 1:
        raise ProbekitError(f"{source}: {where}: a single-map probe needs exactly one of each_map: true, "
                            "best_map_of: TASK, keys: [...]")
    if not single and (probe.get("each_map") or probe.get("best_map_of")):
        raise ProbekitError(f"{source}: {where}: each_map and best_map_of are for single-map probes")


def seeds_of(probe: dict[str, Any], base: int) -> list[int]:
    seeds = probe.get("seeds", 1)
    if isinstance(seeds, int):
        return [base + i for i in range(max(1, seeds))]
    return [int(s) for s in seeds]


# -- the plan ------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """One unit of work: an extraction of one split, or one probe run."""

    kind: str  # "extract" | "probe"
    label: str
    run: Callable[[], Any] | None = None
    status: str = "pending"  # pending | done | ran | failed | blocked
    detail: str = ""
    weight: int = 1  # units of progress
    needs: list[str] = field(default_factory=list)
    provides: str = ""  # what later cells may need (an extraction's "features of LABEL on DATASET")


@dataclass
class SuiteRun:
    suite: Suite
    cells: list[Cell] = field(default_factory=list)

    def summary(self) -> str:
        from collections import Counter

        counts = Counter(c.status for c in self.cells)
        return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))

    @property
    def failed(self) -> list[Cell]:
        return [c for c in self.cells if c.status in ("failed", "blocked")]


def _extractor_options(suite: Suite, label: str) -> dict[str, Any]:
    spec = suite.extractors[label]
    return {"name": spec.get("extractor", label), "weights": spec.get("weights"),
            "timesteps": spec.get("timesteps"), "layers": spec.get("layers"), "seed": spec.get("seed", suite.seed),
            "ensemble": spec.get("ensemble"), "conditioning": spec.get("conditioning"),
            "resolution": spec.get("resolution"), "device": spec.get("device", "auto"),
            "dtype": spec.get("dtype", "auto"), "sites": spec.get("sites")}


def _storage(suite: Suite, label: str, projection_from: Path | None):
    from probekit.extractors.storage import StorageOptions

    spec = suite.extractors[label]
    channels, drop = spec.get("channels"), spec.get("drop_massive")
    return StorageOptions(pool=spec.get("pool"), channels=channels, projection=spec.get("projection", "pca"),
                          projection_from=str(projection_from) if (channels or drop) and projection_from else None,
                          fit_samples=spec.get("fit_samples", 64), dtype=spec.get("store_dtype", "float16"),
                          seed=spec.get("seed", suite.seed), drop_massive=drop)


def run_suite(suite: Suite, *, dry_run: bool = False, overwrite: bool = False, progress: bool = True,
              echo: Callable[[str], None] = print) -> SuiteRun:
    """Extract, probe and report as the suite says; returns what happened to every cell."""
    from tqdm.auto import tqdm

    from probekit import scores
    from probekit.api import build_extractor
    from probekit.datasets import load_dataset
    from probekit.extractors.plan import free_bytes, human
    from probekit.extractors.runner import extract_dataset
    from probekit.probes.trainer import train_probe

    started = time.perf_counter()
    state = SuiteRun(suite)
    models: dict[str, Any] = {}
    lrs = suite.training.get("lrs")
    n_lrs = len(lrs) if lrs else 5

    noted: set[str] = set()

    def extractor(label: str):
        if label not in models:
            opts = _extractor_options(suite, label)
            name = opts.pop("name")
            models[label] = build_extractor(name, **{k: v for k, v in opts.items() if v is not None})
            if label != name:
                # The suite's label names the results: two labels over one registry entry (two weight folders
                # of `dit`, say) must not write to the same runs.
                models[label].name = label
            for note in models[label].notes():
                if note not in noted:
                    noted.add(note)
                    (bar.write if not dry_run and progress else echo)(f"note: {note}")
        return models[label]

    # Extraction cells: every dataset role of every extractor, the train split first (it holds the projection);
    # one extractor's cells together, so its model is released before the next one loads.
    pending_bytes = 0
    for label in suite.extractors:
        jobs = [(ds_name, ds_spec, role) for ds_name, ds_spec in suite.datasets.items()
                for role in ("train", "val", "eval") if role in ds_spec]
        for j, (ds_name, ds_spec, role) in enumerate(jobs):
            out = suite.feature_path(label, ds_name, role)
            split = ds_spec[role]

            def do(label=label, ds_name=ds_name, ds_spec=ds_spec, role=role, out=out, split=split, plan=False,
                   last=(j == len(jobs) - 1)):
                ds = load_dataset(ds_name, split["split"], root=ds_spec.get("data_root"),
                                  image_size=ds_spec.get("image_size"))
                train_file = suite.feature_path(label, ds_name, "train") if role != "train" else None
                kwargs = dict(limit=split.get("limit"), batch_size=suite.extractors[label].get("batch_size", 8),
                              shard_size=suite.extractors[label].get("shard_size"), overwrite=overwrite,
                              progress=False, storage=_storage(suite, label, train_file))
                try:
                    if plan:
                        return extract_dataset(extractor(label), ds, out, dry_run=True, **kwargs)
                    if not overwrite and extract_dataset(extractor(label), ds, out, dry_run=True, **kwargs).finished:
                        return "done"  # a finished file of these very settings: nothing to do
                    return extract_dataset(extractor(label), ds, out, on_progress=lambda n: bar.update(n), **kwargs)
                finally:
                    if last:
                        models.pop(label, None)  # its cells are done: free the model before the next loads

            cell = Cell("extract", f"extract {label} {ds_name}/{split['split']} -> {out}", do,
                        weight=int(split.get("limit") or 0) or 1, provides=_features_of(label, ds_name))
            if dry_run:
                try:
                    plan = do(plan=True)
                    done = plan.finished
                    cell.status = "done" if done else "pending"
                    cell.detail = (f"{plan.num_samples} images, {human(plan.total_bytes)}"
                                   + ("" if done else f", {human(plan.pending_bytes)} to write"
                                      + (f", {plan.shards_done} of {plan.num_shards} shards done"
                                         if plan.shards_done else ""))
                                   + (f"; its channel projection comes from {plan.waits_for}, which does not "
                                      "exist yet (the train split runs first)" if plan.waits_for else ""))
                    pending_bytes += 0 if done else plan.pending_bytes
                except ProbekitError as exc:
                    cell.status, cell.detail = "failed", str(exc)
            state.cells.append(cell)

    # Probe cells.
    sources = [(label, [label], suite.extractors[label]) for label in suite.extractors]
    sources += [(spec["name"], list(spec["of"]), spec) for spec in suite.combine]
    for ds_name, ds_spec in suite.datasets.items():
        for label, parts, spec in sources:
            files = {role: [suite.feature_path(p, ds_name, role) for p in parts]
                     for role in ("train", "val", "eval") if role in ds_spec}
            best_of: dict[str, list[str] | None] = {}
            for probe in suite.probes_of(spec):
                for task in probe["tasks"]:
                    seeds = seeds_of(probe, suite.seed)
                    fusion, head = probe.get("fusion", "single"), probe.get("head", "linear")
                    what = ("each map" if probe.get("each_map") else
                            f"best {probe['best_map_of']} map" if probe.get("best_map_of") else fusion)
                    cell = Cell("probe", f"probe {label} {ds_name} {task} {head}-{what}"
                                + (f" x{len(seeds)} seeds" if len(seeds) > 1 else ""),
                                weight=len(seeds) * (len(probe.get("lrs") or ()) or n_lrs), needs=[_features_of(p, ds_name) for p in parts])

                    def do(probe=probe, task=task, seeds=seeds, fusion=fusion, head=head, files=files, label=label,
                           best_of=best_of, cell=cell):
                        common = dict(task=task, fusion=fusion, head=head, seeds=seeds,
                                      fusion_level=probe.get("fusion_level", "auto"),
                                      val_features=files.get("val"), results_root=suite.results,
                                      overwrite="overwrite" if overwrite else "reuse", progress=False,
                                      tick=lambda _: bar.update(1), return_existing=True,
                                      **{**suite.training, **({"lrs": probe["lrs"]} if "lrs" in probe else {})})
                        if probe.get("each_map"):
                            from probekit.combined import open_features

                            with open_features(files["train"]) as reader:
                                keys = list(reader.keys)
                            cell.weight = len(keys) * len(seeds) * (len(probe.get("lrs") or ()) or n_lrs)
                            recs = [train_probe(files["train"], files["eval"], keys=[k], **common) for k in keys]
                            best_of[task] = _best_keys(recs, seeds)
                            return recs
                        keys = probe.get("keys")
                        if probe.get("best_map_of"):
                            keys = best_of.get(probe["best_map_of"])
                            if keys is None:
                                raise ProbekitError(f"no single-map {probe['best_map_of']} probes of {label} to "
                                                    "choose the best map from (list an each_map probe first)")
                        return [train_probe(files["train"], files["eval"], keys=keys, **common)]

                    cell.run = do
                    if dry_run:
                        try:
                            cell.status, cell.detail = _probe_state(suite, parts, ds_name, task, probe, seeds)
                        except ProbekitError as exc:
                            cell.status, cell.detail = "failed", str(exc)
                    state.cells.append(cell)

    if dry_run:
        free = free_bytes(suite.out)
        echo(f"suite {suite.name} ({suite.source}) -> {suite.out}")
        for cell in state.cells:
            echo(f"  [{cell.status:>7}] {cell.label}" + (f"  ({cell.detail})" if cell.detail else ""))
        echo(f"to write: {human(pending_bytes)} of features; {human(free)} free on {suite.out}'s disk")
        return state

    total = sum(c.weight for c in state.cells)
    bar = tqdm(total=total, desc=f"suite {suite.name}", unit="step", disable=not progress)
    say = bar.write if progress else echo
    failed_features: set[str] = set()
    for cell in state.cells:
        blocked = [n for n in cell.needs if n in failed_features]
        if blocked:
            cell.status, cell.detail = "blocked", f"needs {', '.join(blocked)}, which failed"
            say(f"blocked: {cell.label} ({cell.detail})")
            continue
        bar.set_description(cell.label[:60])
        before = bar.n
        try:
            result = cell.run()
        except (ProbekitError, OSError, ValueError, RuntimeError) as exc:
            cell.status, cell.detail = "failed", f"{type(exc).__name__}: {exc}" if not isinstance(
                exc, ProbekitError) else str(exc)
            if cell.provides:
                failed_features.add(cell.provides)
            say(f"FAILED: {cell.label}: {cell.detail}")
            if not isinstance(exc, ProbekitError):
                say(traceback.format_exc(limit=3))
            bar.update(max(0, cell.weight - (bar.n - before)))
            continue
        bar.update(max(0, cell.weight - (bar.n - before)))
        if cell.kind == "probe":
            recs = [r for r in result if r is not None and not r.get("_skipped")]
            cell.status = "ran" if recs else "done"
            for rec in recs:
                unit = scores.info(rec["main_score_name"], rec)["unit"]
                say(f"{rec['extractor']:<24} {rec['task']:<8} {rec['main_score_name']:<5} "
                    f"{scores.format_score(rec['main_score'], unit, rec.get('main_score_std')):>14}  "
                    f"{rec['probe']['name']}")
        else:
            cell.status = "done" if result == "done" else "ran"
    bar.close()
    if any(c.kind == "probe" and c.status in ("ran", "done") for c in state.cells):
        from probekit.reports.report import write_report

        written = write_report([suite.results], suite.out / suite.report, skip_invalid=True)
        echo("")
        echo(written["leaderboard"].read_text())
        echo(f"  report:  {written['html']}\n  tables:  {written['markdown']}  {written['csv']}  "
             f"{written['leaderboard']}\n  figures: {suite.out / suite.report / 'figures'}\n  runs:    {suite.results}")
    echo(f"suite {suite.name}: {state.summary()} in {time.perf_counter() - started:.0f} s")
    for cell in state.failed:
        echo(f"  {cell.status}: {cell.label}: {cell.detail}")
    return state


def _best_keys(recs: list[dict], seeds: list[int]) -> list[str] | None:
    """The single map whose probe scored best on validation (never on test), compared over ``seeds``, the seeds
    every map was probed with: a map whose run was later extended to more seeds (the best map's own three-seed
    run shares its folder) is judged on the same seeds as the others, so a rerun of the suite chooses the same
    map."""
    from probekit.reports.tables import selection_score

    scored = [r for r in recs if selection_score(r, seeds) is not None]
    if not scored:
        return None
    best = (max if scored[0]["higher_is_better"] else min)(scored, key=lambda r: selection_score(r, seeds))
    return list(best["probe"]["feature_keys"])


def _features_of(label: str, ds_name: str) -> str:
    return f"features of {label} on {ds_name}"


def _probe_state(suite: Suite, parts: list[str], ds_name: str, task: str, probe: dict,
                 seeds: list[int]) -> tuple[str, str]:
    """For --dry-run: "done" when a result of this probe of these extractors under the suite's results was made
    with the settings and seeds the run would use (each_map: any map's), "stale" when results exist but none was
    (the run replaces them, as ``overwrite="reuse"`` does), else "pending". A label's results sit under LABEL,
    or LABEL[storage] when its maps are stored reduced; a combination's under its parts' folder names joined by
    '+'."""
    root = suite.results
    if not root.exists():
        return "pending", ""
    from probekit.probes.config import ProbeConfig, probe_stem
    from probekit.probes.trainer import settings_differ

    head, fusion = probe.get("head", "linear"), probe.get("fusion", "single")
    pattern = probe_stem(head, fusion, probe.get("fusion_level", "auto")) + ("-*" if fusion == "single" else "")
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


def with_overrides(suite: Suite, **overrides: Any) -> Suite:
    """A copy with the demo's command-line settings applied (limits, timesteps, layers, epochs, seed, extractors)."""
    suite = copy.deepcopy(suite)
    for ds in suite.datasets.values():
        for role, key in (("train", "n_train"), ("eval", "n_eval")):
            if overrides.get(key) is not None:
                ds[role]["limit"] = overrides[key]
    for spec in suite.extractors.values():
        for key in ("timesteps", "layers"):
            if overrides.get(key) is not None:
                spec[key] = list(overrides[key])
    if overrides.get("epochs") is not None:
        suite.training["epochs"] = overrides["epochs"]
    if overrides.get("seed") is not None:
        suite.seed = int(overrides["seed"])
    for label in overrides.get("drop_extractors") or []:
        suite.extractors.pop(label, None)
    return suite
