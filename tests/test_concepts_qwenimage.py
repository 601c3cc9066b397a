"""Concept attention on Qwen-Image (no reference implementation exists for it): the concept tokens are the
concept's own sub-tokens of its encoded prompt, the stream follows the text stream's txt_mod modulation and rotary
positions exactly, and the image stream is untouched. The tiny pipeline folder is test_family_qwenimage's."""

import torch

from test_family_qwenimage import folder  # noqa: F401 - the tiny QwenImagePipeline folder (a pytest fixture)


def test_concepts_are_their_own_tokens_and_leave_the_image_stream_alone(folder):  # noqa: F811
    from probekit.extractors.concept_attention import ConceptAttentionExtractor
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[300], layers=[1], device="cpu")
    ca = ConceptAttentionExtractor(ex, ["a", "red"])
    pipe = ex._text_pipeline()
    seen = {}
    hook = pipe.text_encoder.register_forward_pre_hook(
        lambda m, a, k: seen.__setitem__("ids", k["input_ids"][0].tolist()), with_kwargs=True)
    with torch.no_grad():
        emb, _ = pipe.encode_prompt(prompt=["red"])
    hook.remove()
    red = pipe.tokenizer("red", add_special_tokens=False)["input_ids"]
    start = max(i for i in range(len(seen["ids"]) - len(red) + 1) if seen["ids"][i:i + len(red)] == red)
    drop = pipe.prompt_template_encode_start_idx
    text = ca.text
    assert text.token_counts == [1, len(red)] and ca.concept_layers == [0, 1, 2]
    torch.testing.assert_close(text.stream[1], emb[0, start - drop:start - drop + len(red)].mean(0))
    assert int(text.positions[1]) == start - drop + len(red) - 1
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    plain = ex.extract(images, [""], [0])["t=300/layer=1"]
    got = {}
    hook = ex.transformer.transformer_blocks[1].register_forward_hook(
        lambda m, a, o: None if "image" in got else got.__setitem__("image", o[1].clone()))
    maps = ca.extract(images, [""], [0])
    hook.remove()
    h, w = plain.shape[-2:]
    assert torch.equal(got["image"].reshape(1, h, w, -1).permute(0, 3, 1, 2), plain)
    torch.testing.assert_close(maps["concepts=output"].sum(1), torch.ones(1, h, w))


def test_concepts_equal_to_the_text_tokens_reproduce_the_text_stream(folder):  # noqa: F811
    """Fed the prompt's own text tokens at their own text positions, the concept stream follows the text stream
    through txt_mod and the text rotary exactly: its maps are the text x image attention outputs before their
    projections in every block."""
    from probekit.extractors.concept_attention import ConceptAttention
    from probekit.extractors.diffusers_dit import DiffusersDiTExtractor

    ex = DiffusersDiTExtractor(folder, timesteps=[500], layers=[0], conditioning="caption", device="cpu")
    inputs = ex.model_inputs(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(8)),
                             ["a red circle"], [0])
    tr = ex.transformer
    blocks = list(tr.transformer_blocks)
    before: dict[int, dict[str, torch.Tensor]] = {}
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
        family = ex.family
        ca = ConceptAttention(tr, blocks, [0, 1, 2], family.concept_definition, family.concept_stream,
                              family.concept_rotary_style)
        rotary = family.concept_rotary(torch.arange(text.shape[1]), inputs.grid)
        run = ca.run(family.embed_text(text), lambda: ex.run_forward(inputs), rotary=rotary)
        ca.remove()
    for layer in (0, 1, 2):
        expected = torch.einsum("bcd,bnd->bcn", before[layer]["text"], before[layer]["image"])
        torch.testing.assert_close(run.maps["output"][layer], expected, rtol=1e-4, atol=1e-4)
