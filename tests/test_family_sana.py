"""Sana (SanaTransformer2DModel) against its own SanaPipeline: a tiny random pipeline folder with a Gemma2 text
encoder, a deep-compression autoencoder (AutoencoderDC) and DPM-Solver on flow sigmas, written and loaded back
offline."""

import pytest
import torch

from pipeline_check import PipelineCheck, assert_matches_pipeline
from probekit.datasets.shapeworld import ShapeWorld
from tiny_text_zls import gemma_tokenizer, tiny_gemma2

LAYERS = [0, 2]
SCALE = 0.41
TIMESTEP_SCALE = 1.5  # not 1: the timestep input must carry the transformer's timestep_scale


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    tok = gemma_tokenizer(model_max_length=2048)  # the instruction prefix is ~1,000 characters
    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                                         num_layers=3, num_cross_attention_heads=2, cross_attention_head_dim=16,
                                         cross_attention_dim=32, caption_channels=16, sample_size=8, patch_size=1,
                                         timestep_scale=TIMESTEP_SCALE)
    vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=8,
                        encoder_block_types=("ResBlock",) * 4, decoder_block_types=("ResBlock",) * 4,
                        encoder_block_out_channels=(8, 16, 16, 16), decoder_block_out_channels=(8, 16, 16, 16),
                        encoder_layers_per_block=(1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
                        encoder_qkv_multiscales=((),) * 4, decoder_qkv_multiscales=((),) * 4,
                        decoder_norm_types="rms_norm", scaling_factor=SCALE)
    scheduler = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    pipe = SanaPipeline(tokenizer=tok, text_encoder=tiny_gemma2(tok, hidden=16), vae=vae, transformer=transformer,
                        scheduler=scheduler)
    path = tmp_path_factory.mktemp("sana") / "pipe"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def check(folder):
    from diffusers import SanaPipeline

    pipe = SanaPipeline.from_pretrained(folder)
    # Cross-attention DiT: a block's output is the image tokens alone. guidance_scale 1 turns CFG off
    # (do_classifier_free_guidance is guidance_scale > 1); no resolution binning at 64 px.
    return PipelineCheck(pipe=pipe, blocks=lambda tr: list(tr.transformer_blocks),
                         call=lambda prompt: {"prompt": prompt, "guidance_scale": 1.0,
                                              "use_resolution_binning": False})


@pytest.mark.parametrize("conditioning", ["empty", "caption"])
def test_maps_equal_the_sana_pipeline(folder, check, tmp_path, conditioning):
    ds = ShapeWorld("train", size=2)  # 64 px -> DC-AE /8 -> 8x8 latents = 8x8 tokens (patch 1)
    worst = assert_matches_pipeline(folder, check, tmp_path, layers=LAYERS, conditioning=conditioning, dataset=ds)
    print(f"sana {conditioning}: worst relative difference {worst:.2e}")


def test_latents_are_the_dc_ae_latent_scaled(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[0], layers=[0], device="cpu")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    # pipeline_sana_controlnet.py: vae.encode(image).latent * scaling_factor (the inverse of SanaPipeline's decode)
    expected = ex.vae.encode(images * 2 - 1).latent * SCALE
    torch.testing.assert_close(ex.encode_images(images), expected)
    assert ex.feature_shapes((64, 64))["t=0/layer=0"] == (32, 8, 8)


def test_sigma_is_the_flow_shift_and_the_timestep_input_is_scaled(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[300], layers=[0], device="cpu")
    assert ex.schedule.kind == "flow" and ex.family.mu(64) is None
    assert ex.schedule.sigma(300) == pytest.approx(3 * 0.3 / (1 + 2 * 0.3))
    assert float(ex.family.timestep_input(torch.tensor(0.25), None)) == pytest.approx(250 * TIMESTEP_SCALE)


def test_prompts_carry_the_instruction_prefix_of_the_pipeline_call(folder):
    """encode_prompt's own default has no prefix; SanaPipeline.__call__'s has one, and changes the embedding."""
    from diffusers import SanaPipeline

    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[300], layers=[0], conditioning="caption", device="cpu")
    ex.prepare(["a red square"])
    ours = ex._cond_cache["a red square"]
    pipe = SanaPipeline.from_pretrained(folder, transformer=None, vae=None)
    bare, _, _, _ = pipe.encode_prompt("a red square", do_classifier_free_guidance=False, device="cpu")
    assert ours["encoder_hidden_states"].shape == bare.shape
    assert not torch.allclose(ours["encoder_hidden_states"], bare)


def test_every_declared_site_extracts(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    kw = dict(timesteps=[200, 700], layers=[0, 2], device="cpu")
    ex = DiffusersDiTExtractor(folder, sites=["output", "norm1", "attn", "mlp"], **kw)
    assert ex.family.available_sites() == ["output", "norm1", "attn", "mlp"]
    maps = ex.extract(images, ["", ""], [0, 1])
    assert {k: tuple(v.shape[1:]) for k, v in maps.items()} == ex.feature_shapes((64, 64))
    for key, value in DiffusersDiTExtractor(folder, **kw).extract(images, ["", ""], [0, 1]).items():
        torch.testing.assert_close(maps[key], value)

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
    """norm1 is the modulated input the block hands its self-attention (attn1's first argument): the image
    tokens alone (the caption enters through the cross-attention)."""
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor
    from probekit.keys import feature_key

    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    timesteps, (gh, gw) = [200, 700], (8, 8)  # 64 px, DC-AE /8, patch 1
    ex = DiffusersDiTExtractor(folder, timesteps=timesteps, layers=LAYERS, device="cpu", sites=["output", "norm1"])
    blocks = list(ex.transformer.transformer_blocks)
    seen, maps = attention_inputs({layer: blocks[layer].attn1 for layer in LAYERS},
                                  lambda: ex.extract(images, ["", ""], [0, 1]))
    for layer in LAYERS:
        assert len(seen[layer]) == 1, layer  # one forward
        tokens = seen[layer][0]
        for j, t in enumerate(timesteps):
            reference = tokens[j::len(timesteps)].reshape(2, gh, gw, -1).permute(0, 3, 1, 2)  # sample-major rows
            norm1 = maps[feature_key(t, layer, "norm1")]
            torch.testing.assert_close(norm1, reference)
            assert not torch.allclose(norm1, maps[feature_key(t, layer, "output")])


def test_the_mlp_site_is_the_glumbconv_map_itself(folder):
    """GLUMBConv's (B, C, h, w) output, read as tokens, lands back on the same spatial grid."""
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ex = DiffusersDiTExtractor(folder, timesteps=[200, 700], layers=[1], sites=["mlp"], device="cpu")
    maps = ex.extract(images, ["", ""], [0, 1])
    raw = []
    handle = ex.transformer.transformer_blocks[1].ff.register_forward_hook(lambda m, a, out: raw.append(out))
    try:
        with torch.no_grad():
            ex.run_forward(ex.model_inputs(images, ["", ""], [0, 1]))
    finally:
        handle.remove()
    for j, t in enumerate([200, 700]):
        torch.testing.assert_close(maps[f"t={t}/site=mlp/layer=1"], raw[0][j::2])
