"""FLUX.2 (Flux2Transformer2DModel) against its own pipelines: a tiny dev-style Flux2Pipeline (Mistral3 text
encoder, distilled guidance) and a tiny Flux2KleinPipeline (Qwen3 text encoder, no guidance, CFG off), written
and loaded back offline."""

import math

import pytest
import torch

from pipeline_check import PipelineCheck, assert_matches_pipeline, last_element, last_tokens
from probekit.datasets.shapeworld import ShapeWorld
from tiny_text import char_tokenizer

LAYERS = [1, 3]  # a joint block and a single block
GUIDANCE = 3.5  # the extractor's default distilled guidance

# Both templates render content given as a string (Klein) or as a list of {"type": "text"} parts (dev).
_CONTENT = ("{%- if m['content'] is string -%}{{ m['content'] }}{%- else -%}"
            "{%- for c in m['content'] -%}{{ c['text'] }}{%- endfor -%}{%- endif -%}")
MISTRAL_TEMPLATE = "{%- for m in messages -%}[{{ m['role'] }}]" + _CONTENT + "{%- endfor -%}"
QWEN_TEMPLATE = ("{%- for m in messages -%}<|im_start|>{{ m['role'] }}\n" + _CONTENT + "<|im_end|>\n{%- endfor -%}"
                 "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}")


def tiny_mistral3(tok, hidden=16, layers=30):
    """Mistral3ForConditionalGeneration: a tiny Mistral text model (30 layers: the pipeline reads hidden states
    10, 20 and 30) and a tiny Pixtral vision tower it never runs."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    torch.manual_seed(1)
    cfg = Mistral3Config(
        text_config=dict(model_type="mistral", vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         max_position_embeddings=1024, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id),
        vision_config=dict(model_type="pixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, head_dim=8, image_size=32, patch_size=16),
        image_token_index=tok.unk_token_id)
    return Mistral3ForConditionalGeneration(cfg).eval()


def tiny_qwen3(tok, hidden=16, layers=27):
    """Qwen3ForCausalLM with 27 layers: the Klein pipeline reads hidden states 9, 18 and 27."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(2)
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
                      pad_token_id=tok.pad_token_id)
    return Qwen3ForCausalLM(cfg).eval()


def tiny_parts(guidance_embeds):
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel

    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(in_channels=32, num_layers=2, num_single_layers=2, attention_head_dim=16,
                                          num_attention_heads=2, joint_attention_dim=48, timestep_guidance_channels=32,
                                          axes_dims_rope=(4, 4, 4, 4), guidance_embeds=guidance_embeds)
    vae = AutoencoderKLFlux2(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                             block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=8,
                             norm_num_groups=8, sample_size=64, batch_norm_eps=1e-3)
    with torch.no_grad():  # non-trivial BatchNorm statistics: the latents' normalisation is visible
        vae.bn.running_mean.copy_(torch.randn(32) * 0.3)
        vae.bn.running_var.copy_(torch.rand(32) + 0.5)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    return {"transformer": transformer, "vae": vae, "scheduler": scheduler}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from diffusers import Flux2KleinPipeline, Flux2Pipeline

    root = tmp_path_factory.mktemp("flux2")
    mistral_tok = char_tokenizer(bos="<s>", eos="</s>", model_max_length=512, chat_template=MISTRAL_TEMPLATE)
    dev = Flux2Pipeline(text_encoder=tiny_mistral3(mistral_tok), tokenizer=mistral_tok, **tiny_parts(True))
    dev.save_pretrained(root / "dev")
    qwen_tok = char_tokenizer(bos=None, eos=None, model_max_length=512, chat_template=QWEN_TEMPLATE,
                              specials=("<|im_start|>", "<|im_end|>"))
    klein = Flux2KleinPipeline(text_encoder=tiny_qwen3(qwen_tok), tokenizer=qwen_tok, **tiny_parts(False))
    klein.save_pretrained(root / "klein")
    return {"dev": root / "dev", "klein": root / "klein"}


def _blocks(tr):
    return list(tr.transformer_blocks) + list(tr.single_transformer_blocks)


@pytest.fixture(scope="module")
def checks(folders):
    from diffusers import Flux2KleinPipeline, Flux2Pipeline

    # joint blocks return (text, image); single blocks return the joined [text; image] sequence
    tokens = {1: last_element, 3: last_tokens}
    dev = PipelineCheck(pipe=Flux2Pipeline.from_pretrained(folders["dev"]), blocks=_blocks, image_tokens=tokens,
                        call=lambda prompt: {"prompt": prompt, "guidance_scale": GUIDANCE})
    # guidance_scale 1 turns Klein's CFG off: one conditional forward
    klein = PipelineCheck(pipe=Flux2KleinPipeline.from_pretrained(folders["klein"]), blocks=_blocks,
                          image_tokens=tokens, call=lambda prompt: {"prompt": prompt, "guidance_scale": 1.0})
    return {"dev": dev, "klein": klein}


@pytest.mark.parametrize("variant", ["dev", "klein"])
@pytest.mark.parametrize("conditioning", ["empty", "caption"])
def test_maps_equal_the_flux2_pipeline(folders, checks, tmp_path, variant, conditioning):
    ds = ShapeWorld("train", size=2)  # 64 px -> 16x16 VAE latents -> patchified 2x2 -> 8x8 tokens
    worst = assert_matches_pipeline(folders[variant], checks[variant], tmp_path, layers=LAYERS,
                                    conditioning=conditioning, dataset=ds, guidance=GUIDANCE)
    print(f"{variant} {conditioning}: worst relative difference {worst:.2e}")


def test_bfloat16_maps_equal_the_flux2_pipeline_exactly(folders, tmp_path):
    """In the model's dtype the timestep is cast as the pipeline casts it (t = 1000 sigma, not sigma)."""
    from diffusers import Flux2Pipeline

    pipe = Flux2Pipeline.from_pretrained(folders["dev"], torch_dtype=torch.bfloat16)
    check = PipelineCheck(pipe=pipe, blocks=_blocks, image_tokens={1: last_element, 3: last_tokens},
                          call=lambda prompt: {"prompt": prompt, "guidance_scale": GUIDANCE})
    worst = assert_matches_pipeline(folders["dev"], check, tmp_path, layers=LAYERS, conditioning="caption",
                                    dataset=ShapeWorld("train", size=1), guidance=GUIDANCE, dtype="bfloat16")
    assert worst == 0.0


def test_the_pipeline_is_chosen_from_the_guidance_embedder(folders):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    dev = DiffusersDiTExtractor(folders["dev"], timesteps=[0], layers=[0], device="cpu")
    klein = DiffusersDiTExtractor(folders["klein"], timesteps=[0], layers=[0], device="cpu")
    assert (dev.family.pipeline_class, dev.family.guidance_input) == ("Flux2Pipeline", True)
    assert (klein.family.pipeline_class, klein.family.guidance_input) == ("Flux2KleinPipeline", False)
    assert klein.config()["guidance"] is None


@pytest.mark.parametrize("variant", ["dev", "klein"])
def test_latents_are_the_patchified_vae_mode_batch_normalised(folders, variant):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folders[variant], timesteps=[0], layers=[0], device="cpu")
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


def test_mu_is_the_empirical_mu_at_the_default_number_of_steps(folders):
    """mu = m200 + (50 - 200) (m200 - m10) / 190 for N <= 4300 tokens (m10, m200: lines in N); a2 N + b2 above."""
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folders["dev"], timesteps=[300], layers=[0], device="cpu")
    assert ex.family.describe()["mu_num_inference_steps"] == 50
    for tokens in (16, 1024, 4096, 8192):
        m200, m10 = 0.00016927 * tokens + 0.45666666, 8.73809524e-05 * tokens + 1.89833333
        mu = m200 + (50 - 200) * (m200 - m10) / 190 if tokens <= 4300 else m200
        assert ex.family.mu(tokens) == pytest.approx(mu)
        assert ex.schedule.sigma(300, mu) == pytest.approx(math.exp(mu) / (math.exp(mu) + 1 / 0.3 - 1), rel=1e-5)


@pytest.mark.parametrize("variant", ["dev", "klein"])
def test_every_declared_site_extracts(folders, variant):
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor
    from probekit.keys import feature_key

    ds = ShapeWorld("train", size=2)
    samples = [ds[i] for i in range(2)]
    images = torch.stack([torch.from_numpy(s.image).permute(2, 0, 1).float() / 255 for s in samples])
    captions = [s.caption for s in samples]
    plain = DiffusersDiTExtractor(folders[variant], timesteps=[500], layers=LAYERS, device="cpu",
                                  conditioning="caption")
    reference = plain.extract(images, captions, [0, 1])
    kinds = plain.family.block_kinds()
    for layer in LAYERS:
        sites = list(plain.family.sites[kinds[layer]])
        assert "norm1" in sites  # joint and single blocks alike
        ex = DiffusersDiTExtractor(folders[variant], timesteps=[500], layers=[layer], device="cpu", sites=sites,
                                   conditioning="caption")
        maps = ex.extract(images, captions, [0, 1])
        shapes = ex.feature_shapes((64, 64))
        assert set(maps) == set(shapes)
        for key, value in maps.items():
            assert tuple(value.shape[1:]) == shapes[key], key
            assert torch.isfinite(value).all()
        key = feature_key(500, layer, "output")
        torch.testing.assert_close(maps[key], reference[key])
    assert shapes[feature_key(500, 3, "mlp")][0] == 3 * 32  # the single blocks' SwiGLU hidden layer


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


@pytest.mark.parametrize("variant", ["dev", "klein"])
def test_norm1_is_what_the_blocks_attention_receives(folders, variant):
    """norm1 is the modulated input the block hands its attention: the joint blocks' image stream alone, the single
    blocks' joined [text; image] sequence, whose last h*w tokens are the image."""
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
        tokens = tokens if layer == 1 else tokens[:, -gh * gw:]  # joint: image stream; single: [text; image]
        for j, t in enumerate(timesteps):
            reference = tokens[j::len(timesteps)].reshape(2, gh, gw, -1).permute(0, 3, 1, 2)  # sample-major rows
            norm1 = maps[feature_key(t, layer, "norm1")]
            torch.testing.assert_close(norm1, reference)
            assert not torch.allclose(norm1, maps[feature_key(t, layer, "output")])


@pytest.mark.parametrize("variant", ["dev", "klein"])
def test_concepts_are_their_own_tokens_placed_where_they_sit_and_leave_the_image_stream_alone(folders, variant):
    """A concept is the mean of its own sub-tokens in its own encoded prompt (chat template included), rotated by
    the text id of its last one; the stream follows the shared text modulation; the stored features are
    bit-identical with it running; maps are a softmax over concepts at temperature 1000 of the mean scores."""
    from probekit.extractors.concept_attention import ConceptAttentionExtractor
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folders[variant], timesteps=[300, 700], layers=[1], device="cpu")
    ca = ConceptAttentionExtractor(ex, ["a", "red"])
    pipe = ex._text_pipeline()
    seen = {}
    hook = pipe.text_encoder.register_forward_pre_hook(
        lambda m, a, k: seen.__setitem__("ids", k["input_ids"][0].tolist()), with_kwargs=True)
    with torch.no_grad():
        emb, text_ids = pipe.encode_prompt(prompt=["red"])
    hook.remove()
    tok = pipe.tokenizer
    red = tok("red", add_special_tokens=False)["input_ids"]
    start = max(i for i in range(len(seen["ids"]) - 2) if seen["ids"][i:i + 3] == red)
    text = ca.text
    assert text.token_counts == [1, 3] and ca.concept_layers == [0, 1]  # the last three joint blocks: both here
    torch.testing.assert_close(text.stream[1], emb[0, start:start + 3].mean(0))
    torch.testing.assert_close(text.positions[1], text_ids[0, start + 2])
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    plain = ex.extract(images, [""], [0])["t=300/layer=1"]
    got = {}
    hook = ex.transformer.transformer_blocks[1].register_forward_hook(
        lambda m, a, o: None if "image" in got else got.__setitem__("image", o[1].clone()))
    maps = ca.extract(images, [""], [0])
    hook.remove()
    h, w = plain.shape[-2:]
    assert torch.equal(got["image"][:1].reshape(1, h, w, -1).permute(0, 3, 1, 2), plain)  # row 0: t=300
    torch.testing.assert_close(maps["concepts=output"].sum(1), torch.ones(1, h, w))
    assert ca.config()["concept_definition"]["temperature"] == 1000.0


def test_concepts_equal_to_the_text_tokens_reproduce_the_text_stream(folders):
    """Fed the prompt's own embedded tokens at their own rotary positions, the concept stream follows the text
    stream through the shared modulation exactly: its maps are the text x image attention outputs before their
    projections, in both joint blocks."""
    from probekit.extractors.concept_attention import ConceptAttention
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folders["dev"], timesteps=[500], layers=[0], conditioning="caption", device="cpu")
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    inputs = ex.model_inputs(images, ["a red circle"], [0])
    tr = ex.transformer
    blocks = list(tr.transformer_blocks)
    before = {}
    hooks = []
    for i, b in enumerate(blocks):
        hooks.append(b.attn.to_out[0].register_forward_pre_hook(
            lambda m, a, i=i: before.setdefault(i, {}).__setitem__("image", a[0].clone())))
        hooks.append(b.attn.to_add_out.register_forward_pre_hook(
            lambda m, a, i=i: before.setdefault(i, {}).__setitem__("text", a[0].clone())))
    with torch.no_grad():
        ex.run_forward(inputs)
        for h in hooks:
            h.remove()
        text = inputs.cond["encoder_hidden_states"]
        ids = ex.family.pipeline._prepare_text_ids(text)[0]
        ca = ConceptAttention(tr, blocks, [0, 1], ex.family.concept_definition, ex.family.concept_stream)
        run = ca.run(tr.context_embedder(text), lambda: ex.run_forward(inputs), rotary=tr.pos_embed(ids))
        ca.remove()
    for layer in (0, 1):
        expected = torch.einsum("bcd,bnd->bcn", before[layer]["text"], before[layer]["image"])
        torch.testing.assert_close(run.maps["output"][layer], expected, rtol=1e-4, atol=1e-4)
