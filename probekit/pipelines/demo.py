"""`probekit demo`: the main job on the embedded default, end to end in a few minutes on a CPU.

It runs the shipped suite ``probekit/suites/demo.yaml`` (what it extracts and probes, and why, is written
there), with the command line's sizes applied.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path


def run_demo(out: str | Path = "probekit-demo", *, n_train: int | None = None, n_test: int | None = None,
             timesteps: Sequence[int] | None = None, layers: Sequence[int] | None = None,
             epochs: int | None = None, seed: int | None = None, control: bool = True, progress: bool = True,
             echo: Callable[[str], None] = print):
    """ShapeWorld -> extract the shipped MM-DiT (and its random-init control) -> probes -> report."""
    from probekit.pipelines.suite import load_suite, run_suite, with_overrides

    suite = with_overrides(load_suite("demo", out), n_train=n_train, n_eval=n_test, timesteps=timesteps,
                           layers=layers, epochs=epochs, seed=seed,
                           drop_extractors=[] if control else ["shapeworld-mmdit-random"])
    # Afresh every time: the command line may change what is extracted, and a demo should never stop on a folder
    # left by another setting. `probekit run demo` is the resuming form.
    return run_suite(suite, overwrite=True, progress=progress, echo=echo)
