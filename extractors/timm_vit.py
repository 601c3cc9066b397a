"""Patch-token features of any timm ViT (DINOv3, DINOv2, plain ViT, ...) through ``forward_intermediates``.

Prefix tokens (CLS plus register/storage tokens: 4 for DINOv3, 4 for DINOv2 "reg4") are removed by the count
the model itself reports (``num_prefix_tokens``); inputs are normalised with the model's pretrained config;
``dynamic_img_size`` lets any image size divisible by the patch size through. Weights come from a local file
(``pretrained_cfg_overlay=dict(file=...)``) or, where the hub cache has them, the model's hub tag.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from probekit.errors import ProbekitError
from probekit.devices import resolve_device, resolve_dtype
from probekit.extractors.base import Extractor, normalise_layers, parse_resolution
from probekit.keys import feature_key
from probekit.provenance import weights_identity
from probekit.safety import refuse_pickled_weights


class TimmViTExtractor(Extractor):
    name = "timm"

    def __init__(self, model: str, weights: str | None = None, layers: Sequence[int] = (-1,),
                 resolution=None, device: str = "cpu", dtype: str = "auto",
                 model_kwargs: dict[str, Any] | None = None, name: str | None = None, **ignored: Any):
        import timm

        self.name = name or f"timm:{model}"
        self.model_name, self.weights, self.resolution = model, weights, parse_resolution(resolution)
        self.ignored = sorted(k for k, v in ignored.items() if v is not None)
        self.model_kwargs = dict(model_kwargs or {})
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        kwargs: dict[str, Any] = {"dynamic_img_size": True, "num_classes": 0, **self.model_kwargs}
        if weights is not None:
            path = Path(weights)
            refuse_pickled_weights(path)
            if path.exists():
                check_weights_file(path)
                kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
            elif _looks_like_a_path(str(weights)):
                raise ProbekitError(f"--weights {weights}: no such file. Pass the model's weights as a local "
                                    ".safetensors file (or a timm hub tag such as vit_small_patch16_dinov3.lvd1689m "
                                    "that the local hub cache holds).")
            else:  # a hub tag such as "vit_small_patch16_dinov3.lvd1689m", served from the local cache
                kwargs.update(pretrained=True)
                model = weights if "." in str(weights) else model
        try:
            self.model = timm.create_model(model, **kwargs)
        except Exception as exc:  # unknown name, missing hub cache offline, mismatched state dict, ...
            raise ProbekitError(f"timm could not build {model!r} with weights {weights!r} "
                                f"({type(exc).__name__}: {str(exc)[:300]}). Offline, pass a local .safetensors "
                                "file with --weights.") from None
        self.model = self.model.to(self.device, self.dtype).eval().requires_grad_(False)
        self._layers = normalise_layers(layers, len(self.model.blocks), model)
        cfg = timm.data.resolve_data_config({}, model=self.model)
        self.mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 1))

    @property
    def layers(self) -> list[int]:
        return list(self._layers)

    def feature_keys(self) -> list[str]:
        return [feature_key(None, layer) for layer in self._layers]

    def weights_identity(self) -> dict[str, Any]:
        if self.weights is None:
            return {"source": None, "files": {}, "note": "random initialisation"}
        return weights_identity(self.weights)

    def notes(self) -> list[str]:
        return [] if self.weights is not None else [f"{self.name}: no weights given, RANDOMLY INITIALISED"]

    def config(self) -> dict[str, Any]:
        return {"extractor": self.name, "model": self.model_name, "weights": self.weights, "layers": self.layers,
                "resolution": list(self.resolution) if self.resolution else None, "num_prefix_tokens": self.num_prefix_tokens,
                "patch_size": _patch_size(self.model), "mean": self.mean.flatten().tolist(),
                "std": self.std.flatten().tolist(), "model_kwargs": self.model_kwargs, "device": str(self.device),
                "dtype": str(self.dtype).replace("torch.", ""), "ignored_options": self.ignored}

    def feature_shapes(self, image_size: tuple[int, int]) -> dict[str, tuple[int, int, int]]:
        h, w = self.resolution or image_size
        patch = _patch_size(self.model)
        if h % patch or w % patch:
            raise ProbekitError(f"image size {h}x{w} is not divisible by the patch size {patch}; set --resolution")
        return {k: (int(self.model.embed_dim), h // patch, w // patch) for k in self.feature_keys()}

    @torch.inference_mode()
    def extract(self, images: torch.Tensor, captions: Sequence[str], indices: Sequence[int]) -> dict[str, torch.Tensor]:
        x = images.float()
        if self.resolution is not None and tuple(x.shape[-2:]) != self.resolution:
            x = F.interpolate(x, size=self.resolution, mode="bicubic", align_corners=False,
                              antialias=True).clamp(0, 1)
        patch = _patch_size(self.model)
        if x.shape[-2] % patch or x.shape[-1] % patch:
            raise ProbekitError(f"image size {tuple(x.shape[-2:])} is not divisible by the patch size {patch}; "
                                "set --resolution")
        x = ((x - self.mean) / self.std).to(self.device, self.dtype)
        # stop_early: blocks after the deepest requested one are not run (as the DiT path stops its forward).
        order = sorted(self._layers)
        maps = self.model.forward_intermediates(x, indices=order, output_fmt="NCHW", intermediates_only=True,
                                                stop_early=True)
        by_layer = dict(zip(order, maps))
        return {feature_key(None, layer): by_layer[layer] for layer in self._layers}


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".npz", ".h5", ".msgpack")


def _looks_like_a_path(weights: str) -> bool:
    """A file path rather than a timm hub tag ("vit_small_patch16_dinov3.lvd1689m"): it has a folder part or a
    weight file's suffix."""
    return ("/" in weights or "\\" in weights or weights.startswith(("~", "."))
            or weights.lower().endswith(WEIGHT_SUFFIXES))


def check_weights_file(path: Path) -> None:
    """Refuse, naming the file and what is wrong with it, a weights file that is not a readable safetensors file
    (a text file, a truncated download, a folder), before timm reports it as a bare KeyError."""
    if path.is_dir():
        raise ProbekitError(f"--weights {path} is a folder; a timm encoder takes one .safetensors file")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            if not list(f.keys()):
                raise ProbekitError(f"--weights {path} is a safetensors file that holds no tensors")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ProbekitError(f"--weights {path} is not a readable .safetensors file ({exc}); pass the model's "
                            "weights as .safetensors (a truncated download is refused the same way)") from None


def _patch_size(model) -> int:
    ps = model.patch_embed.patch_size
    return int(ps[0] if isinstance(ps, (tuple, list)) else ps)
