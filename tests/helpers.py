"""What several test files share: tiny models written as diffusers folders, synthetic feature files whose
answer is known. (Fixtures are in conftest.py.)"""

from __future__ import annotations

import json

import numpy as np

from probekit.store import write_features


def _save(model, folder, scheduler: dict | None = None, subfolder: str = "transformer"):
    model.save_pretrained(folder / subfolder)
    if scheduler is not None:
        (folder / "scheduler").mkdir(parents=True, exist_ok=True)
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return folder


FLOW = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
DDPM = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
        "beta_schedule": "linear"}


def make_tiny(family: str, folder, *, vae: bool = False, seed: int = 0):
    """A tiny random model of `family` written as a diffusers folder (transformer/ [+ vae/] + scheduler/)."""
    import torch
    from diffusers import (AutoencoderKL, DiTTransformer2DModel, FluxTransformer2DModel, PixArtTransformer2DModel,
                           SD3Transformer2DModel)

    torch.manual_seed(seed)
    latent_ch = 4 if vae else 3
    if family == "sd3":
        model = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=latent_ch, num_layers=3,
                                      attention_head_dim=8, num_attention_heads=4, joint_attention_dim=32,
                                      caption_projection_dim=32, pooled_projection_dim=16, out_channels=latent_ch,
                                      pos_embed_max_size=32)
        sched = FLOW
    elif family == "flux":
        model = FluxTransformer2DModel(patch_size=1, in_channels=latent_ch * 4, num_layers=2, num_single_layers=2,
                                       attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                       pooled_projection_dim=16, axes_dims_rope=(4, 6, 6))
        sched = {**FLOW, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                 "base_image_seq_len": 256, "max_image_seq_len": 4096}
    elif family == "pixart":
        model = PixArtTransformer2DModel(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8,
                                         num_attention_heads=3, caption_channels=32, in_channels=latent_ch,
                                         cross_attention_dim=24, out_channels=latent_ch * 2, attention_bias=True,
                                         activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                         norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
        sched = DDPM
    elif family == "dit":
        model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=latent_ch,
                                      out_channels=latent_ch * 2, num_layers=2, sample_size=8, patch_size=2,
                                      num_embeds_ada_norm=1000, norm_type="ada_norm_zero")
        sched = DDPM
    else:
        raise ValueError(family)
    _save(model, folder, sched)
    if vae:
        ae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                           block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4,
                           norm_num_groups=8, sample_size=64)
        _save(ae, folder, subfolder="vae")
    return folder


def tiny_mmdit_overrides(num_layers: int) -> dict:
    """A much smaller ShapeWorld MM-DiT transformer config (patch 8: 64 tokens), for fast tests."""
    return {"num_layers": num_layers, "num_attention_heads": 2, "attention_head_dim": 16,
            "caption_projection_dim": 32, "patch_size": 8, "pos_embed_max_size": 8}


def make_tiny_shapeworld_mmdit(folder, num_layers: int, seed: int = 0):
    """A random tiny ShapeWorld MM-DiT folder (transformer + text encoder + tokenizer + scheduler)."""
    from probekit.datasets import load_manifest
    from probekit.backbone.model import build_models, save_folder

    manifest, _ = load_manifest("shapeworld")
    return save_folder(folder, *build_models(manifest, seed=seed, overrides=tiny_mmdit_overrides(num_layers)))


CLASSES = ["background", "a", "b"]
REF = {"dataset": "synthetic", "split": None, "manifest_sha256": "0", "params_hash": "0", "classes": CLASSES,
       "ignore_index": 255, "depth_range": [0.0, 10.0]}
H = W = 16  # label size; features on an 8x8 grid


def labels(rng, n):
    seg = np.zeros((n, H, W), dtype=np.uint8)
    for i in range(n):
        for cls in (1, 2):
            r, c = 2 * rng.integers(0, 6, size=2)  # on the 8x8 feature grid, so features can be exact
            seg[i, r:r + 6, c:c + 6] = cls
    depth = np.where(seg > 0, 2.0 + seg, 8.0).astype(np.float32)
    return seg, depth, (seg == 1).astype(np.uint8)


def write_synthetic(path, split, n, maps_fn, seed, feature_dtype="float16"):
    """A feature file whose maps are maps_fn(onehot(seg) at 8x8, rng) -> {key: (n, C, 8, 8)}."""
    rng = np.random.default_rng(seed)
    seg, depth, sal = labels(rng, n)
    onehot = np.eye(3, dtype=np.float32)[seg[:, ::2, ::2]].transpose(0, 3, 1, 2)  # (n, 3, 8, 8)
    feats = maps_fn(onehot, rng)
    ids = [f"synthetic/{split}/{i:06d}" for i in range(n)]
    return write_features(path, feats, {"seg": seg, "depth": depth, "saliency": sal}, ids,
                          attrs={"extractor": "synthetic", "dataset": {**REF, "split": split},
                                 "provenance": {"extractor": {"name": "synthetic"}}}, feature_dtype=feature_dtype)


def informative(onehot, rng):
    return onehot * 3 + 0.3 * rng.standard_normal(onehot.shape).astype(np.float32)


def noise(onehot, rng):
    return rng.standard_normal(onehot.shape).astype(np.float32)


def half_and_half(onehot, rng):
    # Key A is informative on the left half only, key B on the right half only.
    left = np.zeros_like(onehot)
    left[..., :4] = 1
    a = np.where(left == 1, informative(onehot, rng), noise(onehot, rng))
    b = np.where(left == 0, informative(onehot, rng), noise(onehot, rng))
    return {"t=100/layer=0": a.astype(np.float32), "t=900/layer=0": b.astype(np.float32)}
