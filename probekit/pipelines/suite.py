"""`probekit run SUITE.yaml`: compare backbones on tasks in one command.

A suite names extractors (with their weights, timesteps, layers and storage options), datasets and the splits
that play each role (train, eval, optionally val), and the probes to train on each (fusion x head x tasks x
seeds). This module reads and checks the file (the schema: probekit.pipelines.suite_schema) and the disk it
names; the run is a plan of cells (probekit.pipelines.plan, .cells) walked by a launcher
(probekit.pipelines.launchers, .execute): extraction reuses a finished feature file with the same settings and
resumes an interrupted one, probes keep finished runs unless asked to redo them, a cell that fails is reported
and the others go on. The schema is in docs/suites.md; shipped suites are in ``probekit/suites/`` (``probekit
run demo`` runs the demo).
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from probekit.errors import ProbekitError
from probekit.pipelines.suite_schema import Lines, read_yaml, validate

SUITE_VERSION = 1


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
    launcher: dict[str, Any] = field(default_factory=dict)

    @property
    def results(self) -> Path:
        return self.out / "results"

    def feature_path(self, extractor: str, dataset: str, role: str) -> Path:
        return self.out / "features" / extractor / dataset / f"{role}.h5"

    def probes_of(self, entry: dict[str, Any]) -> list[dict[str, Any]]:
        return self.probe_sets[entry.get("probes", "default")]

    def to_raw(self) -> dict[str, Any]:
        """The suite as a file would say it (every override applied, ``out`` absolute): what a fresh process
        reads to run one of its cells."""
        raw = {"suite": self.name, "version": SUITE_VERSION, "description": self.description,
               "out": str(self.out.resolve()), "seed": self.seed, "training": self.training,
               "datasets": self.datasets, "extractors": self.extractors, "combine": self.combine,
               "probe_sets": self.probe_sets, "report": self.report}
        return copy.deepcopy({**raw, **({"launcher": self.launcher} if self.launcher else {})})


def shipped_suites() -> dict[str, Path]:
    folder = resources.files("probekit").joinpath("suites")
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def load_suite(name_or_path: str | Path, out: str | Path | None = None) -> Suite:
    """A suite from a YAML file, or a shipped one by name; every key checked, unknown ones named, a key given
    twice refused."""
    path = Path(name_or_path)
    if not path.is_file():
        if path.exists():
            raise ProbekitError(f"{path} is a folder, not a suite file (a .yaml file, or a shipped suite's name)")
        shipped = shipped_suites()
        if str(name_or_path) not in shipped:
            close = difflib.get_close_matches(str(name_or_path), sorted(shipped), n=1)
            raise ProbekitError(f"no suite file {name_or_path} (and no shipped suite of that name"
                                + (f"; did you mean {close[0]!r}?" if close else f"; shipped: {', '.join(sorted(shipped))}")
                                + ")")
        path = shipped[str(name_or_path)]
    raw, lines = read_yaml(path)
    return parse_suite(raw, str(path), out, lines=lines)


def parse_suite(raw: Any, source: str = "suite", out: str | Path | None = None, lines: Lines | None = None) -> Suite:
    """A suite from its parsed YAML: types and ranges by the schema (probekit.pipelines.suite_schema), then the
    names it uses (extractors, probe sets, fusions, heads, tasks, combined labels). The disk (datasets,
    weights, the output folder) is checked by ``check_inputs`` before any work."""
    spec = validate(raw, source, lines)
    datasets = spec["datasets"]
    for ds in datasets.values():
        if ds.get("val", "") is None:  # `val: null` says "no validation split" as leaving it out does
            del ds["val"]
    probe_sets = spec.get("probe_sets") or {}
    for set_name, probes in probe_sets.items():
        for i, probe in enumerate(probes):
            _check_probe(probe, probes[:i], f"probe_sets.{set_name}[{i}]", spec.get("training") or {}, source)
    extractors = spec["extractors"]
    for label, entry in extractors.items():
        _check_label(label, f"extractors.{label}", source)
        _check_probe_set(entry, f"extractors.{label}", probe_sets, source)
        _check_extractor_name(label, entry, source)
    combine = spec.get("combine") or []
    for i, entry in enumerate(combine):
        where = f"combine[{i}]"
        _check_label(entry["name"], f"{where}.name", source)
        if entry["name"] in extractors:
            raise ProbekitError(f"{source}: {where}.name {entry['name']!r} is also an extractor's label: name the "
                                "combination differently")
        for part in entry["of"]:
            if part not in extractors:
                raise ProbekitError(f"{source}: {where} names extractor {part!r}, which the suite does not "
                                    f"define (it defines: {', '.join(extractors)})")
        _check_probe_set(entry, where, probe_sets, source)
    root = Path(out) if out is not None else Path(spec.get("out") or Path("suites") / str(spec.get("suite", "suite")))
    return Suite(name=str(spec.get("suite", Path(source).stem)), source=source, out=root, seed=spec.get("seed", 0),
                 training=spec.get("training") or {}, datasets=datasets, extractors=extractors, combine=combine,
                 probe_sets=probe_sets, description=str(spec.get("description", "")),
                 report=spec.get("report", "report"), launcher=spec.get("launcher") or {})


def _check_label(label: str, where: str, source: str) -> None:
    if "/" in label or "\\" in label or label in (".", "..") or label.startswith("."):
        raise ProbekitError(f"{source}: {where}: {label!r} names folders of features and results: use no '/' and "
                            "do not start it with '.'")


def _check_extractor_name(label: str, entry: dict, source: str) -> None:
    from probekit.registries import EXTRACTORS

    name = entry.get("extractor", label)
    if not str(name).startswith("timm:"):
        try:
            EXTRACTORS.get(name)
        except ProbekitError as exc:
            raise ProbekitError(f"{source}: extractors.{label}: {exc}") from None


def _check_probe_set(spec: dict, where: str, probe_sets: dict, source: str) -> None:
    name = spec.get("probes", "default")
    if name not in probe_sets:
        close = difflib.get_close_matches(str(name), sorted(probe_sets), n=1)
        raise ProbekitError(f"{source}: {where}.probes names probe set {name!r}, which is not defined"
                            + (f"; did you mean {close[0]!r}?" if close else f" (defined: {', '.join(probe_sets)})"))


def _check_probe(probe: dict, before: list[dict], where: str, training: dict, source: str) -> None:
    """Names (fusion, head, tasks) and the probe's settings as `probekit probe` checks them, for every task."""
    from probekit.probes.config import ProbeConfig, fusion_class
    from probekit.registries import FUSIONS, HEADS, TASKS

    for name, registry, default in (("fusion", FUSIONS, "single"), ("head", HEADS, "linear")):
        try:
            registry.get(probe.get(name, default))
        except ProbekitError as exc:
            raise ProbekitError(f"{source}: {where}: {exc}") from None
    for task in probe["tasks"]:
        try:
            TASKS.get(task)
            ProbeConfig.build(task=task, fusion=probe.get("fusion", "single"), head=probe.get("head", "linear"),
                              fusion_level=probe.get("fusion_level", "auto"),
                              **{**{k: v for k, v in training.items() if k != "device"},
                                 **({"lrs": probe["lrs"]} if "lrs" in probe else {})})
        except (ProbekitError, TypeError, ValueError) as exc:
            raise ProbekitError(f"{source}: {where}: {exc}") from None
    single = fusion_class(probe.get("fusion", "single")).reads_one_map  # one run per map
    ways = sum(bool(probe.get(k)) for k in ("each_map", "best_map_of", "keys"))
    if single and ways != 1:
        raise ProbekitError(f"{source}: {where}: a single-map probe needs exactly one of each_map: true, "
                            "best_map_of: TASK, keys: [...]")
    if not single and (probe.get("each_map") or probe.get("best_map_of")):
        raise ProbekitError(f"{source}: {where}: each_map and best_map_of are for single-map probes")
    task = probe.get("best_map_of")
    if task and not any(p.get("each_map") and task in p["tasks"] for p in before):
        raise ProbekitError(f"{source}: {where}: best_map_of: {task} chooses among the each-map {task} probes, "
                            f"and none comes before it in this probe set (add {{fusion: single, each_map: true, "
                            f"tasks: [{task}]}} above it)")


def check_inputs(suite: Suite) -> list[str]:
    """What would make cells fail that the disk can tell before any work: datasets and their splits (names,
    folders, files), weights given as paths that do not exist, an output folder that is a file. Every problem,
    each naming its place in the suite."""
    from probekit.datasets import load_dataset

    problems = []
    if suite.out.exists() and not suite.out.is_dir():
        problems.append(f"out: {suite.out} is a file; the suite writes features/, results/ and report/ into a "
                        "folder: name another path (or pass --out)")
    for name, spec in suite.datasets.items():
        for role in ("train", "val", "eval"):
            if role in spec:
                try:
                    load_dataset(name, spec[role]["split"], root=spec.get("data_root"),
                                 image_size=spec.get("image_size"))
                except (ProbekitError, OSError) as exc:
                    problems.append(f"datasets.{name}.{role}: {exc}")
                    if "unknown dataset" in str(exc):
                        break
    for label, spec in suite.extractors.items():
        weights = spec.get("weights")
        if weights and _looks_like_path(weights) and not Path(weights).expanduser().exists():
            problems.append(f"extractors.{label}.weights: {weights} does not exist (a local folder or file is "
                            "expected here; a hub id looks like org/name)")
    return problems


def _looks_like_path(text: str) -> bool:
    """A hub id is org/name; anything absolute, relative to here or home, or deeper is a path on this disk."""
    return text.startswith(("/", ".", "~")) or text.count("/") > 1 or text.endswith((".safetensors", ".pth", ".bin"))


def seeds_of(probe: dict[str, Any], base: int) -> list[int]:
    seeds = probe.get("seeds", 1)
    if isinstance(seeds, int):
        return [base + i for i in range(max(1, seeds))]
    return [int(s) for s in seeds]


def run_suite(suite: Suite, **options: Any):
    """Extract, probe and report as the suite says (probekit.pipelines.execute.run_suite: the plan, its cells and
    the launchers); returns what happened to every cell."""
    from probekit.pipelines.execute import run_suite as run

    return run(suite, **options)


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
