"""What a model folder will hold on the device, from its safetensors headers alone (no weights are read).

At real size the components of a DiT folder do not all fit one GPU together (FLUX.2-dev: a 32 B transformer
beside a 24 B text encoder), so the extractor keeps them apart in time: the text encoders encode every prompt
once and are freed, then the transformer and the VAE load. The plan printed before extraction says so, with the
sizes in the compute dtype.
"""

from __future__ import annotations

import math
from pathlib import Path

from probekit.extractors.plan import human

TEXT_PREFIXES = ("text_encoder",)


def parameter_counts(folder: str | Path) -> dict[str, int]:
    """{component: number of parameters} over the ``*.safetensors`` files of each component folder (a bare
    model folder counts as ``transformer``)."""
    from safetensors import safe_open

    root = Path(folder)
    out: dict[str, int] = {}
    for name, paths in _component_files(root):
        total = 0
        for path in paths:
            with safe_open(str(path), framework="numpy") as f:
                total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        if total:
            out[name] = total
    return out


def _component_files(root: Path):
    subfolders = [p for p in sorted(root.iterdir()) if p.is_dir()] if root.is_dir() else []
    found = False
    for sub in subfolders:
        paths = sorted(sub.glob("*.safetensors"))
        if paths:
            found = True
            yield sub.name, paths
    if not found and root.is_dir():
        yield "transformer", sorted(root.glob("*.safetensors"))


def memory_lines(counts: dict[str, int], itemsize: int, device: str, dtype: str) -> list[str]:
    """The memory part of the extraction plan: text encoders first and alone, then the model."""
    if not counts:
        return []
    size = {k: v * itemsize for k, v in counts.items()}
    text = {k: b for k, b in size.items() if k.startswith(TEXT_PREFIXES)}
    model = {k: b for k, b in size.items() if k not in text}
    lines = [f"memory on {device} ({dtype} weights):"]
    if text:
        lines.append(f"  text encoders {human(sum(text.values()))} ({_parts(text)}): resident only while the prompts "
                     "are encoded (each distinct prompt once), then freed")
    lines.append(f"  model {human(sum(model.values()))} ({_parts(model)}): loaded after that, resident for every "
                 "forward")
    peak = max(sum(model.values()), sum(text.values()))
    lines.append(f"  largest set of weights on the device at once: {human(peak)}, plus activations")
    return lines


def _parts(sizes: dict[str, int]) -> str:
    return ", ".join(f"{k} {human(b)}" for k, b in sizes.items())
