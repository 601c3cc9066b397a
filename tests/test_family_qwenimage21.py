"""Qwen-Image 2.1 (QwenImage21Transformer2DModel) against its own QwenImage21Pipeline: a tiny random pipeline
folder with a tiny Qwen3-VL text encoder and processor and a tiny 16x RGBA VAE, written and loaded back offline."""

import math

import numpy as np
import pytest
import torch

from pipeline_check import PipelineCheck, assert_matches_pipeline, last_tokens
from probekit.datasets.shapeworld import ShapeWorld
from probekit.keys import feature_key
from tiny_text_qwen import qwen3_vl_processor, qwen_tokenizer, tiny_qwen3_vl

LAYERS = [0, 2]
Z = 8
MEAN = [0.1 * i - 0.3 for i in range(Z)]
STD = [1.0 + 0.15 * i for i in range(Z)]
SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift=1.0,
                 time_shift_type="exponential", use_dynamic_shifting=True)
GRID = (4, 4)  # 64 px / 16 (the pipeline's fixed VAE factor)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers import (AutoencoderKLQwenImage21, FlowMatchEulerDiscreteScheduler, QwenImage21Pipeline,
                           QwenImage21Transformer2DModel)

    tok = qwen_tokenizer()
    torch.manual_seed(0)
    transformer = QwenImage21Transformer2DModel(in_channels=Z, out_channels=Z, num_layers=3, attention_head_dim=8,
                                                num_attention_heads=2, context_in_dim=16, mlp_ratio=2,
                                                axes_dims_rope=(2, 2, 4))
    # four spatial downsamplings (16x), RGBA input as the real VAE
    vae = AutoencoderKLQwenImage21(base_dim=8, decoder_base_dim=8, z_dim=Z, dim_mult=[1, 1, 1, 1, 1],
                                   num_res_blocks=1, temperal_downsample=[False] * 4, latents_mean=MEAN,
                                   latents_std=STD)
    pipe = QwenImage21Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae,
                               text_encoder=tiny_qwen3_vl(tok), processor=qwen3_vl_processor(tok),
                               transformer=transformer)
    path = tmp_path_factory.mktemp("qwenimage21") / "pipe"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def check(folder):
    from diffusers import QwenImage21Pipeline

    pipe = QwenImage21Pipeline.from_pretrained(folder)
    # true_cfg_scale 1 (the default) and no negative prompt: one conditional forward; the KV cache stays on as by
    # default (its first step is a full forward that fills the cache).
    return PipelineCheck(pipe=pipe, blocks=lambda tr: list(tr.transformer_blocks), image_tokens=last_tokens,
                         call=lambda prompt: {"prompt": prompt, "true_cfg_scale": 1.0}, grid=GRID)


@pytest.mark.parametrize("conditioning", ["empty", "caption"])
def test_maps_equal_the_qwenimage21_pipeline(folder, check, tmp_path, conditioning):
    ds = ShapeWorld("train", size=2)  # captions of different lengths in one batch
    worst = assert_matches_pipeline(folder, check, tmp_path, layers=LAYERS, conditioning=conditioning, dataset=ds)
    print(f"qwenimage21 {conditioning}: worst relative difference {worst:.2e}")


def test_latents_are_the_pipelines_rgba_encoding(folder, check):
    from PIL import Image

    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[0], layers=[0], device="cpu")
    pixels = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    latents = ex.encode_images(images)
    assert latents.shape == (2, Z, *GRID)
    # hand-derived: an opaque alpha channel, the VAE mode, per-channel normalisation
    rgba = torch.cat([images * 2 - 1, torch.ones(2, 1, 64, 64)], dim=1).unsqueeze(2)
    z = ex.vae.encode(rgba).latent_dist.mode()[:, :, 0]
    torch.testing.assert_close(latents, (z - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])
    # the pipeline's own preprocessing of a condition image (converted to RGBA) and its VAE encoding
    pipe = check.pipe
    for i in range(2):
        pre = pipe.image_processor.preprocess(Image.fromarray(pixels[i]).convert("RGBA"), width=64, height=64)
        ref = pipe._encode_vae_image(pre.unsqueeze(2), None)[:, :, 0]
        torch.testing.assert_close(latents[i:i + 1], ref, rtol=1e-4, atol=1e-4)


def test_sigma_follows_the_exponential_dynamic_shift(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[300], layers=[0], device="cpu")
    for tokens in (16, 4096, 8192):
        mu = 0.5 + 0.4 * (tokens - 256) / 7936
        assert ex.family.mu(tokens) == pytest.approx(mu)
        assert ex.schedule.sigma(300, mu) == pytest.approx(math.exp(mu) / (math.exp(mu) + 1 / 0.3 - 1), rel=1e-5)


def test_a_batch_of_captions_equals_each_caption_alone(folder):
    """The image's rotary position follows the caption's length: a batch of different lengths must not pad."""
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    captions = ["a long caption about a red dotted circle", "a cat"]
    kw = dict(timesteps=[300, 700], layers=LAYERS, conditioning="caption", sites=["output", "attn", "mlp"],
              device="cpu")
    both = DiffusersDiTExtractor(folder, **kw).extract(images, captions, [0, 1])
    for i in range(2):
        alone = DiffusersDiTExtractor(folder, **kw).extract(images[i:i + 1], captions[i:i + 1], [i])
        for key, m in alone.items():
            torch.testing.assert_close(both[key][i:i + 1], m, rtol=1e-4, atol=1e-5)


def test_every_site_extracts_with_the_planned_shape(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    kw = dict(timesteps=[400], layers=LAYERS, device="cpu")
    ex = DiffusersDiTExtractor(folder, sites=["output", "norm1", "attn", "mlp"], **kw)
    maps = ex.extract(images, ["", ""], [0, 1])
    shapes = ex.feature_shapes((64, 64))
    assert sorted(maps) == sorted(shapes) and len(maps) == 8
    for key, m in maps.items():
        assert tuple(m.shape[1:]) == shapes[key] == (16, *GRID)
    plain = DiffusersDiTExtractor(folder, **kw).extract(images, ["", ""], [0, 1])
    for key, m in plain.items():
        torch.testing.assert_close(maps[key], m)
    assert not torch.allclose(maps[feature_key(400, 0, "attn")], maps[feature_key(400, 0)])


def test_a_folder_without_text_encoders_extracts_on_null_text(folder, tmp_path):
    import shutil

    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    bare = tmp_path / "bare"
    for part in ("transformer", "vae", "scheduler"):
        shutil.copytree(folder / part, bare / part)
    ex = DiffusersDiTExtractor(bare, timesteps=[500], layers=LAYERS, device="cpu")
    assert not ex.has_text_encoder
    maps = ex.extract(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4)), ["", ""], [0, 1])
    assert all(torch.isfinite(m).all() for m in maps.values()) and len(maps) == len(LAYERS)


def attention_inputs(modules, run):
    """{layer: [hidden_states]} as a plain forward pre-hook on each module receives them (the `hidden_states`
    keyword or the first positional argument), while `run()` runs; and run's result."""
    seen = {layer: [] for layer in modules}

    def recorder(layer):
        def hook(module, args, kwargs):
            seen[layer].append((kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).detach().clone())
        return hook

    handles = [m.register_forward_pre_hook(recorder(layer), with_kwargs=True) for layer, m in modules.items()]
    try:
        out = run()
    finally:
        for handle in handles:
            handle.remove()
    return seen, out


def test_norm1_is_what_the_blocks_attention_receives(folder):
    """norm1 is the modulated input the block hands its attention: one block-causal attention over
    the joined [text; image] sequence, whose last h*w tokens are the image."""
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    timesteps, (gh, gw) = [200, 700], GRID
    ex = DiffusersDiTExtractor(folder, timesteps=timesteps, layers=LAYERS, device="cpu", sites=["output", "norm1"])
    blocks = list(ex.transformer.transformer_blocks)
    seen, maps = attention_inputs({layer: blocks[layer].attn for layer in LAYERS},
                                  lambda: ex.extract(images, ["", ""], [0, 1]))
    for layer in LAYERS:
        assert len(seen[layer]) == 1, layer  # one forward
        tokens = seen[layer][0][:, -gh * gw:]
        for j, t in enumerate(timesteps):
            reference = tokens[j::len(timesteps)].reshape(2, gh, gw, -1).permute(0, 3, 1, 2)  # sample-major rows
            norm1 = maps[feature_key(t, layer, "norm1")]
            torch.testing.assert_close(norm1, reference)
            assert not torch.allclose(norm1, maps[feature_key(t, layer, "output")])
