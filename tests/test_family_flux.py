"""FLUX.1 (FluxTransformer2DModel) against its own FluxPipeline: a tiny random pipeline folder with a CLIP-style
and a T5-style text encoder, written and loaded back offline."""

import pytest
import torch

from pipeline_check import PipelineCheck, assert_matches_pipeline
from probekit.datasets.shapeworld import ShapeWorld
from tiny_text import char_tokenizer, tiny_clip, tiny_t5

LAYERS = [1, 3]  # a joint block and a single block


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    clip_tok = char_tokenizer(bos="<|startoftext|>", eos="<|endoftext|>", model_max_length=77)
    t5_tok = char_tokenizer(eos="</s>", model_max_length=512)
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        sample_size=64, shift_factor=0.11, scaling_factor=0.36)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=tiny_clip(clip_tok, hidden=16, projection=None),
                        tokenizer=clip_tok, text_encoder_2=tiny_t5(t5_tok, d_model=32), tokenizer_2=t5_tok,
                        transformer=transformer)
    path = tmp_path_factory.mktemp("flux") / "pipe"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def check(folder):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(folder)
    return PipelineCheck(pipe=pipe, blocks=lambda tr: list(tr.transformer_blocks) + list(tr.single_transformer_blocks),
                         call=lambda prompt: {"prompt": prompt, "guidance_scale": 3.5})


@pytest.mark.parametrize("conditioning", ["empty", "caption"])
def test_maps_equal_the_flux_pipeline(folder, check, tmp_path, conditioning):
    ds = ShapeWorld("train", size=2)  # 64 px -> 16x16 latents -> 8x8 tokens
    assert_matches_pipeline(folder, check, tmp_path, layers=LAYERS, conditioning=conditioning, dataset=ds)


def test_latents_are_the_vae_mode_shifted_and_scaled(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[0], layers=[0], device="cpu")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    vae = ex.vae
    expected = (vae.encode(images * 2 - 1).latent_dist.mode() - 0.11) * 0.36
    torch.testing.assert_close(ex.encode_images(images), expected)


def test_sigma_follows_the_dynamic_shift_of_the_token_count(folder):
    """mu = 0.5 + (1.15 - 0.5) (N - 256) / (4096 - 256) for N tokens; sigma = e^mu / (e^mu + 1/u - 1)."""
    import math

    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[300], layers=[0], device="cpu")
    for tokens in (64, 1024, 4096):
        mu = 0.5 + 0.65 * (tokens - 256) / 3840
        assert ex.family.mu(tokens) == pytest.approx(mu)
        assert ex.schedule.sigma(300, mu) == pytest.approx(math.exp(mu) / (math.exp(mu) + 1 / 0.3 - 1), rel=1e-5)


def test_concepts_are_their_own_t5_tokens_and_leave_the_image_stream_alone(folder):
    """T5 adds no start token: a one-token concept is its position 0, a three-token one the mean of positions
    0-2 (not the end-of-sequence token at 1 or 3); the stream is modulated by the joined concepts' pooled CLIP;
    and the stored block features are bit-identical with the concept stream running."""
    from probekit.extractors.concept_attention import ConceptAttentionExtractor
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[300], layers=[1], device="cpu")
    ca = ConceptAttentionExtractor(ex, ["a", "red"])
    pipe = ex._text_pipeline()
    with torch.no_grad():
        t5 = pipe._get_t5_prompt_embeds(prompt=["a", "red"], max_sequence_length=64)
        pooled = pipe._get_clip_prompt_embeds(prompt="a red")
    text = ca.text
    assert text.token_counts == [1, 3] and text.index == [0, 1]
    torch.testing.assert_close(text.stream[0], t5[0, 0])
    torch.testing.assert_close(text.stream[1], t5[1, :3].mean(0))
    torch.testing.assert_close(text.pooled, pooled)
    assert ca.config()["concept_definition"]["modulation"] == "concepts"
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    plain = ex.extract(images, [""], [0])["t=300/layer=1"]
    seen = {}
    hook = ex.transformer.transformer_blocks[1].register_forward_hook(
        lambda m, a, o: seen.__setitem__("image", o[1].clone()))
    maps = ca.extract(images, [""], [0])
    hook.remove()
    assert torch.equal(seen["image"].reshape(1, 8, 8, -1).permute(0, 3, 1, 2), plain)
    torch.testing.assert_close(maps["concepts=output"].sum(1), torch.ones(1, 8, 8))
