"""AuraFlow (AuraFlowTransformer2DModel) against its own AuraFlowPipeline: a tiny random pipeline folder with a
UMT5 text encoder, written and loaded back offline."""

import pytest
import torch

from pipeline_check import PipelineCheck, assert_matches_pipeline, last_element, last_tokens
from probekit.datasets.shapeworld import ShapeWorld
from tiny_text import char_tokenizer, tiny_t5

LAYERS = [1, 2]  # the last joint block and the first single block
SCALE, SHIFT = 0.13025, 0.2  # SDXL's VAE scale; a shift in the config that AuraFlow's pipeline does not use


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers import AuraFlowPipeline, AuraFlowTransformer2DModel, AutoencoderKL, FlowMatchEulerDiscreteScheduler

    tok = char_tokenizer(eos="</s>", model_max_length=256)
    torch.manual_seed(0)
    transformer = AuraFlowTransformer2DModel(sample_size=16, patch_size=2, in_channels=4, out_channels=4,
                                             num_mmdit_layers=2, num_single_dit_layers=2, attention_head_dim=16,
                                             num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32,
                                             pos_embed_max_size=256)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        sample_size=64, shift_factor=SHIFT, scaling_factor=SCALE)
    pipe = AuraFlowPipeline(tokenizer=tok, text_encoder=tiny_t5(tok, d_model=32, umt5=True), vae=vae,
                            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.73))
    path = tmp_path_factory.mktemp("auraflow") / "pipe"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def check(folder):
    from diffusers import AuraFlowPipeline

    pipe = AuraFlowPipeline.from_pretrained(folder)
    # joint blocks return (text, image); single blocks the joined [register; text; image] sequence
    return PipelineCheck(pipe=pipe,
                         blocks=lambda tr: list(tr.joint_transformer_blocks) + list(tr.single_transformer_blocks),
                         call=lambda prompt: {"prompt": prompt, "guidance_scale": 1.0},  # CFG off: one forward
                         image_tokens={1: last_element, 2: last_tokens})


@pytest.mark.parametrize("conditioning", ["empty", "caption"])
def test_maps_equal_the_auraflow_pipeline(folder, check, tmp_path, conditioning):
    ds = ShapeWorld("train", size=2)  # 64 px -> 16x16 latents -> 8x8 tokens
    worst = assert_matches_pipeline(folder, check, tmp_path, layers=LAYERS, conditioning=conditioning, dataset=ds)
    print(f"worst relative difference ({conditioning}): {worst:.2e}")


def test_latents_are_the_vae_mode_scaled_without_shift(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[0], layers=[0], device="cpu")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    expected = ex.vae.encode(images * 2 - 1).latent_dist.mode() * SCALE
    torch.testing.assert_close(ex.encode_images(images), expected)


def test_sigma_is_the_static_shift_and_the_timestep_t_over_1000(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[300], layers=[0], device="cpu")
    assert not ex.schedule.dynamic and ex.family.mu(64) is None
    assert ex.schedule.sigma(300) == pytest.approx(1.73 * 0.3 / (1 + 0.73 * 0.3))
    ex.transformer  # noqa: B018 - the timestep is cast to the transformer's dtype, as the pipeline casts it
    timestep = ex.family.timestep_input(torch.tensor([0.4]), torch.tensor([400]))
    assert timestep.dtype == torch.float32 and float(timestep) == pytest.approx(0.4)


def test_every_declared_site_extracts(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    family_sites = ["output", "norm1", "attn", "mlp"]
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    kwargs = dict(timesteps=[200, 700], layers=[0, 1, 2, 3], device="cpu")
    ex = DiffusersDiTExtractor(folder, sites=family_sites, **kwargs)
    assert ex.family.available_sites() == family_sites
    ex.prepare()
    maps = ex.extract(images, ["", ""], [0, 1])
    assert {k: tuple(v.shape[1:]) for k, v in maps.items()} == ex.feature_shapes((64, 64))
    plain = DiffusersDiTExtractor(folder, **kwargs)
    plain.prepare()
    for key, value in plain.extract(images, ["", ""], [0, 1]).items():
        torch.testing.assert_close(maps[key], value)
