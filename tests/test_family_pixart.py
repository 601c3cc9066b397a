"""PixArt (PixArtTransformer2DModel) against its own PixArtAlphaPipeline, on a DDPM schedule: a tiny random
pipeline with a T5-style text encoder, written and loaded back offline."""

import pytest
import torch

from pipeline_check import PipelineCheck, assert_matches_pipeline
from probekit.datasets.shapeworld import ShapeWorld
from tiny_text import char_tokenizer, tiny_t5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers import AutoencoderKL, DDPMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    tok = char_tokenizer(eos="</s>", model_max_length=120)
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8,
                                           num_attention_heads=3, caption_channels=32, in_channels=4,
                                           cross_attention_dim=24, out_channels=8, attention_bias=True,
                                           activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                           norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        sample_size=64, scaling_factor=0.7)
    pipe = PixArtAlphaPipeline(tokenizer=tok, text_encoder=tiny_t5(tok, d_model=32), vae=vae, transformer=transformer,
                               scheduler=DDPMScheduler(beta_schedule="linear"))
    path = tmp_path_factory.mktemp("pixart") / "pipe"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def check(folder):
    from diffusers import PixArtAlphaPipeline

    return PipelineCheck(pipe=PixArtAlphaPipeline.from_pretrained(folder), blocks=lambda tr: list(tr.transformer_blocks),
                         call=lambda prompt: {"prompt": prompt, "guidance_scale": 1.0, "clean_caption": False,
                                              "use_resolution_binning": False})


@pytest.mark.parametrize("conditioning", ["empty", "caption"])
def test_maps_equal_the_pixart_pipeline(folder, check, tmp_path, conditioning):
    ds = ShapeWorld("train", size=2)
    assert_matches_pipeline(folder, check, tmp_path, layers=[0, 1], conditioning=conditioning, dataset=ds)
