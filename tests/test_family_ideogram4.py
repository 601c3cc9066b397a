"""Ideogram 4 (Ideogram4Transformer2DModel) against its own Ideogram4Pipeline: a tiny random pipeline folder (both
transformers, no prompt enhancer) with a tiny 36-layer Qwen3-VL text encoder (the pipeline taps layers 0..35) and a
tiny FLUX.2 VAE with non-trivial BatchNorm statistics, written and loaded back offline."""

import shutil

import pytest
import torch

from pipeline_check import PipelineCheck, assert_matches_pipeline, last_tokens
from probekit.datasets.shapeworld import ShapeWorld
from tiny_text_qwen3vl import qwen_tokenizer, tiny_qwen3_vl

LAYERS = [0, 2]  # one block kind: the first and the last block
TEXT_HIDDEN = 16
TAPPED_LAYERS = 13  # QWEN3_VL_ACTIVATION_LAYERS


def tiny_transformer(seed):
    from diffusers import Ideogram4Transformer2DModel

    torch.manual_seed(seed)
    return Ideogram4Transformer2DModel(in_channels=16, num_layers=3, attention_head_dim=16, num_attention_heads=2,
                                       intermediate_size=48, adaln_dim=16, llm_features_dim=TAPPED_LAYERS * TEXT_HIDDEN,
                                       mrope_section=(4, 2, 2))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Ideogram4Pipeline

    tok = qwen_tokenizer()
    # two downsamplings (4x) and the pipeline's 2x2 patch: 64 px -> 16x16 latents -> 8x8 tokens of 16 channels
    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                             block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                             sample_size=64)
    vae.bn.running_mean.copy_(torch.linspace(-0.3, 0.4, 16))
    vae.bn.running_var.copy_(torch.linspace(0.5, 2.5, 16))
    pipe = Ideogram4Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                             text_encoder=tiny_qwen3_vl(tok, hidden=TEXT_HIDDEN, layers=36), tokenizer=tok,
                             transformer=tiny_transformer(0), unconditional_transformer=tiny_transformer(1))
    path = tmp_path_factory.mktemp("ideogram4") / "pipe"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def check(folder):
    from diffusers import Ideogram4Pipeline

    pipe = Ideogram4Pipeline.from_pretrained(folder)
    # A constant guidance scale in place of the 48-step schedule; the conditional transformer runs first on the
    # packed [left padding; text; image] sequence (image tokens last), and the check stops inside it, before the
    # unconditional_transformer's pass.
    return PipelineCheck(pipe=pipe, blocks=lambda tr: list(tr.layers), image_tokens=last_tokens,
                         call=lambda prompt: {"prompt": prompt, "guidance_scale": 1.0, "guidance_schedule": None})


@pytest.mark.parametrize("conditioning", ["empty", "caption"])
def test_maps_equal_the_ideogram4_pipeline(folder, check, tmp_path, conditioning):
    ds = ShapeWorld("train", size=2)  # captions of different lengths: the shorter is left-padded in the batch
    worst = assert_matches_pipeline(folder, check, tmp_path, layers=LAYERS, conditioning=conditioning, dataset=ds)
    print(f"ideogram4 {conditioning}: worst relative difference {worst:.2e}")


def test_latents_decode_back_through_the_pipelines_own_unpacking(folder):
    """The pipeline's decode (its __call__, written out here): z * bn_std + bn_mean on the tokens, then
    view(B, gh, gw, p, p, C).permute(0, 5, 1, 3, 2, 4) back to the VAE's latent: must give the VAE mode."""
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[0], layers=[0], device="cpu")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    latents = ex.encode_images(images)
    assert latents.shape == (2, 16, 8, 8)
    z = ex.family.pipeline_latents(latents)  # (B, 64, 16) as the pipeline's latents
    vae = ex.vae
    bn_std = torch.sqrt(vae.bn.running_var + vae.config.batch_norm_eps)
    z = z * bn_std.view(1, 1, -1) + vae.bn.running_mean.view(1, 1, -1)
    z = z.view(2, 8, 8, 2, 2, 4).permute(0, 5, 1, 3, 2, 4).contiguous().view(2, 4, 16, 16)
    torch.testing.assert_close(z, vae.encode(images * 2 - 1).latent_dist.mode(), rtol=1e-5, atol=1e-5)


def test_the_schedule_is_the_schedulers_static_shift(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[300], layers=[0], device="cpu")
    assert ex.family.mu(64) is None
    assert ex.schedule.sigma(300) == pytest.approx(0.3)
    assert "logit-normal" in ex.config()["pipeline_sigma_schedule"]
    assert ex.family.timestep_input(torch.tensor([0.3]), None).item() == pytest.approx(0.7)


def test_captions_keep_their_own_tokens_left_padded(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[300, 700], layers=[0], conditioning="caption", device="cpu")
    long, short = "a long caption about a red circle", "a cat"
    ex.prepare([long, short])
    cond = ex.family.collate([ex._condition(long), ex._condition(short)], 2)
    n_long, n_short = (int(n) for n in cond["text_lengths"][::2])
    assert n_short < n_long and cond["llm_features"].shape[:2] == (4, n_long)
    assert not cond["llm_features"][2:, :n_long - n_short].any()
    assert cond["llm_features"][2:, n_long - n_short:].abs().sum(dim=-1).all()


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
    """A folder without text encoders: no text tokens, the image tokens alone (the unconditional branch's layout)."""
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
    blocks = list(ex.transformer.layers)
    seen, maps = attention_inputs({layer: blocks[layer].attention for layer in LAYERS},
                                  lambda: ex.extract(images, ["", ""], [0, 1]))
    for layer in LAYERS:
        assert len(seen[layer]) == 1, layer  # one forward
        tokens = seen[layer][0][:, -gh * gw:]
        for j, t in enumerate(timesteps):
            reference = tokens[j::len(timesteps)].reshape(2, gh, gw, -1).permute(0, 3, 1, 2)  # sample-major rows
            norm1 = maps[feature_key(t, layer, "norm1")]
            torch.testing.assert_close(norm1, reference)
            assert not torch.allclose(norm1, maps[feature_key(t, layer, "output")])
