"""HunyuanImage 2.1 (HunyuanImageTransformer2DModel) against its own HunyuanImagePipeline: a tiny random pipeline
folder with a tiny Qwen2.5-VL, a tiny ByT5 glyph encoder (T5 over ByT5's byte tokenizer), a tiny 2-D VAE and the
pipeline's guider, written and loaded back offline. The model is guidance-distilled and MeanFlow, as the distilled
release."""

import dataclasses

import pytest
import torch

from pipeline_check import PipelineCheck, assert_matches_pipeline
from probekit.datasets.shapeworld import ShapeWorld
from probekit.keys import feature_key
from tiny_text import tiny_t5
from tiny_text_qwen import qwen_tokenizer, tiny_qwen25_vl

LAYERS = [0, 2]  # a double-stream block and a single-stream block
GUIDANCE = 3.25  # the pipeline's default distilled_guidance_scale
SCALING = 0.75


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers import (AdaptiveProjectedMixGuidance, AutoencoderKLHunyuanImage, FlowMatchEulerDiscreteScheduler,
                           HunyuanImagePipeline, HunyuanImageTransformer2DModel)
    from transformers import ByT5Tokenizer

    tok, tok_2 = qwen_tokenizer(), ByT5Tokenizer()
    torch.manual_seed(0)
    transformer = HunyuanImageTransformer2DModel(in_channels=8, out_channels=8, num_attention_heads=2,
                                                 attention_head_dim=8, num_layers=2, num_single_layers=2,
                                                 num_refiner_layers=1, mlp_ratio=2.0, guidance_embeds=True,
                                                 text_embed_dim=16, text_embed_2_dim=32, rope_axes_dim=(4, 4),
                                                 use_meanflow=True)
    # 8x (the real VAE is 32x): 64 px -> 8x8 latents = 8x8 tokens
    vae = AutoencoderKLHunyuanImage(in_channels=3, out_channels=3, latent_channels=8,
                                    block_out_channels=(32, 32, 32, 32), layers_per_block=1,
                                    spatial_compression_ratio=8, sample_size=64, scaling_factor=SCALING)
    # the hidden state the pipeline reads is three from the end: give Qwen2.5-VL three layers
    pipe = HunyuanImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), vae=vae,
                                text_encoder=tiny_qwen25_vl(tok, layers=3), tokenizer=tok,
                                text_encoder_2=tiny_t5(tok_2, d_model=32), tokenizer_2=tok_2,
                                transformer=transformer, guider=AdaptiveProjectedMixGuidance(guidance_scale=3.5))
    path = tmp_path_factory.mktemp("hunyuanimage") / "pipe"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def check(folder):
    from diffusers import HunyuanImagePipeline

    pipe = HunyuanImagePipeline.from_pretrained(folder)
    assert pipe.guider is not None
    pipe.guider = None  # the guider off: one conditional forward (the pipeline's own fallback)
    blocks = lambda tr: list(tr.transformer_blocks) + list(tr.single_transformer_blocks)  # noqa: E731
    return PipelineCheck(pipe=pipe, blocks=blocks, image_tokens=lambda output, n_img: output[0],
                         call=lambda prompt: {"prompt": prompt, "distilled_guidance_scale": GUIDANCE})


class _Quoted:
    """ShapeWorld with quoted text in its captions: the pipeline then encodes glyph text with ByT5."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        sample = self.dataset[index]
        return dataclasses.replace(sample, caption=f'{sample.caption} on a sign that says "shape {index}"')

    def __getattr__(self, name):
        return getattr(self.dataset, name)


@pytest.mark.parametrize("conditioning", ["empty", "caption", "glyph"])
def test_maps_equal_the_hunyuanimage_pipeline(folder, check, tmp_path, conditioning):
    ds = ShapeWorld("train", size=2)
    glyph = conditioning == "glyph"
    worst = assert_matches_pipeline(folder, check, tmp_path, layers=LAYERS, dataset=_Quoted(ds) if glyph else ds,
                                    conditioning="caption" if glyph else conditioning, guidance=GUIDANCE)
    print(f"hunyuanimage {conditioning}: worst relative difference {worst:.2e}")


def test_glyph_text_reaches_the_condition(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[500], layers=[0], conditioning="caption", device="cpu")
    ex.prepare(['a sign that says "hi"', "a plain sign"])
    quoted, plain = ex._condition('a sign that says "hi"'), ex._condition("a plain sign")
    assert quoted["encoder_attention_mask_2"].sum() > 0 and quoted["encoder_hidden_states_2"].abs().sum() > 0
    assert plain["encoder_attention_mask_2"].sum() == 0 and not plain["encoder_hidden_states_2"].any()
    assert quoted["encoder_hidden_states"].shape[1] == plain["encoder_hidden_states"].shape[1] == 1000


def test_latents_are_the_vae_mode_scaled(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[0], layers=[0], device="cpu")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    expected = ex.vae.encode(images * 2 - 1).latent_dist.mode() * SCALING
    latents = ex.encode_images(images)
    assert latents.shape == (2, 8, 8, 8)
    torch.testing.assert_close(latents, expected)


def test_sigma_is_the_static_shift(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[300], layers=[0], device="cpu")
    assert ex.family.mu(64) is None
    assert ex.schedule.sigma(300) == pytest.approx(5 * 0.3 / (1 + 4 * 0.3))


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
        assert tuple(m.shape[1:]) == shapes[key]
    assert shapes[feature_key(400, 2, "mlp")] == (32, 8, 8)  # mlp_ratio 2 x 16
    plain = DiffusersDiTExtractor(folder, **kw).extract(images, ["", ""], [0, 1])
    for key, m in plain.items():
        torch.testing.assert_close(maps[key], m)
    for layer in LAYERS:
        assert not torch.allclose(maps[feature_key(400, layer, "norm1")], maps[feature_key(400, layer)])


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
