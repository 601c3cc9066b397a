"""Shared fixtures: tiny diffusers models saved to disk and loaded back offline."""

from __future__ import annotations

import json
import os

# Without this the hub client retries DNS for ~47 s per load on a machine with no network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep probekit's cache (built random backbones) inside the test session."""
    os.environ["PROBEKIT_CACHE"] = str(tmp_path_factory.mktemp("probekit-cache"))
    yield


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


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """{name: folder} for tiny SD3 / FLUX / PixArt / DiT (pixel space) and SD3 + VAE."""
    root = tmp_path_factory.mktemp("tiny-models")
    out = {fam: make_tiny(fam, root / fam) for fam in ("sd3", "flux", "pixart", "dit")}
    out["sd3-vae"] = make_tiny("sd3", root / "sd3-vae", vae=True)
    return out


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
