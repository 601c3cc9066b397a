"""HiDream-I1 (HiDreamImageTransformer2DModel) against its own HiDreamImagePipeline: a tiny random pipeline folder
with its four text encoders (two CLIP with projection, T5, Llama 3), written and loaded back offline.

The pipeline renders every request at an area of (128 * vae_scale)^2 pixels, whatever height and width it is
given: its latents are always 128 x 128 at that area. The tiny VAE downsamples 2x, so the pipeline works at
256 x 256 pixels; probekit is run at that resolution, and a patch of 16 keeps the token grid at 8 x 8.

The folder has HiDream-I1-Full's scheduler (UniPC with flow sigmas, int64 timesteps); a copy with HiDream-I1-Dev's
(FlowMatch, float timesteps) is checked too."""

import pytest
import torch

import pipeline_check
from pipeline_check import PipelineCheck, assert_matches_pipeline
from probekit.datasets.shapeworld import ShapeWorld
from tiny_text import char_tokenizer, tiny_clip, tiny_t5

LAYERS = [1, 3]  # a double-stream block and a single-stream block
# Timesteps whose 1000 sigma has a fractional part (flow shift 3: 562.5, 666.7, 964.3; shift 6: 514.3, 763.6,
# 933.3), so that an integer timestep and a float one differ.
FULL_TIMESTEPS, DEV_TIMESTEPS = [300, 400, 900], [150, 350, 700]
RESOLUTION = 256
SHIFT, SCALE = 0.1159, 0.3611


def tiny_llama(tokenizer, hidden=16):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers import AutoencoderKL, HiDreamImagePipeline, HiDreamImageTransformer2DModel, UniPCMultistepScheduler

    clip_tok = char_tokenizer(bos="<|startoftext|>", eos="<|endoftext|>", model_max_length=128)
    t5_tok = char_tokenizer(eos="</s>", model_max_length=512)
    llama_tok = char_tokenizer(bos="<|begin_of_text|>", eos="<|end_of_text|>", model_max_length=128)
    torch.manual_seed(0)
    transformer = HiDreamImageTransformer2DModel(
        patch_size=16, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        caption_channels=[32, 16], text_emb_dim=16, num_routed_experts=4, num_activated_experts=2,
        axes_dims_rope=(8, 4, 4), max_resolution=(128, 256), llama_layers=[1, 0, 1, 1])  # max_seq 128 tokens
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        sample_size=64, shift_factor=SHIFT, scaling_factor=SCALE,
                        mid_block_add_attention=False)  # attention over 128x128 latents would take seconds
    # HiDream-I1-Full's scheduler: UniPC run as a flow sampler with a static shift.
    scheduler = UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction")
    pipe = HiDreamImagePipeline(
        scheduler=scheduler, vae=vae, transformer=transformer,
        text_encoder=tiny_clip(clip_tok, hidden=16, projection=8), tokenizer=clip_tok,
        text_encoder_2=tiny_clip(clip_tok, hidden=16, projection=8, seed=1), tokenizer_2=clip_tok,
        text_encoder_3=tiny_t5(t5_tok, d_model=32), tokenizer_3=t5_tok,
        text_encoder_4=tiny_llama(llama_tok), tokenizer_4=llama_tok)
    path = tmp_path_factory.mktemp("hidream") / "pipe"
    pipe.save_pretrained(path)
    return path


def double_image(output, n_img):
    """Double-stream blocks return (image, text); a non-square image stream is padded after its n_img tokens."""
    return output[0][:, :n_img]


def single_image(output, n_img):
    """Single-stream blocks return the joined [image; text] sequence."""
    return output[:, :n_img]


def hidream_check(folder):
    from diffusers import HiDreamImagePipeline

    pipe = HiDreamImagePipeline.from_pretrained(folder)
    return PipelineCheck(pipe=pipe, blocks=lambda tr: list(tr.double_stream_blocks) + list(tr.single_stream_blocks),
                         call=lambda prompt: {"prompt": prompt, "guidance_scale": 1.0},  # CFG off: one forward
                         image_tokens={1: double_image, 3: single_image})


@pytest.fixture(scope="module")
def check(folder):
    return hidream_check(folder)


@pytest.fixture(scope="module")
def dev_folder(folder, tmp_path_factory):
    """The same pipeline with HiDream-I1-Dev's scheduler: FlowMatch, static shift 6."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HiDreamImagePipeline

    pipe = HiDreamImagePipeline.from_pretrained(folder)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=6.0)
    path = tmp_path_factory.mktemp("hidream-dev") / "pipe"
    pipe.save_pretrained(path)
    return path


@pytest.fixture
def unipc_step(monkeypatch, check):
    """The pipeline's own UniPC scheduler, its one step at probekit's t: the pipeline calls
    set_timesteps(num_inference_steps), which here runs UniPC's flow-sigma schedule for the one unshifted
    sigma t / 1000, so the transformer gets UniPC's own (int64) timestep. The shared harness's one-step scheduler
    is a FlowMatch one (float timesteps): it is replaced for this folder. It fails the run if UniPC's sigma is
    not probekit's."""
    import numpy as np
    from diffusers import UniPCMultistepScheduler

    class PipelineStep(UniPCMultistepScheduler):
        def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
            super().set_timesteps(device=device, sigmas=np.array([self.t / 1000.0]))
            assert float(self.sigmas[0]) == pytest.approx(self.probekit_sigma, abs=1e-6), "probekit's sigma"
            self.seen.append(self.timesteps[0].item())

    config, seen = dict(check.pipe.scheduler.config), []

    def factory(kind, sigma, t_int):
        sched = PipelineStep.from_config(config)
        sched.t, sched.probekit_sigma, sched.seen = int(t_int), float(sigma), seen
        return sched

    monkeypatch.setattr(pipeline_check, "fixed_step_scheduler", factory)
    return seen


@pytest.mark.parametrize("conditioning", ["empty", "caption"])
def test_maps_equal_the_hidream_pipeline(folder, check, tmp_path, conditioning, unipc_step):
    ds = ShapeWorld("train", size=2)  # 64 px, resized to 256 px -> 128x128 latents -> 8x8 tokens of 16x16
    worst = assert_matches_pipeline(folder, check, tmp_path, layers=LAYERS, conditioning=conditioning, dataset=ds,
                                    resolution=RESOLUTION, timesteps=FULL_TIMESTEPS)
    assert set(unipc_step) == {562, 666, 964}  # UniPC's int64 timesteps
    print(f"worst relative difference ({conditioning}): {worst:.2e}")


def test_maps_equal_the_hidream_dev_pipeline(dev_folder, tmp_path):
    """FlowMatch (Dev, Fast): the transformer gets the float timestep 1000 sigma (the shared one-step scheduler)."""
    ds = ShapeWorld("train", size=2)
    worst = assert_matches_pipeline(dev_folder, hidream_check(dev_folder), tmp_path, layers=LAYERS,
                                    conditioning="caption", dataset=ds, resolution=RESOLUTION, timesteps=DEV_TIMESTEPS)
    print(f"worst relative difference (dev, caption): {worst:.2e}")


def test_non_square_maps_equal_the_hidream_pipeline(folder, check, tmp_path, unipc_step):
    """A non-square grid goes through the transformer's padded patchify: 64 image tokens padded to max_seq = 128,
    with a token mask. At 128 x 512 pixels the pipeline's area rescaling leaves the size as it is."""
    from dataclasses import replace

    wide = replace(check, grid=(4, 16), call=lambda prompt: {"prompt": prompt, "guidance_scale": 1.0,
                                                              "height": 128, "width": 512})
    ds = ShapeWorld("train", size=1)
    worst = assert_matches_pipeline(folder, wide, tmp_path, layers=LAYERS, conditioning="caption", dataset=ds,
                                    resolution=(128, 512), timesteps=FULL_TIMESTEPS)
    print(f"worst relative difference (non-square): {worst:.2e}")


def test_latents_are_the_vae_mode_shifted_and_scaled(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[0], layers=[0], device="cpu")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = (ex.vae.encode(images * 2 - 1).latent_dist.mode() - SHIFT) * SCALE
    torch.testing.assert_close(ex.encode_images(images), expected)


def test_sigma_is_the_unipc_flow_shift_and_mu_the_max_seq_shift(folder, dev_folder):
    """UniPC with flow sigmas: sigma = k u / (1 + (k - 1) u), k = flow_shift, no mu, int64 timesteps. With a
    dynamically shifting FlowMatch scheduler the pipeline's mu is calculate_shift(max_seq), whatever the image's
    token count."""
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[300], layers=[0], device="cpu")
    assert ex.schedule.kind == "flow" and not ex.schedule.dynamic
    assert ex.family.mu(64) is None
    assert ex.schedule.sigma(300) == pytest.approx(3 * 0.3 / (1 + 2 * 0.3))
    timestep = ex.family.timestep_input(torch.tensor([0.4567, 1.0]), torch.tensor([0, 0]))
    assert timestep.dtype == torch.int64 and timestep.tolist() == [456, 999]  # truncated; sigma 1 lowered by 1e-6

    dev = DiffusersDiTExtractor(dev_folder, timesteps=[300], layers=[0], device="cpu")
    assert dev.schedule.sigma(300) == pytest.approx(6 * 0.3 / (1 + 5 * 0.3))
    timestep = dev.family.timestep_input(torch.tensor([0.4567]), torch.tensor([0]))
    assert timestep.dtype == torch.float32 and float(timestep) == pytest.approx(456.7)

    family = type(ex.family)(ex.family.config, ex.family.vae_config, {"use_dynamic_shifting": True})
    max_seq = 128 * 256 // 16 ** 2
    for tokens in (16, 64):
        assert family.mu(tokens) == pytest.approx(0.5 + 0.65 * (max_seq - 256) / 3840)


@pytest.mark.parametrize("resolution", [RESOLUTION, (128, 512)], ids=["square", "padded"])
def test_every_declared_site_extracts(folder, resolution):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    family_sites = ["output", "norm1", "attn", "mlp"]
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    kwargs = dict(timesteps=[200, 700], layers=[0, 1, 2, 3], device="cpu", resolution=resolution)
    ex = DiffusersDiTExtractor(folder, sites=family_sites, **kwargs)
    assert ex.family.available_sites() == family_sites
    ex.prepare()
    maps = ex.extract(images, ["", ""], [0, 1])
    shapes = ex.feature_shapes((64, 64))
    assert {k: tuple(v.shape[1:]) for k, v in maps.items()} == shapes
    plain = DiffusersDiTExtractor(folder, **kwargs)
    plain.prepare()
    for key, value in plain.extract(images, ["", ""], [0, 1]).items():
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


@pytest.mark.parametrize("resolution", [RESOLUTION, (128, 512)], ids=["square", "padded"])
def test_norm1_is_what_the_blocks_attention_receives(folder, resolution):
    """norm1 is the modulated input the block hands its attention (attn1's first argument): the double-stream
    blocks' image stream, the single-stream blocks' joined [image; text] sequence; either way the image is the
    first h*w tokens, a non-square image padded to max_seq after them."""
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor
    from probekit.keys import feature_key

    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    timesteps = [200, 700]
    gh, gw = (8, 8) if resolution == RESOLUTION else (4, 16)  # VAE /2, patch 16
    ex = DiffusersDiTExtractor(folder, timesteps=timesteps, layers=LAYERS, device="cpu", resolution=resolution,
                               sites=["output", "norm1"])
    ex.prepare()
    blocks = list(ex.transformer.double_stream_blocks) + list(ex.transformer.single_stream_blocks)
    seen, maps = attention_inputs({layer: blocks[layer].block.attn1 for layer in LAYERS},
                                  lambda: ex.extract(images, ["", ""], [0, 1]))
    for layer in LAYERS:
        assert len(seen[layer]) == 1, layer  # one forward
        tokens = seen[layer][0][:, :gh * gw]
        for j, t in enumerate(timesteps):
            reference = tokens[j::len(timesteps)].reshape(2, gh, gw, -1).permute(0, 3, 1, 2)  # sample-major rows
            norm1 = maps[feature_key(t, layer, "norm1")]
            torch.testing.assert_close(norm1, reference)
            assert not torch.allclose(norm1, maps[feature_key(t, layer, "output")])
