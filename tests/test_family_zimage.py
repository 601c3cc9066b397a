"""Z-Image (ZImageTransformer2DModel) against its own ZImagePipeline: a tiny random pipeline folder with a Qwen3
text encoder and a chat-templated tokenizer, written and loaded back offline."""

import pytest
import torch

from pipeline_check import PipelineCheck, assert_matches_pipeline
from probekit.datasets.shapeworld import ShapeWorld
from tiny_text_zls import qwen_tokenizer, tiny_qwen3

LAYERS = [0, 2]  # a noise-refiner block and a main-layer block
SHIFT, SCALE = 0.11, 0.36


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    tok = qwen_tokenizer()
    torch.manual_seed(0)
    transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32,
                                           n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=16,
                                           axes_dims=[4, 6, 6], axes_lens=[1024, 64, 64])
    for p in (transformer.x_pad_token, transformer.cap_pad_token):  # zeros at init: make the padding visible
        p.data.normal_()
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        sample_size=64, shift_factor=SHIFT, scaling_factor=SCALE)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)  # Z-Image's: a static shift
    pipe = ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=tiny_qwen3(tok, hidden=16), tokenizer=tok,
                          transformer=transformer)
    path = tmp_path_factory.mktemp("zimage") / "pipe"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipe(folder):
    from diffusers import ZImagePipeline

    return ZImagePipeline.from_pretrained(folder)


def first_tokens(output, n_img):
    """ZImageTransformer2DModel._build_unified_sequence (basic mode) puts each sample's image tokens first:
    [x, cap]; the noise refiner sees x alone. Both pad after them."""
    return output[:, :n_img]


def zimage_check(pipe, side):
    size = side * 8  # VAE /4, patch 2
    return PipelineCheck(pipe=pipe, blocks=lambda tr: list(tr.noise_refiner) + list(tr.layers),
                         image_tokens=first_tokens, grid=(side, side),
                         # guidance_scale 0 turns CFG off (do_classifier_free_guidance is guidance_scale > 0)
                         call=lambda prompt: {"prompt": prompt, "guidance_scale": 0.0, "height": size, "width": size})


@pytest.mark.parametrize("conditioning", ["empty", "caption"])
@pytest.mark.parametrize("side", [8, 6])  # 64 image tokens, or 36 padded to 64 before the caption
def test_maps_equal_the_zimage_pipeline(folder, pipe, tmp_path, conditioning, side):
    ds = ShapeWorld("train", size=2)
    worst = assert_matches_pipeline(folder, zimage_check(pipe, side), tmp_path, layers=LAYERS,
                                    conditioning=conditioning, dataset=ds, resolution=side * 8)
    print(f"zimage {conditioning} {side}x{side}: worst relative difference {worst:.2e}")


def test_captions_of_different_lengths_are_padded_apart(folder):
    """Two captions of different lengths in one batch give the same maps as each alone."""
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[500], layers=[2], conditioning="caption", device="cpu")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    captions = ["a red square", "a small blue circle above a large green triangle on the left"]
    ex.prepare(captions)
    both = ex.extract(images, captions, [0, 1])["t=500/layer=2"]
    for i in range(2):
        alone = ex.extract(images[i:i + 1], captions[i:i + 1], [i])["t=500/layer=2"]
        torch.testing.assert_close(both[i:i + 1], alone, rtol=1e-4, atol=1e-5)


def test_latents_are_the_vae_mode_shifted_and_scaled(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[0], layers=[0], device="cpu")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    # pipeline_z_image_img2img.py: (latents - shift_factor) * scaling_factor
    expected = (ex.vae.encode(images * 2 - 1).latent_dist.mode() - SHIFT) * SCALE
    torch.testing.assert_close(ex.encode_images(images), expected)


def test_sigma_is_the_static_shift_and_the_timestep_input_is_one_minus_sigma(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[300], layers=[0], device="cpu")
    assert ex.family.mu(64) is None
    assert ex.schedule.sigma(300) == pytest.approx(3 * 0.3 / (1 + 2 * 0.3))
    assert float(ex.family.timestep_input(torch.tensor(0.25), None)) == pytest.approx(0.75)


def test_every_declared_site_extracts(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    kw = dict(timesteps=[200, 700], layers=[0, 1, 2], device="cpu")
    ex = DiffusersDiTExtractor(folder, sites=["output", "norm1", "attn", "mlp"], **kw)
    assert ex.family.available_sites() == ["output", "norm1", "attn", "mlp"]
    maps = ex.extract(images, ["", ""], [0, 1])
    shapes = ex.feature_shapes((48, 48))
    assert {k: tuple(v.shape[1:]) for k, v in maps.items()} == shapes
    plain = DiffusersDiTExtractor(folder, **kw).extract(images, ["", ""], [0, 1])
    for key, value in plain.items():
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
    """norm1 is the modulated input the block hands its attention (its first argument): the noise refiner's image
    sequence, the main layers' unified [image; caption] sequence, each sample's image tokens first. At 48 px the
    6x6 = 36 image tokens are padded to 64 after them."""
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor
    from probekit.keys import feature_key

    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    layers, timesteps, (gh, gw) = [0, 1, 2], [200, 700], (6, 6)  # 48 px, VAE /4, patch 2
    ex = DiffusersDiTExtractor(folder, timesteps=timesteps, layers=layers, device="cpu", sites=["output", "norm1"])
    blocks = list(ex.transformer.noise_refiner) + list(ex.transformer.layers)
    seen, maps = attention_inputs({layer: blocks[layer].attention for layer in layers},
                                  lambda: ex.extract(images, ["", ""], [0, 1]))
    for layer in layers:
        assert len(seen[layer]) == 1, layer  # one forward
        tokens = seen[layer][0][:, :gh * gw]
        for j, t in enumerate(timesteps):
            reference = tokens[j::len(timesteps)].reshape(2, gh, gw, -1).permute(0, 3, 1, 2)  # sample-major rows
            norm1 = maps[feature_key(t, layer, "norm1")]
            torch.testing.assert_close(norm1, reference)
            assert not torch.allclose(norm1, maps[feature_key(t, layer, "output")])
