"""Caption conditioning through a real (tiny) diffusers pipeline folder, offline.

The folder is a StableDiffusion3Pipeline saved with `save_pretrained`: tiny SD3 transformer, tiny VAE, flow
scheduler, two tiny CLIP text encoders (CLIP-L / CLIP-G stand-ins) with a CLIP BPE tokenizer whose vocab and
merges are written here, and no T5 (text_encoder_3 = tokenizer_3 = None).

Shapes: each CLIP gives (1, 64, 16) hidden states (64 = tokenizer max length); encode_prompt concatenates them
to width 32, pads to the T5 width (the transformer's joint_attention_dim = 32 when there is no T5) and appends
256 zero T5 tokens, so encoder_hidden_states is (1, 64 + 256, 32). The pooled embedding is the two 8-d CLIP projections: 16.
"""

import json

import numpy as np
import pytest
import torch

from probekit.datasets.shapeworld import ShapeWorld
from probekit.extractors.diffusers_dit import DiffusersDiTExtractor
from probekit.extractors.runner import extract_dataset
from probekit.store import FeatureReader

CLIP_HIDDEN, CLIP_PROJ, MAX_TOKENS = 16, 8, 64  # 64 tokens: ShapeWorld captions fit untruncated
INNER = 16  # SD3 inner dim = heads * head_dim = caption_projection_dim: the stored channel count
TIMESTEPS, LAYERS = [0, 500], [0, 1]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode table (the alphabet of byte-level BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _write_clip_bpe(folder) -> tuple[str, str, dict[str, int]]:
    """A small CLIP BPE vocabulary: every byte (bare and word-final), a few merges, the two specials."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = ["r e", "re d</w>", "a n", "an d</w>", "g r", "gr e", "gre e", "gree n</w>", "c i", "ci r"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return str(folder / "vocab.json"), str(folder / "merges.txt"), vocab


@pytest.fixture(scope="module")
def sd3_pipeline(tmp_path_factory):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    root = tmp_path_factory.mktemp("sd3-pipeline")
    vocab_file, merges_file, vocab = _write_clip_bpe(root / "bpe")
    tokenizer = CLIPTokenizer(vocab=vocab_file, merges=merges_file, model_max_length=MAX_TOKENS)
    eos = vocab["<|endoftext|>"]
    assert tokenizer("a red").input_ids == [vocab["<|startoftext|>"], vocab["a</w>"], vocab["red</w>"], eos]

    def clip(seed):
        torch.manual_seed(seed)
        cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=CLIP_HIDDEN, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=MAX_TOKENS, projection_dim=CLIP_PROJ,
                             bos_token_id=vocab["<|startoftext|>"], eos_token_id=eos, pad_token_id=eos)
        return CLIPTextModelWithProjection(cfg).eval()

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                        num_attention_heads=2, joint_attention_dim=2 * CLIP_HIDDEN,
                                        caption_projection_dim=INNER, pooled_projection_dim=2 * CLIP_PROJ,
                                        out_channels=4, pos_embed_max_size=16)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                        sample_size=64)
    pipe = StableDiffusion3Pipeline(transformer=transformer, vae=vae,
                                    scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
                                    text_encoder=clip(1), tokenizer=tokenizer, text_encoder_2=clip(2),
                                    tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)
    folder = root / "pipe"
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["text_encoder_3"] == [None, None] and index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    return folder


@pytest.fixture(scope="module")
def reference_pipe(sd3_pipeline):
    """The saved folder loaded back whole by diffusers itself, the way a user loads SD3 without T5."""
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(sd3_pipeline, text_encoder_3=None, tokenizer_3=None)


@pytest.fixture(scope="module")
def captioned(sd3_pipeline):
    return DiffusersDiTExtractor(sd3_pipeline, timesteps=TIMESTEPS, layers=LAYERS, conditioning="caption", seed=3,
                                 device="cpu")


@pytest.fixture(scope="module")
def uncaptioned(sd3_pipeline):
    return DiffusersDiTExtractor(sd3_pipeline, timesteps=TIMESTEPS, layers=LAYERS, conditioning="empty", seed=3,
                                 device="cpu")


@pytest.fixture(scope="module")
def ds():
    return ShapeWorld("train", size=2)  # 64 px -> 16x16 latents -> 8x8 tokens


def _images(ds, idx):
    return torch.from_numpy(np.stack([ds[i].image for i in idx])).permute(0, 3, 1, 2).float() / 255.0


def test_pipeline_folder_loads_offline_with_its_text_encoders(captioned, uncaptioned):
    for ex in (captioned, uncaptioned):
        cfg = ex.config()
        assert cfg["text_encoder"] == "pipeline"
        assert cfg["family"] == "sd3" and cfg["latent_space"] == "vae" and cfg["num_blocks"] == 2
        assert not any("no text encoder" in n for n in ex.notes())
    pipe = captioned._text_pipeline()
    assert type(pipe).__name__ == "StableDiffusion3Pipeline"
    # Text side only: neither the transformer nor the VAE is loaded with the text encoders.
    assert pipe.vae is None and pipe.text_encoder_3 is None and not isinstance(pipe.transformer, torch.nn.Module)
    assert pipe.text_encoder.config.hidden_size == CLIP_HIDDEN


def test_empty_conditioning_is_the_pipelines_own_empty_prompt_encoding(uncaptioned, reference_pipe, ds):
    cond = uncaptioned._condition("")
    with torch.no_grad():
        emb, _, pooled, _ = reference_pipe.encode_prompt("", "", "", device=torch.device("cpu"),
                                                         do_classifier_free_guidance=False)
    assert emb.shape == (1, MAX_TOKENS + 256, 2 * CLIP_HIDDEN) and pooled.shape == (1, 2 * CLIP_PROJ)
    torch.testing.assert_close(cond["encoder_hidden_states"], emb, rtol=0, atol=0)
    torch.testing.assert_close(cond["pooled_projections"], pooled, rtol=0, atol=0)
    # A real encoding, not the zero "null" condition used when a folder has no text encoder.
    assert emb[:, :MAX_TOKENS].abs().sum() > 0 and pooled.abs().sum() > 0
    # Captions are ignored: both samples get the empty-prompt condition (rows of one batch can differ by
    # float rounding only).
    images = _images(ds, [0, 0])
    feats = uncaptioned.extract(images, [ds[0].caption, ds[1].caption], [0, 0])
    for key, f in feats.items():
        torch.testing.assert_close(f[0], f[1], rtol=0, atol=1e-5)


def test_captions_change_the_features(captioned, uncaptioned, reference_pipe, ds):
    cap_a, cap_b = ds[0].caption, ds[1].caption
    assert cap_a != cap_b
    cond_a, cond_b = captioned._condition(cap_a), captioned._condition(cap_b)
    with torch.no_grad():
        ref_emb, _, ref_pooled, _ = reference_pipe.encode_prompt(cap_b, cap_b, cap_b, device=torch.device("cpu"),
                                                                 do_classifier_free_guidance=False)
    torch.testing.assert_close(cond_b["encoder_hidden_states"], ref_emb, rtol=0, atol=0)
    torch.testing.assert_close(cond_b["pooled_projections"], ref_pooled, rtol=0, atol=0)
    assert not torch.allclose(cond_a["encoder_hidden_states"], cond_b["encoder_hidden_states"])
    assert not torch.allclose(cond_a["pooled_projections"], cond_b["pooled_projections"])
    # Same image and same noise (same index) three times; only the caption differs in the middle row.
    images = _images(ds, [0, 0, 0])
    feats = captioned.extract(images, [cap_a, cap_b, cap_a], [0, 0, 0])
    assert set(feats) == set(captioned.feature_keys())
    for key, f in feats.items():
        assert f.shape == (3, INNER, 8, 8)
        torch.testing.assert_close(f[0], f[2], rtol=0, atol=1e-5)  # rows differ by batched-matmul rounding only
        assert (f[0] - f[1]).abs().max() > 1e-2, key
    # Caption "" through the captioned extractor is exactly what conditioning="empty" computes.
    empty = uncaptioned.extract(images[:2], [cap_a, cap_b], [0, 0])
    via_caption = captioned.extract(images[:2], ["", ""], [0, 0])
    for key in feats:
        torch.testing.assert_close(empty[key], via_caption[key], rtol=0, atol=0)
        assert (empty[key][0] - feats[key][0]).abs().max() > 1e-2, key


def test_extract_dataset_stores_caption_conditioned_features(captioned, ds, tmp_path):
    path = extract_dataset(captioned, ds, tmp_path / "f.h5", progress=False)
    direct = captioned.extract(_images(ds, [0, 1]), [ds[0].caption, ds[1].caption], [0, 1])
    with FeatureReader(path) as r:
        assert sorted(r.keys) == sorted(f"t={t}/layer={layer}" for t in TIMESTEPS for layer in LAYERS)
        for key in r.keys:
            assert r.shape(key) == (INNER, 8, 8)
            stored = r.read(key, range(2))
            assert stored.shape == (2, INNER, 8, 8) and np.isfinite(stored).all()
            np.testing.assert_allclose(stored, direct[key].numpy(), rtol=4e-3, atol=4e-3)
        prov = r.provenance["extractor"]
        assert prov["conditioning"] == "caption" and prov["text_encoder"] == "pipeline"
        assert r.captions() == [ds[0].caption, ds[1].caption]
