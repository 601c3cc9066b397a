"""Every setting of one probe run, checked once, before any data is read (torch-free to import: the CLI builds
it; checking a config asks the registered fusion and head classes what they can do, which imports them).

Defaults train to convergence on the embedded default and are recorded in every result: a learning-rate grid
wide enough to bracket the chosen rate (a choice at the edge of the grid is flagged), fusion weights with a
rate of their own, and several seeds when a claim needs a spread.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from probekit.errors import ProbekitError

DEFAULT_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
DEFAULT_EPOCHS = 20
DEFAULT_BATCH_SIZE = 32
DEFAULT_FUSION_LR = 0.2
# Prediction-level fusion: own-loss weights tried per seed, the first with every learning rate, the others at the
# rate it chose; the best on validation is kept (docs/results/shapeworld.md: 3 closes a case 1 loses, 1 is
# better elsewhere).
DEFAULT_OWN_LOSS_WEIGHTS = (1.0, 3.0)
FUSION_LEVELS = ("auto", "features", "predictions")
# Depth training losses (probes/tasks.py). "silog": the scale-invariant log loss (SigLoss, lambda 0.85) of the
# DINOv2 and probe3d depth probes. "silog+rmse" adds the RMSE in metres over the batch's mean depth: the RMSE
# score weighs a pixel's log error by its depth squared, which the log loss alone does not, so probes trained
# on SigLoss alone trade far pixels for near ones (docs/results/depth-loss.md measures it).
DEPTH_LOSSES = ("silog+rmse", "silog")


def fusion_class(fusion: str):
    """The class registered as fusion mode ``fusion``: what it can do (``reads_one_map``, ``min_maps``,
    ``learns_weights``, ``spatial``, ``mixes_predictions``; see probes/fusion.py). Imports it (and torch)."""
    from probekit.registries import FUSIONS

    return FUSIONS.get(fusion).load()  # unknown names: UnknownNameError with a suggestion


def prediction_level_heads() -> list[str]:
    """Heads that read each map on its own cheaply enough to mix predictions (one read-out per map): those whose
    class says ``prediction_level``."""
    from probekit.registries import HEADS, capability

    return [n for n in HEADS.names() if capability(HEADS, n, "prediction_level", False)]


def resolve_fusion_level(fusion: str, head: str, level: str = "auto") -> str:
    """What a fusion that can mix predictions (global, spatial) weights, given the head: "predictions" or
    "features" (see ProbeConfig). A fusion or head not registered (an old record's) reads as features."""
    from probekit.registries import FUSIONS, HEADS, capability

    if level not in FUSION_LEVELS:
        raise ProbekitError(f"--fusion-level must be one of {', '.join(FUSION_LEVELS)}, got {level!r}")
    if not capability(FUSIONS, fusion, "mixes_predictions", False):
        return "features"  # single and concat maps are read by the head as they are
    per_map = capability(HEADS, head, "prediction_level", False)
    if level == "auto":
        return "predictions" if per_map else "features"
    if level == "predictions" and not per_map:
        raise ProbekitError(f"--fusion-level predictions needs a head that reads each map on its own "
                            f"({', '.join(prediction_level_heads())}); the {head} head would be trained once per "
                            "map. Use --fusion-level features with it")
    return level


def probe_stem(head: str, fusion: str, level: str = "auto") -> str:
    """The start of a run's name: head-fusion, plus the fusion level when it is not the head's default (so runs
    of both levels live side by side)."""
    stem = f"{head}-{fusion}"
    resolved = resolve_fusion_level(fusion, head, level)
    return stem if resolved == resolve_fusion_level(fusion, head) else f"{stem}-{resolved}"


# A field so marked does not change what a probe learns (where and how fast it runs), or is compared on its own
# (the seeds): an existing run of the same settings answers a request that differs only there.
NOT_A_SETTING = {"setting": False}


@dataclass
class ProbeConfig:
    task: str = "seg"
    fusion: str = "single"
    head: str = "linear"
    keys: list[str] | None = None  # feature maps to fuse; None = all (single: exactly one)
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    lrs: list[float] = field(default_factory=lambda: list(DEFAULT_LRS))
    fusion_lr: float = DEFAULT_FUSION_LR  # the fusion weights' own rate (constant, no weight decay)
    weight_decay: float = 1e-4
    seeds: list[int] = field(default_factory=lambda: [0], metadata=NOT_A_SETTING)  # compared on their own
    device: str = field(default="auto", metadata=NOT_A_SETTING)
    fusion_dim: int | None = None  # width of the fused maps; None: the maps' own (see probes/fusion.py)
    # What global and spatial fusion weight: each map's own prediction ("predictions": one read-out per map,
    # each also trained on its own loss) or the maps themselves, read by one head ("features"). "auto":
    # predictions for the linear head, features for the decoder heads. Resolved when the config is built.
    fusion_level: str = "auto"
    # At the prediction level: weights of the read-outs' own losses (their mean over maps) beside the mixed
    # prediction's loss, chosen on validation like the learning rate. Higher keeps each read-out closer to its
    # map's own probe (less co-adaptation in the mix). None at other levels, where there are no read-outs.
    own_loss_weights: list[float] | None = field(default_factory=lambda: list(DEFAULT_OWN_LOSS_WEIGHTS))
    depth_output: str = "bins"
    depth_loss: str | None = DEPTH_LOSSES[0]  # None for the other tasks (recorded as such)
    # of the training file, when no validation file is given (no command changes it; runs recorded it as the rows)
    val_fraction: float = field(default=0.15, metadata=NOT_A_SETTING)
    cross_dataset: bool = False  # allow train and eval features from different datasets with the same classes
    train_limit: int | None = None  # train on the first N training rows only (learning curves)
    eval_crop: list[float] | None = None  # depth: (top, bottom, left, right) fractions kept for evaluation
    # Features are held in memory (on the device) when they fit in this many bytes, else streamed from the
    # file batch by batch (None: a quarter of the RAM, capped at 8 GiB; on a GPU, a third of its free memory).
    resident_bytes: int | None = field(default=None, metadata=NOT_A_SETTING)
    # Minibatches read ahead on a background thread when streaming (None: 2 on a GPU, 0 on a CPU, where the
    # reader thread competes with torch for the cores). Never changes results.
    prefetch: int | None = field(default=None, metadata=NOT_A_SETTING)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse settings that would train nothing or train on nonsense, naming the option."""
        from probekit.registries import FUSIONS, HEADS, TASKS

        TASKS.get(self.task), HEADS.get(self.head), FUSIONS.get(self.fusion)  # unknown names: did-you-mean
        if int(self.epochs) < 1:
            raise ProbekitError(f"--epochs must be at least 1, got {self.epochs}: an untrained head is not a result")
        if int(self.batch_size) < 1:
            raise ProbekitError(f"--batch-size must be at least 1, got {self.batch_size}")
        self.lrs = [float(x) for x in self.lrs]
        if not self.lrs:
            raise ProbekitError("--lrs is empty: give at least one learning rate, e.g. --lrs 1e-3,1e-2")
        bad = [x for x in self.lrs if not (math.isfinite(x) and x > 0)]
        if bad:
            raise ProbekitError(f"--lrs must be positive finite numbers, got {bad[0]}")
        if len(set(self.lrs)) != len(self.lrs):
            raise ProbekitError(f"--lrs lists a rate twice: {self.lrs}")
        if not (math.isfinite(float(self.fusion_lr)) and float(self.fusion_lr) > 0):
            raise ProbekitError(f"--fusion-lr must be a positive finite number, got {self.fusion_lr}")
        if not (math.isfinite(float(self.weight_decay)) and float(self.weight_decay) >= 0):
            raise ProbekitError(f"--weight-decay must be a finite number >= 0, got {self.weight_decay}")
        self.seeds = [int(s) for s in self.seeds]
        if not self.seeds:
            raise ProbekitError("--seeds is empty: give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ProbekitError(f"--seeds lists a seed twice: {self.seeds}")
        if self.fusion_dim is not None and int(self.fusion_dim) < 1:
            raise ProbekitError(f"--fusion-dim must be at least 1, got {self.fusion_dim}")
        if not 0 < float(self.val_fraction) < 1:
            raise ProbekitError(f"the validation fraction must be in (0, 1), got {self.val_fraction}")
        if self.train_limit is not None and int(self.train_limit) < 1:
            raise ProbekitError(f"train_limit must be at least 1, got {self.train_limit}")
        if self.eval_crop is not None:
            crop = [float(x) for x in self.eval_crop]
            if len(crop) != 4 or not (0 <= crop[0] < crop[1] <= 1 and 0 <= crop[2] < crop[3] <= 1):
                raise ProbekitError(f"--eval-crop must be TOP,BOTTOM,LEFT,RIGHT fractions with top < bottom and "
                                    f"left < right, got {self.eval_crop}")
            self.eval_crop = crop
        self.fusion_level = self._resolved_fusion_level()
        self.own_loss_weights = self._checked_own_loss_weights()
        if self.depth_output not in ("bins", "regression"):
            raise ProbekitError(f"--depth-output must be bins or regression, got {self.depth_output!r}")
        losses = TASKS.get(self.task).load().losses  # the task's loss choices (depth's); none for the others
        if not losses:
            self.depth_loss = None  # no loss to choose (and none recorded that means nothing)
        elif (self.depth_loss or losses[0]) not in losses:
            raise ProbekitError(f"--depth-loss must be one of {', '.join(losses)}, got {self.depth_loss!r}")
        else:
            self.depth_loss = self.depth_loss or losses[0]

    def _resolved_fusion_level(self) -> str:
        return resolve_fusion_level(self.fusion, self.head, self.fusion_level)

    def _checked_own_loss_weights(self) -> list[float] | None:
        if self.fusion_level != "predictions":
            return None  # no read-outs of their own: nothing to weigh (and nothing recorded that means nothing)
        given = DEFAULT_OWN_LOSS_WEIGHTS if self.own_loss_weights is None else self.own_loss_weights
        weights = [float(w) for w in given]
        if not weights:
            raise ProbekitError("--own-loss-weights is empty: give at least one weight, e.g. --own-loss-weights 1")
        bad = [w for w in weights if not (math.isfinite(w) and w >= 0)]
        if bad:
            raise ProbekitError(f"--own-loss-weights must be finite numbers >= 0, got {bad[0]}")
        if len(set(weights)) != len(weights):
            raise ProbekitError(f"--own-loss-weights lists a weight twice: {weights}")
        return weights

    @property
    def seed(self) -> int:
        """The first seed: it alone decides the validation slice, so every seed sees the same split."""
        return self.seeds[0]

    @classmethod
    def build(cls, **options: Any) -> "ProbeConfig":
        """From keyword options as the CLI and the library pass them (``seed``/``lr``/``key``/``own_loss_weight``
        shorthands for one-element lists)."""
        if "seed" in options:
            seed = options.pop("seed")
            options.setdefault("seeds", [seed])
        if "lr" in options:
            options["lrs"] = [options.pop("lr")]
        if "key" in options:
            options["keys"] = [options.pop("key")]
        if "own_loss_weight" in options:
            options["own_loss_weights"] = [options.pop("own_loss_weight")]
        options = {k: v for k, v in options.items()
                   if v is not None or k in ("keys", "train_limit", "eval_crop", "fusion_dim")}
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise ProbekitError(f"unknown probe setting(s): {', '.join(unknown)}")
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seed"] = self.seed
        return out


def probe_settings() -> tuple[str, ...]:
    """The settings that decide what a probe learns, in the config's order: every field of ``ProbeConfig`` but
    those marked ``NOT_A_SETTING``. A record made with the same ones (and the seeds asked) answers a request."""
    return tuple(f.name for f in fields(ProbeConfig) if f.metadata.get("setting", True))
