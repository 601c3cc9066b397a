"""The suite file's schema: every field typed and ranged, every mistake named by its path in the file.

Read with a YAML loader that refuses a key given twice (YAML itself keeps the last one silently) and remembers
the line of every value, so that an error says `extractors.flux-dev.timesteps[2] (line 31)`. The types are
pydantic models (strict: "2" is not a number, 4 is not a list of layers); what needs the registries or the
disk is checked after them, in probekit.pipelines.suite. Imports no torch.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from probekit.dtypes import STORED_DTYPES
from probekit.errors import ProbekitError
from probekit.extractors.dit_family import SITE_MEANINGS
from probekit.probes.config import DEPTH_LOSSES

Lines = dict[tuple, int]


# -- reading the file ------------------------------------------------------------------------------
def read_yaml(path: Path) -> tuple[Any, Lines]:
    """The document and the line of every value in it (keyed by its path); a key given twice is refused."""
    try:
        loader = yaml.SafeLoader(path.read_text())
        try:
            node = loader.get_single_node()
            lines: Lines = {}
            if node is not None:
                _walk(node, (), lines, path)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ProbekitError(f"{path} is not valid YAML: {exc}") from None
    return data, lines


def _walk(node: yaml.Node, where: tuple, lines: Lines, path: Path) -> None:
    lines[where] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen and key != "<<":
                raise ProbekitError(f"{path}: {format_path(where) or 'the suite'} gives key {key!r} twice (lines "
                                    f"{seen[key]} and {line}); YAML would keep only the last: remove one")
            seen[key] = line
            _walk(value_node, (*where, key), lines, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*where, i), lines, path)


def format_path(where: tuple) -> str:
    text = ""
    for part in where:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# -- field types -------------------------------------------------------------------------------------
def _unique(values: list) -> list:
    if len(set(values)) != len(values):
        raise ValueError(f"lists a value twice: {values}")
    return values


def _seeds(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        raise ValueError("must be a count of seeds (e.g. 3) or a list of distinct seeds (e.g. [0, 1, 2])")
    if isinstance(value, int) and value < 1:
        raise ValueError("must be at least 1 (a count of seeds; a list such as [0] names the seeds themselves)")
    if isinstance(value, list):
        if not value or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in value):
            raise ValueError("must be a non-empty list of integers >= 0, e.g. [0, 1, 2]")
        _unique(value)
    return value


def _resolution(value: Any) -> Any:
    ok = (isinstance(value, int) and not isinstance(value, bool) and value > 0) or (
        isinstance(value, list) and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))
    if not ok:
        raise ValueError("must be one positive size (e.g. 512) or [HEIGHT, WIDTH] (e.g. [512, 768])")
    return value


def _split(value: Any) -> Any:
    return {"split": value} if isinstance(value, str) else value  # `eval: val` is `eval: {split: val}`


def _yaml_float(value: Any) -> Any:
    """YAML 1.1 reads 1e-3 (no dot) as a string: take it as the number it plainly is."""
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value.strip()):
        return float(value)
    return value


Name = Annotated[str, Field(min_length=1)]
Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Rate = Annotated[float, Field(gt=0), BeforeValidator(_yaml_float)]
Fraction = Annotated[float, Field(ge=0), BeforeValidator(_yaml_float)]
Rates = Annotated[list[Rate], Field(min_length=1), AfterValidator(_unique)]
Weights = Annotated[list[Fraction], Field(min_length=1), AfterValidator(_unique)]
Timestep = Annotated[int, Field(ge=0, le=1000)]
Seeds = Annotated[Any, AfterValidator(_seeds)]
Resolution = Annotated[Any, AfterValidator(_resolution)]
Device = Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")]
Site = Literal[tuple(SITE_MEANINGS)]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Training(_Strict):
    epochs: Positive = None  # type: ignore[assignment]
    lrs: Rates = None  # type: ignore[assignment]
    batch_size: Positive = None  # type: ignore[assignment]
    fusion_lr: Rate = None  # type: ignore[assignment]
    weight_decay: Fraction = None  # type: ignore[assignment]
    own_loss_weights: Weights = None  # type: ignore[assignment]
    own_loss_weight: Fraction = None  # type: ignore[assignment]
    depth_loss: Literal[DEPTH_LOSSES] = None  # type: ignore[assignment,valid-type]
    device: Device = None  # type: ignore[assignment]


class Split(_Strict):
    split: Name
    limit: Positive | None = None


SplitOrName = Annotated[Split, BeforeValidator(_split)]


class Dataset(_Strict):
    train: SplitOrName
    eval: SplitOrName
    val: SplitOrName | None = None
    image_size: Positive = None  # type: ignore[assignment]
    data_root: Name = None  # type: ignore[assignment]


class Extractor(_Strict):
    extractor: Name = None  # type: ignore[assignment]
    weights: Name = None  # type: ignore[assignment]
    timesteps: Annotated[list[Timestep], Field(min_length=1), AfterValidator(_unique)] = None  # type: ignore
    layers: Annotated[list[int], Field(min_length=1), AfterValidator(_unique)] = None  # type: ignore
    sites: Annotated[list[Site], Field(min_length=1), AfterValidator(_unique)] = None  # type: ignore
    batch_size: Positive = None  # type: ignore[assignment]
    shard_size: Positive = None  # type: ignore[assignment]
    parts: Positive = None  # type: ignore[assignment]
    resolution: Resolution = None
    conditioning: Literal["empty", "caption"] = None  # type: ignore[assignment]
    ensemble: Positive = None  # type: ignore[assignment]
    device: Device = None  # type: ignore[assignment]
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = None  # type: ignore[assignment]
    seed: NonNegative = None  # type: ignore[assignment]
    pool: Positive = None  # type: ignore[assignment]
    channels: Positive = None  # type: ignore[assignment]
    projection: Literal["pca", "random"] = None  # type: ignore[assignment]
    fit_samples: Positive = None  # type: ignore[assignment]
    store_dtype: Literal[STORED_DTYPES] = None  # type: ignore[assignment,valid-type]
    drop_massive: Positive = None  # type: ignore[assignment]
    probes: Name = None  # type: ignore[assignment]


class Combine(_Strict):
    name: Name
    of: Annotated[list[Name], Field(min_length=2), AfterValidator(_unique)]
    probes: Name = None  # type: ignore[assignment]


class Probe(_Strict):
    fusion: Name = None  # type: ignore[assignment]
    head: Name = None  # type: ignore[assignment]
    tasks: Annotated[list[Name], Field(min_length=1), AfterValidator(_unique)]
    seeds: Seeds = None
    each_map: bool = None  # type: ignore[assignment]
    best_map_of: Name = None  # type: ignore[assignment]
    keys: Annotated[list[Name], Field(min_length=1), AfterValidator(_unique)] = None  # type: ignore
    fusion_level: Literal["auto", "features", "predictions"] = None  # type: ignore[assignment]
    lrs: Rates = None  # type: ignore[assignment]


class Launcher(_Strict):
    """Where cells run (docs/suites.md): the command line's --launcher, --jobs, --partition ... override it."""

    name: Literal["local", "slurm"] = None  # type: ignore[assignment]
    jobs: Positive = None  # type: ignore[assignment]
    partition: Name = None  # type: ignore[assignment]
    time: Positive = None  # type: ignore[assignment]  # minutes per job
    gpus_per_job: NonNegative = None  # type: ignore[assignment]
    cpus_per_job: Positive = None  # type: ignore[assignment]
    mem_gb: Positive = None  # type: ignore[assignment]
    array_parallelism: Positive = None  # type: ignore[assignment]
    cells_per_job: Positive = None  # type: ignore[assignment]
    sbatch: dict[Name, Union[str, int]] = None  # type: ignore[assignment]


class SuiteFile(_Strict):
    suite: Name = None  # type: ignore[assignment]
    version: Literal[1] = 1
    description: str = None  # type: ignore[assignment]
    out: Name = None  # type: ignore[assignment]
    seed: NonNegative = None  # type: ignore[assignment]
    training: Training = None  # type: ignore[assignment]
    datasets: Annotated[dict[Name, Dataset], Field(min_length=1)]
    extractors: Annotated[dict[Name, Extractor], Field(min_length=1)]
    combine: list[Combine] = None  # type: ignore[assignment]
    probe_sets: dict[Name, list[Probe]] = None  # type: ignore[assignment]
    report: Name = None  # type: ignore[assignment]
    launcher: Launcher = None  # type: ignore[assignment]


# -- validating and explaining -----------------------------------------------------------------------
def validate(raw: Any, source: str, lines: Lines | None = None) -> dict[str, Any]:
    """The suite as plain data (only the keys the file gives; `eval: val` spelled out), or a ProbekitError
    listing every problem, each with its path in the file (and line, when read from a file)."""
    if not isinstance(raw, dict):
        raise ProbekitError(f"{source}: a suite is a mapping of keys (suite, datasets, extractors, probe_sets, ...), "
                            f"got {type(raw).__name__}")
    try:
        model = SuiteFile.model_validate(raw)
    except ValidationError as exc:
        problems = list(dict.fromkeys(_explain(e, lines or {}) for e in exc.errors()))
        if len(problems) == 1:
            line, message = problems[0]
            raise ProbekitError(f"{source}{f', line {line}' if line else ''}: {message}") from None
        raise ProbekitError(f"{source}: {len(problems)} problems:\n  " + "\n  ".join(
            f"{f'line {line}: ' if line else ''}{message}" for line, message in problems)) from None
    return model.model_dump(exclude_unset=True)


def _explain(error: dict, lines: Lines) -> tuple[int | None, str]:
    """(the line in the file, or None; the problem, naming its path in the file)."""
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
    return _line(loc, lines), _message(error, loc)


def _message(error: dict, loc: tuple) -> str:
    if error["type"] == "extra_forbidden":
        where, key = format_path(loc[:-1]) or "the suite", loc[-1]
        allowed = sorted(_fields_at(loc[:-1]))
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(allowed)})"
        return f"unknown key {key!r} in {where}{hint}"
    if error["type"] == "missing":
        return f"{format_path(loc[:-1]) or 'the suite'} needs {loc[-1]!r}" + _example(loc)
    message = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
    if error["type"] in ("model_type", "dict_type"):
        message = "must be a mapping of keys" + (" or a split name, e.g. {split: val, limit: 100} or val"
                                                 if loc and loc[-1] in ("train", "eval", "val") else "")
    message = message[0].lower() + message[1:]
    got = error.get("input")
    shown = "" if isinstance(got, (dict, list)) or error["type"] == "value_error" else f", got {got!r}"
    if isinstance(got, float) and not math.isfinite(got):
        shown = f", got {got}"
    return f"{format_path(loc)}: {message}{shown}" + _example(loc)


def _line(loc: tuple, lines: Lines) -> int | None:
    for cut in range(len(loc), -1, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return None


EXAMPLES = {"timesteps": "[100, 400, 700]", "layers": "[6, 18, 30]", "lrs": "[0.001, 0.01, 0.1]",
            "tasks": "[seg, saliency, depth]", "sites": f"[{', '.join(SITE_MEANINGS)}]", "keys": "['t=100/layer=6']",
            "of": "[flux-dev, dinov3-vitb16]", "own_loss_weights": "[1.0, 3.0]", "train": "{split: train, limit: 2000}",
            "eval": "{split: val}", "split": "train", "epochs": "20"}


def _example(loc: tuple) -> str:
    for part in reversed(loc):
        if isinstance(part, str):
            return f" (e.g. {part}: {EXAMPLES[part]})" if part in EXAMPLES else ""
    return ""


def _fields_at(loc: tuple) -> set[str]:
    """The keys a mapping at ``loc`` may hold (for did-you-mean): walk the models along the path."""
    kind: Any = SuiteFile
    for part in loc:
        kind = _unwrap(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            kind = kind.model_fields[part].annotation if part in kind.model_fields else None
        elif get_origin(kind) in (dict, list):
            kind = get_args(kind)[-1]
        else:
            return set()
    kind = _unwrap(kind)
    return set(kind.model_fields) if isinstance(kind, type) and issubclass(kind, BaseModel) else set()


def _unwrap(kind: Any) -> Any:
    while get_origin(kind) in (Annotated, Union) or (get_origin(kind) is not None and type(None) in get_args(kind)):
        args = [a for a in get_args(kind) if a is not type(None)]
        kind = args[0]
    return kind
