"""What every command shares: value types, option decorators, and turning library errors into sentences.

Nothing heavy is imported here: `probekit --help` never imports torch.
"""

from __future__ import annotations

import functools
import math
import os
import sys

import click

from probekit.errors import ProbekitError


RESUME = "rerun the same command to resume"
INTERRUPTED_EXIT = 130  # what a shell reports for a process stopped by Ctrl-C (128 + SIGINT)


def friendly_errors(fn=None, *, interrupted: str = RESUME):
    """Show errors a user can cause (bad input, unknown names, unwritable paths) as one clear line, not a
    traceback, and a Ctrl-C as "Aborted!" with what to do next (``interrupted``). PROBEKIT_DEBUG=1 shows the
    traceback instead."""
    if fn is None:
        return functools.partial(friendly_errors, interrupted=interrupted)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            if os.environ.get("PROBEKIT_DEBUG"):
                raise
            click.echo(f"\nAborted! {interrupted}", err=True)
            sys.exit(INTERRUPTED_EXIT)
        except (ProbekitError, OSError) as exc:
            if os.environ.get("PROBEKIT_DEBUG"):
                raise
            if isinstance(exc, OSError) and not isinstance(exc, ProbekitError):
                where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
                raise click.ClickException(f"cannot use{where}: {exc.strerror or exc}") from None
            raise click.ClickException(str(exc)) from None
    return wrapper


def parse_int_list(text: str) -> list[int]:
    """'100,300,500' or '0:1000:250' (start:stop:step, stop excluded) or a mix: '0:500:250,900'."""
    values: list[int] = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        if ":" in part:
            try:
                bits = [int(b) for b in part.split(":")]
            except ValueError:
                raise click.BadParameter(f"{part!r} is not start:stop[:step]") from None
            if len(bits) not in (2, 3) or (len(bits) == 3 and bits[2] == 0):
                raise click.BadParameter(f"{part!r} is not start:stop[:step]")
            values.extend(range(*bits))
        else:
            try:
                values.append(int(part))
            except ValueError:
                raise click.BadParameter(f"{part!r} is not an integer") from None
    if not values:
        raise click.BadParameter(f"{text!r} holds no integers")
    return list(dict.fromkeys(values))


class IntList(click.ParamType):
    name = "LIST"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            return parse_int_list(value)
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


class FloatList(click.ParamType):
    """Comma-separated finite numbers ('1e-3,1e-2'); ``positive`` refuses zero and negatives."""

    name = "FLOATS"

    def __init__(self, positive: bool = False):
        self.positive = positive

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            values = [float(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)
        if not values:
            self.fail(f"{value!r} holds no numbers", param, ctx)
        bad = [v for v in values if not math.isfinite(v) or (self.positive and v <= 0)]
        if bad:
            self.fail(f"{bad[0]} is not a {'positive ' if self.positive else ''}finite number", param, ctx)
        return values


class FiniteFloat(click.ParamType):
    name = "FLOAT"

    def __init__(self, min: float | None = None):
        self.min = min

    def convert(self, value, param, ctx):
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.min is not None and v < self.min:
            self.fail(f"{v} is below {self.min}", param, ctx)
        return v


class Resolution(click.ParamType):
    """One size (square) or HEIGHT,WIDTH."""

    name = "SIZE|H,W"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).replace("x", ",").split(",") if p.strip()]
        try:
            sizes = [int(p) for p in parts]
        except ValueError:
            self.fail(f"{value!r} is not a size or HEIGHT,WIDTH", param, ctx)
        if len(sizes) not in (1, 2) or min(sizes) <= 0:
            self.fail(f"{value!r} is not a positive size or HEIGHT,WIDTH", param, ctx)
        return (sizes[0], sizes[-1])


class NameList(click.ParamType):
    """Comma-separated names, each one of ``choices``."""

    name = "NAMES"

    def __init__(self, choices):
        self.choices = list(choices)

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        names = [v.strip() for v in str(value).split(",") if v.strip()]
        bad = [n for n in names if n not in self.choices]
        if bad or not names:
            self.fail(f"{value!r}: choose from {', '.join(self.choices)}", param, ctx)
        return list(dict.fromkeys(names))


INT_LIST = IntList()
RESOLUTION = Resolution()
POSITIVE = click.IntRange(min=1)


def quiet(fn):
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars.")(fn)


def device(default: str = "auto"):
    return click.option("--device", default=default, show_default=True,
                        help="auto (the GPU when there is one), cpu, cuda, cuda:1, ...")


def seed(help_text: str):
    return click.option("--seed", type=int, default=0, show_default=True, help=help_text)


def weights(help_text: str = "Local model folder or file (overrides the registry's weights)."):
    return click.option("--weights", "-w", default=None, help=help_text)


def overwrite_modes(fn):
    fn = click.option("--skip-existing", "overwrite_mode", flag_value="skip",
                      help="Keep an existing result, skip the run.")(fn)
    return click.option("--overwrite", "overwrite_mode", flag_value="overwrite", help="Replace an existing result.")(fn)
