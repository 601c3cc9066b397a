"""Concept attention on tiny SD3 and FLUX MM-DiTs with a text encoder, offline."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from probekit.cli import cli
from probekit.datasets import load_manifest
from probekit.errors import ProbekitError
from probekit.extractors.concept_attention import ConceptAttention, ConceptAttentionExtractor
from probekit.extractors.diffusers_dit import DiffusersDiTExtractor
from probekit.backbone.model import build_tokenizer, save_folder
from probekit.store import FeatureReader



@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from helpers import make_tiny_shapeworld_mmdit

    root = tmp_path_factory.mktemp("concepts")
    manifest, _ = load_manifest("shapeworld")
    out = {"sd3": make_tiny_shapeworld_mmdit(root / "sd3", num_layers=3, seed=1)}
    tok = build_tokenizer(manifest)
    torch.manual_seed(2)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=32, pad_token_id=0,
                                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    flux = FluxTransformer2DModel(patch_size=1, in_channels=12, num_layers=2, num_single_layers=1, attention_head_dim=16,
                                  num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                  axes_dims_rope=(4, 6, 6))
    out["flux"] = save_folder(root / "flux", flux, text, tok)
    return out


def _inputs(ex, n=2):
    images = torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return ex.model_inputs(images, ["a red circle"] * n, list(range(n)))


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_the_transformer_output_is_bit_identical_with_concepts(folders, family):
    ex = DiffusersDiTExtractor(folders[family], timesteps=[300, 800], layers=[0], conditioning="caption",
                               device="cpu")
    inputs = _inputs(ex)
    outputs = []  # this test's own capture: nothing carries over from another test or a failed run
    hook = ex.transformer.register_forward_hook(lambda m, a, o: outputs.append(o[0].clone()))
    try:
        with torch.no_grad():
            ex.run_forward(inputs)
            ca = ConceptAttentionExtractor(ex, ["circle", "square", "background"])
            tokens = ex.transformer.context_embedder(ca.text.stream).unsqueeze(0).expand(inputs.x_t.shape[0], -1, -1)
            run = ca.attention.run(tokens, lambda: ex.run_forward(inputs), pooled=ca.text.pooled, stop_early=False)
            ca.close()
            ex.run_forward(inputs)
    finally:
        hook.remove()
    assert run.maps["output"], "the concept stream did not run"
    assert len(outputs) == 3
    assert torch.equal(outputs[0], outputs[1]), "concepts changed the transformer output"
    assert torch.equal(outputs[0], outputs[2]), "processors were not restored"


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_concepts_equal_to_the_text_tokens_reproduce_the_text_stream(folders, family):
    """Fed the prompt's own embedded tokens (and, where the family modulates by the concepts' pooled embedding,
    the prompt's pooled one), the concept stream must follow the text stream exactly, so the 'output' maps equal
    the family's definition applied to the model's own attention vectors: text x image outputs after their
    projections (FLUX), or before them with the text vectors L2-normalised (SD3)."""
    ex = DiffusersDiTExtractor(folders[family], timesteps=[500], layers=[0], conditioning="caption", device="cpu")
    definition = ex.family.concept_definition
    inputs = _inputs(ex)
    tr = ex.transformer
    blocks = list(tr.transformer_blocks)
    projected, before = {}, {}
    hooks = []
    for i, b in enumerate(blocks[:2]):
        hooks.append(b.attn.register_forward_hook(
            lambda m, a, o, i=i: projected.__setitem__(i, (o[1].clone(), o[0].clone()))))
        hooks.append(b.attn.to_out[0].register_forward_pre_hook(
            lambda m, a, i=i: before.setdefault(i, {}).__setitem__("image", a[0].clone())))
        hooks.append(b.attn.to_add_out.register_forward_pre_hook(
            lambda m, a, i=i: before.setdefault(i, {}).__setitem__("text", a[0].clone())))
    with torch.no_grad():
        ex.run_forward(inputs)
        for h in hooks:
            h.remove()
        ca = ConceptAttention(tr, blocks, [0, 1], definition)
        text_tokens = tr.context_embedder(inputs.cond["encoder_hidden_states"])
        run = ca.run(text_tokens, lambda: ex.run_forward(inputs), pooled=inputs.cond["pooled_projections"][:1])
        ca.remove()
    for layer in (0, 1):
        if definition.vectors == "projected":
            text_vec, image_vec = projected[layer]
        else:
            text_vec, image_vec = before[layer]["text"], before[layer]["image"]
        if definition.normalise_concepts:
            text_vec = text_vec / (text_vec.norm(dim=-1, keepdim=True) + 1e-8)
        expected = torch.einsum("bcd,bnd->bcn", text_vec, image_vec)
        torch.testing.assert_close(run.maps["output"][layer], expected, rtol=1e-4, atol=1e-4)


def test_extractor_stores_normalised_concept_maps_and_zero_shot_scores_them(folders, tmp_path):
    runner = CliRunner()
    out = tmp_path / "c.h5"
    res = runner.invoke(cli, ["extract", "-e", "dit", "--weights", str(folders["sd3"]), "--split", "val",
                              "--limit", "4", "--timesteps", "200,600", "--concept-attention", "--concept-layers",
                              "0,1", "--device", "cpu", "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    with FeatureReader(out) as r:
        assert r.keys == ["concepts=output", "concepts=cross"]
        maps = r.read("concepts=output", [0, 1, 2, 3])
        assert maps.shape == (4, 7, 8, 8)  # 7 ShapeWorld classes as concepts, 64 px / patch 8
        np.testing.assert_allclose(maps.sum(1), 1.0, atol=3e-3)  # fp16 storage
        cfg = r.provenance["extractor"]
        assert cfg["concepts"][0] == "background" and cfg["concept_layers"] == [0, 1]
    res = runner.invoke(cli, ["zeroshot", "-f", str(out), "--out", str(tmp_path / "zs")])
    assert res.exit_code == 0, res.output
    import json

    rec = json.loads((tmp_path / "zs" / "result.json").read_text())
    assert rec["probe"]["fusion"] == "zero-shot" and 0 <= rec["main_score"] <= 1
    assert rec["config"]["concepts"] == rec["config"]["classes"]


def test_concept_attention_refuses_what_it_cannot_do(folders, tiny_models):
    ex = DiffusersDiTExtractor(folders["sd3"], timesteps=[500], layers=[0], device="cpu")
    # SD3's definition reads the attention before the output projections, so its context-pre-only last block is
    # read as the reference reads it; a definition on projected vectors cannot read that block.
    assert ConceptAttentionExtractor(ex, ["circle"]).concept_layers == [0, 1, 2]
    from dataclasses import replace

    projected = replace(ex.family.concept_definition, vectors="projected", image_vectors="real")
    with pytest.raises(ProbekitError, match="context-pre-only"):
        ConceptAttention(ex.transformer, list(ex.transformer.transformer_blocks), [2], projected)
    no_text = DiffusersDiTExtractor(tiny_models["sd3"], timesteps=[500], layers=[0], device="cpu")
    with pytest.raises(ProbekitError, match="needs the model's text encoder"):
        ConceptAttentionExtractor(no_text, ["circle"])
    dit = DiffusersDiTExtractor(tiny_models["dit"], timesteps=[500], layers=[0], device="cpu")
    with pytest.raises(ProbekitError, match="needs an MM-DiT"):
        ConceptAttentionExtractor(dit, ["circle"])


def test_concept_maps_as_guidance_channels_for_a_probe(folders, tmp_path):
    runner = CliRunner()
    paths = {}
    for split, n in (("train", 8), ("test", 4)):
        for kind, extra in (("feat", []), ("concept", ["--concept-attention", "--concept-layers", "0,1"])):
            paths[kind, split] = tmp_path / f"{kind}-{split}.h5"
            res = runner.invoke(cli, ["extract", "-e", "dit", "--weights", str(folders["sd3"]), "--split", split,
                                      "--limit", str(n), "--timesteps", "200", "--layers", "1", "--device", "cpu",
                                      "--out", str(paths[kind, split]), "-q", *extra])
            assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["probe", "-f", str(paths["feat", "train"]), "-E", str(paths["feat", "test"]),
                              "--guidance", str(paths["concept", "train"]), "--eval-guidance",
                              str(paths["concept", "test"]), "--timestep", "200", "--layer", "1", "--epochs", "1",
                              "--lrs", "1e-2", "--out", str(tmp_path / "run"), "-q"])
    assert res.exit_code == 0, res.output
    import json

    rec = json.loads((tmp_path / "run" / "result.json").read_text())
    assert rec["probe"]["name"].endswith("-guided")
    assert len(rec["probe"]["guidance_keys"]) == 2
    assert sum(rec["probe"]["in_channels"][k] for k in rec["probe"]["guidance_keys"]) == 14
    from safetensors.torch import load_file

    head = load_file(tmp_path / "run" / "head.safetensors")
    assert head["head.proj.weight"].shape[1] == 32 + 14  # block channels + 2 x 7 concept maps
    res = runner.invoke(cli, ["probe", "-f", str(paths["feat", "train"]), "-E", str(paths["feat", "test"]),
                              "--guidance", str(paths["concept", "train"]), "--timestep", "200", "--layer", "1"])
    assert res.exit_code != 0 and "needed for every split" in res.output
