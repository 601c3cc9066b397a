"""FLUX.3 (Flux3Transformer2DModel) against its modular pipelines: tiny Flux3ModularPipeline and
Flux3DistilledModularPipeline folders (Qwen3-VL text encoder and processor, FLUX.2 VAE), written and loaded back
offline, run through their own blocks without the prompt upsampler (a generative step probekit does not run).
The extractor reads a modular folder's text through the folder's own modular pipeline (modular_model_index.json),
loading its text encoder and processor only."""

from pathlib import Path

import pytest
import torch

from pipeline_check import PipelineCheck, assert_matches_pipeline, last_element
from probekit.datasets.shapeworld import ShapeWorld

LAYERS = [1, 3]  # an image per-mode block and a joint single block
SPECIALS = ("<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
WORDS = ("user assistant a an in front of and dotted striped circle square triangle cross star red orange yellow green "
         "cyan blue purple white").split()


def word_tokenizer():
    """Whole words where it knows them, characters otherwise (WordPiece): the text windows of ShapeWorld captions
    are then one 80-token window, as with Qwen's own tokenizer, where character tokens would need two."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tiny_text import CHARS

    names = ["<pad>", "<unk>", *SPECIALS, *WORDS, *CHARS, *("##" + c for c in CHARS)]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(dict.fromkeys(names))}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", model_max_length=8192,
                                  additional_special_tokens=list(SPECIALS))
    out.chat_template = TEMPLATE
    return out


def tiny_qwen3_vl(tok, hidden=16, layers=32):
    """Qwen3VLForConditionalGeneration with 32 text layers (the blocks read hidden states 4, 8, ..., 32) and a
    one-layer vision tower it never runs."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    torch.manual_seed(1)
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
                         pad_token_id=tok.pad_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=hidden,
                           patch_size=16, num_position_embeddings=16, deepstack_visual_indexes=[0]),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"))
    return Qwen3VLForConditionalGeneration(cfg).eval()


def tiny_processor():
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    return Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=word_tokenizer(),
                            video_processor=Qwen3VLVideoProcessor(), chat_template=TEMPLATE)


def blocks_of(variant):
    """The variant's auto blocks without the prompt upsampler: prompts are encoded as given."""
    from diffusers.modular_pipelines.flux3 import Flux3AutoBlocks, Flux3DistilledAutoBlocks

    blocks = (Flux3DistilledAutoBlocks if variant == "distilled" else Flux3AutoBlocks)()
    blocks.sub_blocks.pop("prompt_upsampler")
    return blocks


def write_folder(path: Path, variant: str) -> Path:
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux3Transformer2DModel

    processor = tiny_processor()
    torch.manual_seed(0)
    transformer = Flux3Transformer2DModel(in_channels=32, cond_in_channels=32, num_layers=2, num_single_layers=2,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=128,
                                          timestep_channels=32, axes_dims_rope=(4, 4, 4, 4),
                                          flow_map=variant == "distilled")
    vae = AutoencoderKLFlux2(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                             block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=8,
                             norm_num_groups=8, sample_size=64, batch_norm_eps=1e-3)
    with torch.no_grad():  # non-trivial BatchNorm statistics: the latents' normalisation is visible
        vae.bn.running_mean.copy_(torch.randn(32) * 0.3)
        vae.bn.running_var.copy_(torch.rand(32) + 0.5)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=6.93)
    pipe = blocks_of(variant).init_pipeline()
    pipe.update_components(transformer=transformer, vae=vae, text_encoder=tiny_qwen3_vl(processor.tokenizer),
                           tokenizer=processor)
    pipe.save_pretrained(str(path), overwrite_modular_index=True)
    scheduler.save_pretrained(path / "scheduler")  # a from_config component: the modular index does not keep it
    return path


def load(folder: Path, variant: str, dtype=torch.float32):
    from diffusers.guiders import ClassifierFreeGuidance

    pipe = blocks_of(variant).init_pipeline(str(folder))
    pipe.load_components(torch_dtype=dtype)
    if variant == "base":
        pipe.update_components(guider=ClassifierFreeGuidance(guidance_scale=1.0))  # CFG off: one forward
    return pipe


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux3")
    return {v: write_folder(root / v, v) for v in ("base", "distilled")}


class ModularFirstStep:
    """A modular pipeline called the way pipeline_check calls a pipeline: its scheduler swapped, the latents,
    size and steps as arguments."""

    def __init__(self, modular):
        self.modular = modular

    @property
    def transformer(self):
        return self.modular.transformer

    @property
    def scheduler(self):
        return self.modular.scheduler

    @scheduler.setter
    def scheduler(self, scheduler):
        self.modular.update_components(scheduler=scheduler)

    def __call__(self, prompt, latents, num_inference_steps, height, width, output_type=None):
        return self.modular(prompt=prompt, latents=latents, num_inference_steps=num_inference_steps, height=height,
                            width=width, output="latents")


def _blocks(tr):
    return list(tr.mode_blocks["image"]) + list(tr.single_transformer_blocks)


@pytest.fixture(scope="module")
def checks(folders):
    # per-mode image blocks return the image tokens; single blocks return (text, image)
    return {v: PipelineCheck(pipe=ModularFirstStep(load(folders[v], v)), blocks=_blocks, image_tokens=last_element)
            for v in folders}


@pytest.mark.parametrize("variant", ["base", "distilled"])
@pytest.mark.parametrize("conditioning", ["empty", "caption"])
def test_maps_equal_the_flux3_modular_pipeline(folders, checks, tmp_path, variant, conditioning):
    ds = ShapeWorld("train", size=2)  # 64 px -> 16x16 VAE latents -> patchified 2x2 -> 8x8 tokens
    worst = assert_matches_pipeline(folders[variant], checks[variant], tmp_path, layers=LAYERS,
                                    conditioning=conditioning, dataset=ds)
    print(f"{variant} {conditioning}: worst relative difference {worst:.2e}")


@pytest.mark.parametrize("variant", ["base", "distilled"])
def test_bfloat16_maps_equal_the_flux3_modular_pipeline_exactly(folders, tmp_path, variant):
    """In the model's dtype the timestep is cast as the denoiser casts it ((t / 1000) in the model's dtype)."""
    check = PipelineCheck(pipe=ModularFirstStep(load(folders[variant], variant, torch.bfloat16)), blocks=_blocks,
                          image_tokens=last_element)
    worst = assert_matches_pipeline(folders[variant], check, tmp_path, layers=LAYERS, conditioning="caption",
                                    dataset=ShapeWorld("train", size=1), dtype="bfloat16")
    assert worst == 0.0


def test_the_pipeline_is_chosen_from_the_flow_map(folders):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    base = DiffusersDiTExtractor(folders["base"], timesteps=[0], layers=[0], device="cpu")
    distilled = DiffusersDiTExtractor(folders["distilled"], timesteps=[0], layers=[0], device="cpu")
    assert base.family.pipeline_class == "Flux3ModularPipeline"
    assert distilled.family.pipeline_class == "Flux3DistilledModularPipeline"
    assert distilled.family.describe()["target_timestep"] == 0.0
    assert base.text_source == "pipeline"


def test_latents_are_the_patchified_vae_mode_batch_normalised(folders):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folders["base"], timesteps=[0], layers=[0], device="cpu")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    vae = ex.vae
    z = vae.encode(images * 2 - 1).latent_dist.mode()  # (2, 8, 16, 16)
    b, c, h, w = z.shape
    z = z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
    mean = vae.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + 1e-3)
    assert mean.abs().max() > 0.1 and (std - 1).abs().max() > 0.1
    latents = ex.encode_images(images)
    assert latents.shape == (2, 32, 8, 8) == (2, *ex.family.latent_shape(64, 64))
    torch.testing.assert_close(latents, (z - mean) / std)


def test_sigma_is_the_static_shift_of_the_scheduler(folders, tmp_path):
    """sigma = k u / (1 + (k - 1) u), k = 6.93, from the folder's scheduler or, without one, the blocks' default."""
    import shutil

    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    bare = tmp_path / "bare"
    for part in ("transformer", "vae"):
        shutil.copytree(folders["base"] / part, bare / part)
    for folder in (folders["base"], bare):
        ex = DiffusersDiTExtractor(folder, timesteps=[300], layers=[0], device="cpu")
        assert ex.family.mu(64) is None and not ex.schedule.dynamic
        assert ex.schedule.sigma(300) == pytest.approx(6.93 * 0.3 / (1 + 5.93 * 0.3))


def test_prompts_of_different_windows_cannot_share_a_forward(folders):
    from probekit.errors import ProbekitError
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folders["base"], timesteps=[500], layers=[0], device="cpu", conditioning="caption")
    short, long = "a red circle", "a red circle " * 30
    ex.prepare([short, long])
    assert [int(ex._condition(p)["text_len"]) for p in (short, long)] == [80, 160]
    images = torch.rand(2, 3, 64, 64)
    with pytest.raises(ProbekitError, match="windows of \\[80, 160\\] tokens"):
        ex.extract(images, [short, long], [0, 1])
    assert set(ex.extract(images[:1], [long], [0])) == {"t=500/layer=0"}


@pytest.mark.parametrize("variant", ["base", "distilled"])
def test_every_declared_site_extracts(folders, variant):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor
    from probekit.keys import feature_key

    ds = ShapeWorld("train", size=2)
    samples = [ds[i] for i in range(2)]
    images = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1).float() / 255 for s in samples])
    captions = [s.caption for s in samples]
    sites = ["output", "norm1", "attn", "mlp"]
    kwargs = dict(timesteps=[500], layers=LAYERS, device="cpu", conditioning="caption")
    reference = DiffusersDiTExtractor(folders[variant], **kwargs).extract(images, captions, [0, 1])
    ex = DiffusersDiTExtractor(folders[variant], sites=sites, **kwargs)
    assert all(set(kind) == set(sites) for kind in ex.family.sites.values())
    maps = ex.extract(images, captions, [0, 1])
    shapes = ex.feature_shapes((64, 64))
    assert set(maps) == set(shapes)
    for key, value in maps.items():
        assert tuple(value.shape[1:]) == shapes[key] == (32, 8, 8), key
        assert torch.isfinite(value).all()
    for layer in LAYERS:
        key = feature_key(500, layer, "output")
        torch.testing.assert_close(maps[key], reference[key])


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


@pytest.mark.parametrize("variant", ["base", "distilled"])
def test_norm1_is_what_the_blocks_attention_receives(folders, variant):
    """norm1 is the modulated input the block hands its attention: the image per-mode blocks' image tokens alone,
    the single blocks' joined [text; image] sequence, whose last h*w tokens are the image."""
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor
    from probekit.keys import feature_key

    ds = ShapeWorld("train", size=2)
    samples = [ds[i] for i in range(2)]
    images = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1).float() / 255 for s in samples])
    captions = [s.caption for s in samples]
    timesteps, (gh, gw) = [200, 700], (8, 8)
    ex = DiffusersDiTExtractor(folders[variant], timesteps=timesteps, layers=LAYERS, device="cpu",
                               sites=["output", "norm1"], conditioning="caption")
    blocks = _blocks(ex.transformer)
    seen, maps = attention_inputs({layer: blocks[layer].attn for layer in LAYERS},
                                  lambda: ex.extract(images, captions, [0, 1]))
    for layer in LAYERS:
        assert len(seen[layer]) == 1, layer  # one forward
        tokens = seen[layer][0]
        tokens = tokens if layer == 1 else tokens[:, -gh * gw:]  # per-mode: image alone; single: [text; image]
        for j, t in enumerate(timesteps):
            reference = tokens[j::len(timesteps)].reshape(2, gh, gw, -1).permute(0, 3, 1, 2)  # sample-major rows
            norm1 = maps[feature_key(t, layer, "norm1")]
            torch.testing.assert_close(norm1, reference)
            assert not torch.allclose(norm1, maps[feature_key(t, layer, "output")])
