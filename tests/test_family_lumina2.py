"""Lumina-Image 2.0 (Lumina2Transformer2DModel) against its own Lumina2Pipeline: a tiny random pipeline folder with a
Gemma2 text encoder, written and loaded back offline."""

import math

import pytest
import torch

from pipeline_check import PipelineCheck, assert_matches_pipeline, last_tokens
from probekit.datasets.shapeworld import ShapeWorld
from tiny_text_zls import gemma_tokenizer, tiny_gemma2

LAYERS = [0, 2]  # a noise-refiner block and a main-layer block
SHIFT, SCALE = 0.11, 0.36
SIZE = 128  # Lumina2Pipeline fixes vae_scale_factor = 8: a 4-level VAE, 16x16 latents, 8x8 tokens


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

    tok = gemma_tokenizer()
    torch.manual_seed(0)
    transformer = Lumina2Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, hidden_size=32, num_layers=2,
                                            num_refiner_layers=1, num_attention_heads=2, num_kv_heads=1,
                                            multiple_of=16, axes_dim_rope=(4, 6, 6), axes_lens=(300, 64, 64),
                                            cap_feat_dim=16)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(8, 16, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        sample_size=SIZE, shift_factor=SHIFT, scaling_factor=SCALE)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=6.0)  # Lumina-Image 2.0's: a static shift
    pipe = Lumina2Pipeline(transformer=transformer, scheduler=scheduler, vae=vae,
                           text_encoder=tiny_gemma2(tok, hidden=16), tokenizer=tok)
    path = tmp_path_factory.mktemp("lumina2") / "pipe"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def check(folder):
    from diffusers import Lumina2Pipeline

    pipe = Lumina2Pipeline.from_pretrained(folder)
    # The noise refiner's output is the image tokens alone; a main layer's (batch of one) is [caption; image].
    return PipelineCheck(pipe=pipe, blocks=lambda tr: list(tr.noise_refiner) + list(tr.layers),
                         image_tokens=last_tokens,
                         # guidance_scale 1 turns CFG off (do_classifier_free_guidance is guidance_scale > 1)
                         call=lambda prompt: {"prompt": prompt, "guidance_scale": 1.0, "height": SIZE, "width": SIZE})


@pytest.mark.parametrize("conditioning", ["empty", "caption"])
def test_maps_equal_the_lumina2_pipeline(folder, check, tmp_path, conditioning):
    ds = ShapeWorld("train", size=2)
    worst = assert_matches_pipeline(folder, check, tmp_path, layers=LAYERS, conditioning=conditioning, dataset=ds,
                                    resolution=SIZE)
    print(f"lumina2 {conditioning}: worst relative difference {worst:.2e}")


def test_captions_of_different_lengths_in_one_batch(folder):
    """Image tokens start after each row's own caption: a batch gives the maps of each sample alone."""
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[500], layers=[2], sites=["output", "norm1"], conditioning="caption",
                               device="cpu", resolution=64)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    captions = ["a red square", "a small blue circle above a large green triangle on the left"]
    ex.prepare(captions)
    both = ex.extract(images, captions, [0, 1])
    for i in range(2):
        alone = ex.extract(images[i:i + 1], captions[i:i + 1], [i])
        for key, value in alone.items():
            torch.testing.assert_close(both[key][i:i + 1], value, rtol=1e-4, atol=1e-5)


def test_latents_are_the_vae_mode_shifted_and_scaled(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[0], layers=[0], device="cpu")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    # the inverse of pipeline_lumina2.py's decode: latents / scaling_factor + shift_factor
    expected = (ex.vae.encode(images * 2 - 1).latent_dist.mode() - SHIFT) * SCALE
    torch.testing.assert_close(ex.encode_images(images), expected)


def test_sigma_and_timestep_input(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[300], layers=[0], device="cpu")
    assert ex.family.mu(64) is None
    assert ex.schedule.sigma(300) == pytest.approx(6 * 0.3 / (1 + 5 * 0.3))
    assert float(ex.family.timestep_input(torch.tensor(0.25), None)) == pytest.approx(0.75)


def test_dynamic_mu_is_computed_from_the_channel_count_as_the_pipeline_does():
    """pipeline_lumina2.py: image_seq_len = latents.shape[1] on (B, C, H, W) latents, i.e. C."""
    from probekit.extractors.families.lumina2 import Lumina2Family

    sched = {"use_dynamic_shifting": True, "base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5,
             "max_shift": 1.15}
    family = Lumina2Family({"in_channels": 16, "patch_size": 2}, None, sched)
    mu = 0.5 + 0.65 * (16 - 256) / 3840
    for tokens in (64, 4096):
        assert family.mu(tokens) == pytest.approx(mu)
    assert Lumina2Family({"in_channels": 16}, None, {"shift": 6.0}).mu(64) is None
    assert math.isfinite(mu)


def test_every_declared_site_extracts(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    kw = dict(timesteps=[200, 700], layers=[0, 1, 2], device="cpu", conditioning="caption")
    captions = ["a red square", "two blue circles"]
    ex = DiffusersDiTExtractor(folder, sites=["output", "norm1", "attn", "mlp"], **kw)
    assert ex.family.available_sites() == ["output", "norm1", "attn", "mlp"]
    ex.prepare(captions)
    maps = ex.extract(images, captions, [0, 1])
    assert {k: tuple(v.shape[1:]) for k, v in maps.items()} == ex.feature_shapes((64, 64))
    plain = DiffusersDiTExtractor(folder, **kw)
    plain.prepare(captions)
    for key, value in plain.extract(images, captions, [0, 1]).items():
        torch.testing.assert_close(maps[key], value)
