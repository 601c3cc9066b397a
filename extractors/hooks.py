"""Forward hooks that read block outputs of a transformer: the one way probekit taps a model's blocks.

Blocks are called with keyword arguments (diffusers), so hooks are registered ``with_kwargs``. A block's
output is a tensor, or a ``(text, image)`` pair for MM-DiT blocks: the image tokens are always the last
element, and in FLUX's single blocks (which see the joined [text, image] sequence) the last ``n_img`` tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class StopForward(Exception):
    """Raised by the hook of the last block needed: later blocks are not computed."""


def image_tokens(output, n_img: int | None = None) -> torch.Tensor:
    tokens = output[-1] if isinstance(output, tuple) else output
    return tokens if n_img is None else tokens[:, -n_img:]


class BlockCapture:
    """Hooks on ``blocks[layer]`` for each of ``layers`` that hand the block's image tokens to ``sink(layer,
    tokens)``. With ``stop_after_last`` the forward is cut short after the deepest requested block (use
    ``run`` to call the model)."""

    def __init__(self, blocks: Sequence[torch.nn.Module], layers: Sequence[int], sink: Callable[[int, torch.Tensor], None],
                 n_img: int | None = None, stop_after_last: bool = False):
        self.blocks, self.layers = blocks, sorted(set(int(x) for x in layers))
        self.sink, self.n_img, self.stop_after_last = sink, n_img, stop_after_last
        self._handles: list = []

    def _hook(self, layer: int):
        last = self.layers[-1]

        def hook(module, args, kwargs, output):
            self.sink(layer, image_tokens(output, self.n_img))
            if self.stop_after_last and layer == last:
                raise StopForward
        return hook

    def __enter__(self) -> "BlockCapture":
        self._handles = [self.blocks[layer].register_forward_hook(self._hook(layer), with_kwargs=True)
                         for layer in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def run(self, forward: Callable[[], object]) -> None:
        """Call ``forward`` with the hooks in place; a stop after the last block is the normal end."""
        with self:
            try:
                forward()
            except StopForward:
                pass


def capture_blocks(blocks: Sequence[torch.nn.Module], layers: Sequence[int], forward: Callable[[], object],
                   n_img: int | None = None) -> dict[int, torch.Tensor]:
    """{layer: image tokens} of one forward, stopped after the deepest requested block."""
    captured: dict[int, torch.Tensor] = {}
    BlockCapture(blocks, layers, captured.__setitem__, n_img=n_img, stop_after_last=True).run(forward)
    return captured


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
