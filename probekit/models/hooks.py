"""Forward hooks that read capture sites of a DiT's blocks: the one way probekit taps a model's blocks.

Blocks are called with keyword arguments (diffusers), so hooks are registered ``with_kwargs``. Where a site's
image tokens sit in a module's output (or input) is the model family's knowledge (``extractors/dit_family.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class StopForward(Exception):
    """Raised by the hook of the last block needed: later blocks are not computed."""


def token_maps(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(..., N, C) tokens in row-major order over a (rows, columns) grid -> (..., C, rows, columns) maps."""
    return tokens.unflatten(-2, grid).movedim(-1, -3)


class SiteCapture:
    """Hooks that read capture sites of a DiT family's blocks: for each ``(layer, site)`` requested, the image
    tokens of that site go to ``sink(layer, site, tokens)``. The forward stops after the deepest requested
    block (its own hooks run first: a submodule's hook fires before its block's)."""

    def __init__(self, family, requests: Sequence[tuple[int, str]], sink: Callable[[int, str, torch.Tensor], None],
                 stop_after_last: bool = True):
        self.family, self.requests, self.sink = family, list(requests), sink
        self.stop_after_last = stop_after_last
        self._handles: list = []

    def __enter__(self) -> "SiteCapture":
        blocks, kinds = self.family.blocks(), self.family.block_kinds()
        for layer, site in self.requests:
            spec = self.family.site(kinds[layer], site)
            module = blocks[layer].get_submodule(spec.module) if spec.module else blocks[layer]
            self._handles.append(module.register_forward_hook(self._hook(layer, site, spec), with_kwargs=True))
        if self.stop_after_last and self.requests:
            deepest = max(layer for layer, _ in self.requests)
            self._handles.append(blocks[deepest].register_forward_hook(_stop, with_kwargs=True))
        return self

    def _hook(self, layer: int, site: str, spec):
        def hook(module, args, kwargs, output):
            seen = kwargs.get("hidden_states", args[0] if args else None) if spec.reads == "input" else output
            self.sink(layer, site, self.family.image_tokens(spec, seen))
        return hook

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def run(self, forward: Callable[[], object]) -> None:
        with self:
            try:
                forward()
            except StopForward:
                pass


def _stop(module, args, kwargs, output):
    raise StopForward


def capture_sites(family, requests: Sequence[tuple[int, str]], forward: Callable[[], object]
                  ) -> dict[tuple[int, str], torch.Tensor]:
    """{(layer, site): image tokens} of one forward, stopped after the deepest requested block."""
    captured: dict[tuple[int, str], torch.Tensor] = {}
    SiteCapture(family, requests, lambda layer, site, tokens: captured.__setitem__((layer, site), tokens)).run(forward)
    return captured
