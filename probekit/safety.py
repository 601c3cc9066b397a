"""Load-safety rules: weights are read from safetensors only, never unpickled.

Unpickling can run arbitrary code, so a weight file or folder that offers only pickles is refused with a
sentence saying how to convert it. Every loader in probekit calls ``refuse_pickled_weights`` first.
"""

from __future__ import annotations

import os
from pathlib import Path

from probekit.errors import ProbekitError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def refuse_pickled_weights(path: str | os.PathLike) -> None:
    """Refuse a pickled weight file, or a model folder whose weights exist only as pickles.

    A component folder (transformer/, vae/, text_encoder/, ...) that has .safetensors is fine even if pickles
    lie beside them: loaders are told to use the safetensors.
    """
    root = Path(path)
    if root.is_file() or (not root.exists() and root.suffix in PICKLE_SUFFIXES):
        if root.suffix in PICKLE_SUFFIXES:
            raise ProbekitError(f"{root}: pickled weight files are not loaded (unpickling can run code); convert "
                                "it to .safetensors (e.g. safetensors.torch.save_file on its state dict, in a "
                                "trusted environment)")
        return
    if not root.is_dir():
        return
    for directory in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        files = [p for p in directory.iterdir() if p.is_file()]
        pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
        if pickles and not any(p.suffix == ".safetensors" for p in files):
            raise ProbekitError(f"{pickles[0]}: weights stored as a pickle, which can run code when loaded; "
                                "probekit loads .safetensors only. Convert the folder (e.g. load it once in a "
                                "trusted environment and save_pretrained(..., safe_serialization=True)).")
