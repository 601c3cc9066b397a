"""Tiny text encoders and tokenizers written in the tests (nothing is downloaded), for DiT pipeline folders.

The tokenizer is character-level (every printable ASCII character is a token, plus the specials a model family
uses), built with the `tokenizers` library and wrapped in transformers' `PreTrainedTokenizerFast`, so that it
saves and loads like any tokenizer folder. Character-level keeps every prompt, chat template included, many
tokens long, so that template-dropping pipelines (Qwen-Image drops the system prompt's tokens) still see the
caption. ``bos`` decides whether a start token is added (CLIP-style) or not (T5-style).
"""

from __future__ import annotations

import string

import torch

CHARS = [c for c in string.printable if c not in "\x0b\x0c\r"]


def char_tokenizer(*, bos: str | None = None, eos: str | None = "</s>", pad: str = "<pad>", unk: str = "<unk>",
                   model_max_length: int = 64, specials: tuple[str, ...] = (), chat_template: str | None = None,
                   padding_side: str = "right"):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    names = [t for t in (pad, unk, bos, eos, *specials) if t is not None]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(names + CHARS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    single = " ".join(x for x in (bos, "$A", eos) if x)
    tok.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[(t, vocab[t]) for t in (bos, eos) if t])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk,
                                  model_max_length=model_max_length, padding_side=padding_side,
                                  additional_special_tokens=list(specials) or None)
    if chat_template is not None:
        out.chat_template = chat_template
    return out


def token_id(tokenizer, token: str) -> int:
    return tokenizer.convert_tokens_to_ids(token)


def tiny_clip(tokenizer, *, hidden: int = 16, projection: int | None = 8, seed: int = 0):
    """A CLIP text model (with a projection head when ``projection`` is given) over ``tokenizer``'s vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
                         projection_dim=projection or hidden, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)).eval()


def tiny_t5(tokenizer, *, d_model: int = 32, seed: int = 0, umt5: bool = False):
    """A T5 (or UMT5) encoder over ``tokenizer``'s vocabulary."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    config_cls, model_cls = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    cfg = config_cls(vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=2,
                     relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
                     eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    return model_cls(cfg).eval()
