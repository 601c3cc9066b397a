"""CogView4 (CogView4Transformer2DModel) against its own CogView4Pipeline: a tiny random pipeline folder with a GLM
text encoder, written and loaded back offline.

CogView4's pipeline hands its scheduler integer timesteps t with sigmas t / 1000, which the scheduler shifts by
the pipeline's mu: the transformer gets t unshifted, the noise level is the shifted sigma. The shared harness's
one-step scheduler yields timestep = sigma * 1000, so here it is replaced by the pipeline's own scheduler
(restricted to probekit's t) that also checks probekit's sigma against the one the pipeline computes."""

import math

import pytest
import torch

import pipeline_check
from pipeline_check import PipelineCheck, assert_matches_pipeline
from probekit.datasets.shapeworld import ShapeWorld
from tiny_text import char_tokenizer

LAYERS = [0, 2]
SCALE, SHIFT = 0.7, 0.2  # the shift is in the VAE config, and CogView4's pipelines do not use it
SCHEDULER = dict(base_image_seq_len=256, base_shift=0.25, max_shift=0.75, time_shift_type="linear",
                 use_dynamic_shifting=True, shift=1.0)  # CogView4-6B's scheduler


def glm_tokenizer():
    return char_tokenizer(bos="[gMASK]", eos=None, pad="<|endoftext|>", model_max_length=1024, padding_side="left")


def tiny_glm(tokenizer, hidden=32):
    from transformers import GlmConfig, GlmModel

    torch.manual_seed(0)
    cfg = GlmConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3,
                    num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
                    pad_token_id=tokenizer.pad_token_id)
    return GlmModel(cfg).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers import AutoencoderKL, CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler

    tok = glm_tokenizer()
    torch.manual_seed(0)
    transformer = CogView4Transformer2DModel(patch_size=2, in_channels=4, out_channels=4, num_layers=3,
                                             attention_head_dim=16, num_attention_heads=2, text_embed_dim=32,
                                             time_embed_dim=32, condition_dim=16, sample_size=16,
                                             rope_axes_dim=(16, 16))
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        sample_size=64, shift_factor=SHIFT, scaling_factor=SCALE)
    pipe = CogView4Pipeline(tokenizer=tok, text_encoder=tiny_glm(tok), vae=vae, transformer=transformer,
                            scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER))
    path = tmp_path_factory.mktemp("cogview4") / "pipe"
    pipe.save_pretrained(path)
    return path


def image_first(output, n_img):
    """CogView4's blocks return (image, text)."""
    return output[0]


@pytest.fixture(scope="module")
def check(folder):
    from diffusers import CogView4Pipeline

    pipe = CogView4Pipeline.from_pretrained(folder)
    return PipelineCheck(pipe=pipe, blocks=lambda tr: list(tr.transformer_blocks), image_tokens=image_first,
                         call=lambda prompt: {"prompt": prompt, "guidance_scale": 1.0})  # CFG off: one forward


@pytest.fixture
def pipeline_schedule(monkeypatch, check):
    """The pipeline's own scheduler, its one step at probekit's integer t: set_timesteps gets timesteps=[t] and
    sigmas=[t / 1000] (as the pipeline's __call__ builds them) with the pipeline's mu. It fails the run if the
    sigma it arrives at is not probekit's."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    class PipelineStep(FlowMatchEulerDiscreteScheduler):
        def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None):
            super().set_timesteps(device=device, timesteps=[float(self.t)], sigmas=[self.t / 1000.0], mu=mu)
            assert float(self.sigmas[0]) == pytest.approx(self.probekit_sigma, abs=1e-6), "probekit's sigma"
            self.seen.append((float(self.timesteps[0]), float(self.sigmas[0])))

    config = dict(check.pipe.scheduler.config)
    seen = []

    def factory(kind, sigma, t_int):
        sched = PipelineStep.from_config(config)
        sched.t, sched.probekit_sigma, sched.seen = int(t_int), float(sigma), seen
        return sched

    monkeypatch.setattr(pipeline_check, "fixed_step_scheduler", factory)
    return seen


@pytest.mark.parametrize("conditioning", ["empty", "caption"])
def test_maps_equal_the_cogview4_pipeline(folder, check, tmp_path, conditioning, pipeline_schedule):
    ds = ShapeWorld("train", size=2)  # 64 px -> 16x16 latents -> 8x8 tokens; captions of 83 and 17 GLM tokens
    worst = assert_matches_pipeline(folder, check, tmp_path, layers=LAYERS, conditioning=conditioning, dataset=ds)
    assert sorted({t for t, _ in pipeline_schedule}) == [100.0, 500.0, 900.0]  # unshifted, as the pipeline gives
    print(f"worst relative difference ({conditioning}): {worst:.2e}")


def test_a_batch_of_prompts_of_different_lengths_equals_each_prompt_alone(folder):
    """The pipeline pads prompts to a multiple of 16 tokens: 96 and 32 here. In one batch the shorter one is
    padded with a mask the family's attention honours, so each sample's maps are those of its prompt alone."""
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    captions = [ShapeWorld("train", size=2)[i].caption for i in range(2)]
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ex = DiffusersDiTExtractor(folder, timesteps=[300, 800], layers=[2], conditioning="caption", device="cpu",
                               sites=["output", "attn"])
    ex.prepare(captions)
    lengths = [ex._cond_cache[c]["text_mask"].sum().item() for c in captions]
    assert lengths == [96, 32]
    both = ex.extract(images, captions, [0, 1])
    for i in range(2):
        alone = ex.extract(images[i:i + 1], captions[i:i + 1], [i])
        for key, value in alone.items():
            torch.testing.assert_close(both[key][i:i + 1], value, rtol=1e-5, atol=1e-5)


def test_latents_are_the_vae_mode_scaled_without_shift(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[0], layers=[0], device="cpu")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    expected = ex.vae.encode(images * 2 - 1).latent_dist.mode() * SCALE
    torch.testing.assert_close(ex.encode_images(images), expected)


def test_sigma_follows_cogview4_square_root_shift(folder):
    """mu = sqrt(N / 256) * 0.75 + 0.25 for N tokens; linear time shift: sigma = mu / (mu + 1/u - 1)."""
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[300], layers=[0], device="cpu")
    assert ex.schedule.time_shift_type == "linear"
    for tokens in (64, 1024, 4096):
        mu = math.sqrt(tokens / 256) * 0.75 + 0.25
        assert ex.family.mu(tokens) == pytest.approx(mu)
        assert ex.schedule.sigma(300, mu) == pytest.approx(mu / (mu + 1 / 0.3 - 1), rel=1e-5)
    timestep = ex.family.timestep_input(torch.tensor([0.6], dtype=torch.bfloat16), torch.tensor([300]))
    assert timestep.dtype == torch.float32 and float(timestep) == 300.0


def test_every_declared_site_extracts(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    family_sites = ["output", "norm1", "attn"]
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    kwargs = dict(timesteps=[200, 700], layers=[0, 1, 2], device="cpu")
    ex = DiffusersDiTExtractor(folder, sites=family_sites, **kwargs)
    assert ex.family.available_sites() == family_sites
    ex.prepare()
    maps = ex.extract(images, ["", ""], [0, 1])
    assert {k: tuple(v.shape[1:]) for k, v in maps.items()} == ex.feature_shapes((64, 64))
    plain = DiffusersDiTExtractor(folder, **kwargs)
    plain.prepare()
    for key, value in plain.extract(images, ["", ""], [0, 1]).items():
        torch.testing.assert_close(maps[key], value)


def test_mlp_is_refused_with_a_reason(folder):
    from probekit.errors import ProbekitError
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    with pytest.raises(ProbekitError, match="FeedForward"):
        DiffusersDiTExtractor(folder, timesteps=[100], layers=[0], sites=["mlp"], device="cpu")
