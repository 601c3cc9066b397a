"""Chroma (ChromaTransformer2DModel) against its own ChromaPipeline: a tiny random pipeline folder with a T5-style
text encoder, written and loaded back offline.

ChromaPipeline hands the transformer its text mask as float 0/1, which attention adds to the logits rather than
masking with (diffusers issues #11724, #12116, #13619); probekit passes it as bool. The pipeline check therefore
has the pipeline encode the prompt with its own encode_prompt and passes that mask back as bool; a second check
shows that the mask's dtype is the only difference from the pipeline left as it is."""

import pytest
import torch

from pipeline_check import PipelineCheck, assert_matches_pipeline, last_element, last_tokens
from probekit.datasets.shapeworld import ShapeWorld
from tiny_text import char_tokenizer, tiny_t5

LAYERS = [1, 3]  # a joint block and a single block


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from diffusers import AutoencoderKL, ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    tok = char_tokenizer(eos="</s>", model_max_length=512)
    torch.manual_seed(0)
    transformer = ChromaTransformer2DModel(in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
                                           num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6),
                                           approximator_num_channels=16, approximator_hidden_dim=32,
                                           approximator_layers=2)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        sample_size=64, shift_factor=0.11, scaling_factor=0.36)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = ChromaPipeline(scheduler=scheduler, vae=vae, text_encoder=tiny_t5(tok, d_model=32), tokenizer=tok,
                          transformer=transformer)
    path = tmp_path_factory.mktemp("chroma") / "pipe"
    pipe.save_pretrained(path)
    return path


def _blocks(tr):
    return list(tr.transformer_blocks) + list(tr.single_transformer_blocks)


# joint blocks return (text, image); single blocks return the joined [text; image] sequence
TOKENS = {1: last_element, 3: last_tokens}


@pytest.fixture(scope="module")
def pipe(folder):
    from diffusers import ChromaPipeline

    return ChromaPipeline.from_pretrained(folder)


def _bool_mask_call(pipe):
    def call(prompt):
        # the pipeline's own encoding, under no_grad as in its __call__ (bfloat16 kernels differ with grad on);
        # only the mask's dtype changes (guidance_scale 1: CFG off, one forward)
        with torch.no_grad():
            emb, _, mask, _, _, _ = pipe.encode_prompt(prompt=prompt, device="cpu", do_classifier_free_guidance=False)
        return {"prompt": None, "prompt_embeds": emb, "prompt_attention_mask": mask.bool(), "guidance_scale": 1.0}
    return call


@pytest.mark.parametrize("conditioning", ["empty", "caption"])
def test_maps_equal_the_chroma_pipeline(folder, pipe, tmp_path, conditioning):
    ds = ShapeWorld("train", size=2)  # 64 px -> 16x16 latents -> 8x8 tokens
    check = PipelineCheck(pipe=pipe, blocks=_blocks, image_tokens=TOKENS, call=_bool_mask_call(pipe))
    worst = assert_matches_pipeline(folder, check, tmp_path, layers=LAYERS, conditioning=conditioning, dataset=ds)
    print(f"{conditioning}: worst relative difference {worst:.2e}")


def test_bfloat16_maps_equal_the_chroma_pipeline_exactly(folder, tmp_path):
    """In the model's dtype the timestep is cast as the pipeline casts it (t = 1000 sigma, not sigma)."""
    from diffusers import ChromaPipeline

    pipe = ChromaPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)
    check = PipelineCheck(pipe=pipe, blocks=_blocks, image_tokens=TOKENS, call=_bool_mask_call(pipe))
    worst = assert_matches_pipeline(folder, check, tmp_path, layers=LAYERS, conditioning="caption",
                                    dataset=ShapeWorld("train", size=1), dtype="bfloat16")
    assert worst == 0.0


def test_the_float_mask_is_the_only_difference_from_the_pipeline_as_is(folder, pipe, tmp_path, monkeypatch):
    from probekit.extractors.families.chroma import ChromaFamily

    encode = ChromaFamily.encode_prompts

    def float_mask(self, pipe, prompts, device):
        cond = encode(self, pipe, prompts, device)
        return {**cond, "attention_mask": cond["attention_mask"].float()}

    monkeypatch.setattr(ChromaFamily, "encode_prompts", float_mask)
    check = PipelineCheck(pipe=pipe, blocks=_blocks, image_tokens=TOKENS,
                          call=lambda prompt: {"prompt": prompt, "guidance_scale": 1.0})
    assert_matches_pipeline(folder, check, tmp_path, layers=LAYERS, conditioning="caption",
                            dataset=ShapeWorld("train", size=1), timesteps=[500])


def test_the_pipeline_as_is_differs_from_probekit(folder, pipe, tmp_path):
    """With its float mask the pipeline attends the padding that probekit's bool mask drops."""
    check = PipelineCheck(pipe=pipe, blocks=_blocks, image_tokens=TOKENS,
                          call=lambda prompt: {"prompt": prompt, "guidance_scale": 1.0})
    with pytest.raises(AssertionError, match="relative difference"):
        assert_matches_pipeline(folder, check, tmp_path, layers=LAYERS, conditioning="caption",
                                dataset=ShapeWorld("train", size=1), timesteps=[500])


def test_the_text_mask_keeps_the_prompt_and_one_padding_token(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[500], layers=[0], device="cpu", conditioning="caption")
    ex.prepare(["a red circle"])
    mask = ex._condition("a red circle")["attention_mask"]
    assert mask.dtype == torch.bool and mask.shape == (1, 512)
    assert int(mask.sum()) == len("a red circle") + 2  # the characters, </s>, and the first padding token


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


def test_every_declared_site_extracts(folder):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor
    from probekit.extractors.families.chroma import ChromaFamily
    from probekit.keys import feature_key

    ds = ShapeWorld("train", size=2)
    samples = [ds[i] for i in range(2)]
    images = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1).float() / 255 for s in samples])
    captions = [s.caption for s in samples]
    sites = ["output", "norm1", "attn", "mlp"]
    assert all(set(kind) == set(sites) for kind in ChromaFamily.sites.values())
    kwargs = dict(timesteps=[500], layers=LAYERS, device="cpu", conditioning="caption")
    reference = DiffusersDiTExtractor(folder, **kwargs).extract(images, captions, [0, 1])
    ex = DiffusersDiTExtractor(folder, sites=sites, **kwargs)
    maps = ex.extract(images, captions, [0, 1])
    shapes = ex.feature_shapes((64, 64))
    assert set(maps) == set(shapes)
    for key, value in maps.items():
        assert tuple(value.shape[1:]) == shapes[key], key
        assert torch.isfinite(value).all()
    for layer in LAYERS:
        key = feature_key(500, layer, "output")
        torch.testing.assert_close(maps[key], reference[key])
    assert shapes[feature_key(500, 3, "mlp")][0] == 4 * 32
