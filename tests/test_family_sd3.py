"""SD3 (SD3Transformer2DModel) against its own StableDiffusion3Pipeline: a tiny random pipeline with all three
text encoders (two CLIP-style with a start token, one T5-style without), written and loaded back offline."""

import pytest
import torch

from pipeline_check import PipelineCheck, assert_matches_pipeline
from probekit.datasets.shapeworld import ShapeWorld
from tiny_text import char_tokenizer, tiny_clip, tiny_t5

LAYERS = [0, 2]  # the first block and the context-pre-only last block


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)

    clip_tok = char_tokenizer(bos="<|startoftext|>", eos="<|endoftext|>", model_max_length=77)
    t5_tok = char_tokenizer(eos="</s>", model_max_length=256)
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8,
                                        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                                        pooled_projection_dim=16, out_channels=4, pos_embed_max_size=16)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        sample_size=64, shift_factor=0.06, scaling_factor=1.5)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=tiny_clip(clip_tok, hidden=16, projection=8, seed=1), tokenizer=clip_tok,
        text_encoder_2=tiny_clip(clip_tok, hidden=16, projection=8, seed=2), tokenizer_2=clip_tok,
        text_encoder_3=tiny_t5(t5_tok, d_model=32, seed=3), tokenizer_3=t5_tok)
    path = tmp_path_factory.mktemp("sd3") / "pipe"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def check(folder):
    from diffusers import StableDiffusion3Pipeline

    return PipelineCheck(pipe=StableDiffusion3Pipeline.from_pretrained(folder),
                         blocks=lambda tr: list(tr.transformer_blocks),
                         call=lambda prompt: {"prompt": prompt, "guidance_scale": 1.0})


@pytest.mark.parametrize("conditioning", ["empty", "caption"])
def test_maps_equal_the_sd3_pipeline(folder, check, tmp_path, conditioning):
    ds = ShapeWorld("train", size=2)  # 64 px -> 16x16 latents -> 8x8 tokens
    assert_matches_pipeline(folder, check, tmp_path, layers=LAYERS, conditioning=conditioning, dataset=ds)


def test_latents_subtract_the_shift_factor_then_scale(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[0], layers=[0], device="cpu")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    expected = (ex.vae.encode(images * 2 - 1).latent_dist.mode() - 0.06) * 1.5
    torch.testing.assert_close(ex.encode_images(images), expected)


def test_every_site_extracts_with_the_planned_shape(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    sites = ["output", "norm1", "attn", "mlp"]
    ex = DiffusersDiTExtractor(folder, timesteps=[400], layers=[0, 2], sites=sites, device="cpu")
    maps = ex.extract(images, ["", ""], [0, 1])
    shapes = ex.feature_shapes((64, 64))
    assert sorted(maps) == sorted(shapes) and len(maps) == 8
    for key, m in maps.items():
        assert tuple(m.shape[1:]) == shapes[key]
    plain = DiffusersDiTExtractor(folder, timesteps=[400], layers=[0, 2], device="cpu").extract(images, ["", ""],
                                                                                                 [0, 1])
    for key, m in plain.items():
        torch.testing.assert_close(maps[key], m)
    assert not torch.allclose(maps["t=400/site=norm1/layer=0"], maps["t=400/layer=0"])


def test_concepts_are_spans_of_the_joined_prompt_with_its_start_token(folder):
    """The reference encodes the concepts joined as one prompt and keeps CLIP's start token in the stream: a
    one-token concept is its own position, a three-token one the mean of its span (the space between skipped)."""
    from probekit.extractors.concept_attention import ConceptAttentionExtractor
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[300], layers=[1], device="cpu")
    ca = ConceptAttentionExtractor(ex, ["a", "red"])
    with torch.no_grad():
        emb, _, _, _ = ex._text_pipeline().encode_prompt("a red", "a red", "a red",
                                                         do_classifier_free_guidance=False)
    text = ca.text
    assert text.token_counts == [1, 3] and text.index == [1, 2]
    torch.testing.assert_close(text.stream[0], emb[0, 0])  # the start token
    torch.testing.assert_close(text.stream[1], emb[0, 1])  # "a"
    torch.testing.assert_close(text.stream[2], emb[0, 3:6].mean(0))  # "r", "e", "d" after the space at 2
    assert ca.concept_layers == [0, 1, 2]  # the context-pre-only last block too, as the reference reads it
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    plain = ex.extract(images, [""], [0])["t=300/layer=1"]
    seen = {}
    hook = ex.transformer.transformer_blocks[1].register_forward_hook(
        lambda m, a, o: seen.__setitem__("image", o[1].clone()))
    maps = ca.extract(images, [""], [0])
    hook.remove()
    assert torch.equal(seen["image"].reshape(1, 8, 8, -1).permute(0, 3, 1, 2), plain)
    torch.testing.assert_close(maps["concepts=output"].sum(1), torch.ones(1, 8, 8))
