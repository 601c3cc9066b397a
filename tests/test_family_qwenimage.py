"""Qwen-Image (QwenImageTransformer2DModel) against its own QwenImagePipeline: a tiny random pipeline folder with
a tiny Qwen2.5-VL text encoder (vision tower included) and a tiny causal 3-D VAE, written and loaded back
offline."""

import math

import pytest
import torch

from pipeline_check import PipelineCheck, assert_matches_pipeline, last_element
from probekit.datasets.shapeworld import ShapeWorld
from probekit.keys import feature_key
from tiny_text_qwen import qwen_tokenizer, tiny_qwen25_vl

LAYERS = [0, 2]
MEAN = [0.1, -0.2, 0.3, 0.05]
STD = [1.5, 0.7, 2.0, 1.1]
# Qwen-Image's own scheduler config, shift_terminal included
SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, shift=1.0,
                 shift_terminal=0.02, time_shift_type="exponential", use_dynamic_shifting=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline,
                           QwenImageTransformer2DModel)

    tok = qwen_tokenizer()
    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=3,
                                              attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                              axes_dims_rope=(2, 2, 4))
    # two spatial downsamplings (4x): 64 px -> 16x16 latents -> 8x8 tokens
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=MEAN, latents_std=STD)
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae,
                             text_encoder=tiny_qwen25_vl(tok), tokenizer=tok, transformer=transformer)
    path = tmp_path_factory.mktemp("qwenimage") / "pipe"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def check(folder):
    from diffusers import QwenImagePipeline

    pipe = QwenImagePipeline.from_pretrained(folder)
    # No negative prompt: the pipeline's true CFG is off and one conditional forward runs.
    return PipelineCheck(pipe=pipe, blocks=lambda tr: list(tr.transformer_blocks), image_tokens=last_element,
                         call=lambda prompt: {"prompt": prompt, "true_cfg_scale": 1.0})


@pytest.mark.parametrize("conditioning", ["empty", "caption"])
def test_maps_equal_the_qwenimage_pipeline(folder, check, tmp_path, conditioning):
    ds = ShapeWorld("train", size=2)  # captions of different lengths: one batch pads text with a mask
    worst = assert_matches_pipeline(folder, check, tmp_path, layers=LAYERS, conditioning=conditioning, dataset=ds)
    print(f"qwenimage {conditioning}: worst relative difference {worst:.2e}")


def test_latents_are_the_vae_mode_normalised_per_channel(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[0], layers=[0], device="cpu")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    z = ex.vae.encode((images * 2 - 1).unsqueeze(2)).latent_dist.mode()[:, :, 0]
    expected = (z - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    latents = ex.encode_images(images)
    assert latents.shape == (2, 4, 16, 16)
    torch.testing.assert_close(latents, expected)


def test_sigma_follows_the_exponential_dynamic_shift(folder):
    """mu = 0.5 + (0.9 - 0.5) (N - 256) / (8192 - 256) for N tokens; sigma = e^mu / (e^mu + 1/u - 1)."""
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[300], layers=[0], device="cpu")
    for tokens in (64, 4096, 8192):
        mu = 0.5 + 0.4 * (tokens - 256) / 7936
        assert ex.family.mu(tokens) == pytest.approx(mu)
        assert ex.schedule.sigma(300, mu) == pytest.approx(math.exp(mu) / (math.exp(mu) + 1 / 0.3 - 1), rel=1e-5)
    described = ex.schedule.describe()
    assert described["shift_terminal"] == 0.02 and described["shift_terminal_applied"] is False


def test_captions_of_different_lengths_are_padded_with_a_mask(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[300, 700], layers=[0], conditioning="caption", device="cpu")
    ex.prepare(["a long caption about a red circle", "a cat"])
    cond = ex.family.collate([ex._condition("a long caption about a red circle"), ex._condition("a cat")], 2)
    mask = cond["encoder_hidden_states_mask"]
    long_len, short_len = (int(x) for x in mask.sum(dim=1)[::2])
    assert mask.shape == (4, long_len) and short_len < long_len
    assert cond["encoder_hidden_states"].shape[:2] == (4, long_len)
    assert not cond["encoder_hidden_states"][2:, short_len:].any()


def test_every_site_extracts_with_the_planned_shape(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    sites = ["output", "norm1", "attn", "mlp"]
    kw = dict(timesteps=[400], layers=LAYERS, device="cpu")
    ex = DiffusersDiTExtractor(folder, sites=sites, **kw)
    maps = ex.extract(images, ["", ""], [0, 1])
    shapes = ex.feature_shapes((64, 64))
    assert sorted(maps) == sorted(shapes) and len(maps) == 8
    for key, m in maps.items():
        assert tuple(m.shape[1:]) == shapes[key] == (16, 8, 8)
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
    """norm1 is the modulated input the block hands its attention: its `hidden_states` is the image
    stream alone (the text stream is `encoder_hidden_states`)."""
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    timesteps, (gh, gw) = [200, 700], (8, 8)
    ex = DiffusersDiTExtractor(folder, timesteps=timesteps, layers=LAYERS, device="cpu", sites=["output", "norm1"])
    blocks = list(ex.transformer.transformer_blocks)
    seen, maps = attention_inputs({layer: blocks[layer].attn for layer in LAYERS},
                                  lambda: ex.extract(images, ["", ""], [0, 1]))
    for layer in LAYERS:
        assert len(seen[layer]) == 1, layer  # one forward
        tokens = seen[layer][0]
        for j, t in enumerate(timesteps):
            reference = tokens[j::len(timesteps)].reshape(2, gh, gw, -1).permute(0, 3, 1, 2)  # sample-major rows
            norm1 = maps[feature_key(t, layer, "norm1")]
            torch.testing.assert_close(norm1, reference)
            assert not torch.allclose(norm1, maps[feature_key(t, layer, "output")])
