"""Krea 2 (Krea2Transformer2DModel) against its own Krea2Pipeline: a tiny random pipeline folder with a tiny Qwen3-VL
text encoder (vision tower included) and a tiny causal 3-D VAE, written and loaded back offline."""

import json
import math
import shutil

import pytest
import torch

from pipeline_check import PipelineCheck, assert_matches_pipeline, last_tokens
from probekit.datasets.shapeworld import ShapeWorld
from tiny_text_qwen3vl import qwen_tokenizer, tiny_qwen3_vl

LAYERS = [0, 2]  # one block kind: the first and the last block
MEAN = [0.1, -0.2, 0.3, 0.05]
STD = [1.5, 0.7, 2.0, 1.1]
# Krea 2's documented scheduler config (Krea2Pipeline's docstring)
SCHEDULER = dict(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                 max_image_seq_len=6400, time_shift_type="exponential")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, Krea2Pipeline,
                           Krea2Transformer2DModel)

    tok = qwen_tokenizer()
    torch.manual_seed(0)
    transformer = Krea2Transformer2DModel(
        in_channels=16, num_layers=3, attention_head_dim=16, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=48, timestep_embed_dim=32, text_hidden_dim=16, num_text_layers=2, text_num_attention_heads=2,
        text_num_key_value_heads=2, text_intermediate_size=32, num_layerwise_text_blocks=1, num_refiner_text_blocks=1,
        axes_dims_rope=(4, 6, 6))
    # two spatial downsamplings (4x): 64 px -> 16x16 latents -> 8x8 tokens of 2x2 cells
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                                 temperal_downsample=[False, True], latents_mean=MEAN, latents_std=STD)
    pipe = Krea2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae,
                         text_encoder=tiny_qwen3_vl(tok, layers=2), tokenizer=tok, transformer=transformer,
                         text_encoder_select_layers=(1, 2))
    path = tmp_path_factory.mktemp("krea2") / "pipe"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def check(folder):
    from diffusers import Krea2Pipeline

    pipe = Krea2Pipeline.from_pretrained(folder)
    # guidance_scale 0 turns Krea 2's CFG off (it is on whenever guidance_scale > 0): one conditional forward.
    # Every block returns the joined [text; image] sequence, image tokens last.
    return PipelineCheck(pipe=pipe, blocks=lambda tr: list(tr.transformer_blocks), image_tokens=last_tokens,
                         call=lambda prompt: {"prompt": prompt, "guidance_scale": 0.0})


@pytest.mark.parametrize("conditioning", ["empty", "caption"])
def test_maps_equal_the_krea2_pipeline(folder, check, tmp_path, conditioning):
    ds = ShapeWorld("train", size=2)  # 64 px -> 16x16 latents -> 8x8 tokens
    worst = assert_matches_pipeline(folder, check, tmp_path, layers=LAYERS, conditioning=conditioning, dataset=ds)
    print(f"krea2 {conditioning}: worst relative difference {worst:.2e}")


def test_latents_are_the_vae_mode_normalised_per_channel(folder):
    """The inverse of the pipeline's decode: latents / (1 / std) + mean."""
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[0], layers=[0], device="cpu")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    z = ex.vae.encode((images * 2 - 1).unsqueeze(2)).latent_dist.mode()[:, :, 0]
    latents = ex.encode_images(images)
    assert latents.shape == (2, 4, 16, 16)
    torch.testing.assert_close(latents, (z - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])
    torch.testing.assert_close(latents / (1.0 / torch.tensor(STD)[:, None, None]) + torch.tensor(MEAN)[:, None, None],
                               z)


def pipeline_mu(pipe, folder) -> float:
    """The mu the pipeline hands the folder's scheduler for a 64 px image (8x8 tokens)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    seen = {}

    class Stop(Exception):
        pass

    class Spy(FlowMatchEulerDiscreteScheduler):
        def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None):
            seen["mu"] = mu
            raise Stop  # before any forward

    pipe.scheduler = Spy.from_pretrained(folder / "scheduler")
    with pytest.raises(Stop):
        pipe(prompt="", height=64, width=64, num_inference_steps=1, guidance_scale=0.0, output_type="latent")
    return seen["mu"]


def test_sigma_follows_the_dynamic_shift_of_the_token_count(folder, check):
    """mu = 0.5 + (1.15 - 0.5) (N - 256) / (6400 - 256) for N tokens; sigma = e^mu / (e^mu + 1/u - 1)."""
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[300], layers=[0], device="cpu")
    ex.transformer  # noqa: B018 - is_distilled is read beside the loaded transformer
    for tokens in (64, 4096, 6400):
        mu = 0.5 + 0.65 * (tokens - 256) / 6144
        assert ex.family.mu(tokens) == pytest.approx(mu)
        assert ex.schedule.sigma(300, mu) == pytest.approx(math.exp(mu) / (math.exp(mu) + 1 / 0.3 - 1), rel=1e-5)
    assert ex.family.mu(64) == pytest.approx(pipeline_mu(check.pipe, folder))


def test_the_distilled_checkpoint_has_a_fixed_mu(folder, tmp_path):
    from diffusers import Krea2Pipeline

    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    distilled = tmp_path / "distilled"
    shutil.copytree(folder, distilled)
    index = json.loads((distilled / "model_index.json").read_text())
    (distilled / "model_index.json").write_text(json.dumps({**index, "is_distilled": True}))
    ex = DiffusersDiTExtractor(distilled, timesteps=[300], layers=[0], device="cpu")
    ex.transformer  # noqa: B018
    assert ex.family.mu(64) == ex.family.mu(4096) == pytest.approx(1.15)
    assert pipeline_mu(Krea2Pipeline.from_pretrained(distilled), distilled) == pytest.approx(1.15)


def test_every_site_extracts_with_the_planned_shape(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor
    from probekit.keys import feature_key

    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    sites = ["output", "norm1", "attn", "mlp"]
    kw = dict(timesteps=[400], layers=LAYERS, device="cpu")
    ex = DiffusersDiTExtractor(folder, sites=sites, **kw)
    maps = ex.extract(images, ["", ""], [0, 1])
    shapes = ex.feature_shapes((64, 64))
    assert sorted(maps) == sorted(shapes) and len(maps) == 8
    for key, m in maps.items():
        assert tuple(m.shape[1:]) == shapes[key] == (32, 8, 8)
    plain = DiffusersDiTExtractor(folder, **kw).extract(images, ["", ""], [0, 1])
    for key, m in plain.items():
        torch.testing.assert_close(maps[key], m)
    assert not torch.allclose(maps[feature_key(400, 0, "attn")], maps[feature_key(400, 0)])


def test_null_condition_without_text_encoders(folder, tmp_path):
    """A folder without text encoders is conditioned on one zero text token the transformer accepts."""
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    bare = tmp_path / "bare"
    for part in ("transformer", "vae", "scheduler"):
        shutil.copytree(folder / part, bare / part)
    ex = DiffusersDiTExtractor(bare, timesteps=[500], layers=[1], device="cpu")
    maps = ex.extract(torch.rand(1, 3, 64, 64), [""], [0])
    assert maps["t=500/layer=1"].shape == (1, 32, 8, 8) and torch.isfinite(maps["t=500/layer=1"]).all()


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
    """norm1 is the modulated input the block hands its attention: one self-attention over the joined
    [text; image] sequence, whose last h*w tokens are the image."""
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor
    from probekit.keys import feature_key

    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    timesteps, (gh, gw) = [200, 700], (8, 8)
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
