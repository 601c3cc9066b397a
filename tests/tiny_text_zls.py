"""Tiny decoder-LM text encoders for the Z-Image, Lumina 2 and Sana pipeline tests (nothing is downloaded): a Qwen3
model with a Qwen-style chat template, and a Gemma2 model, over tests/tiny_text.py's character-level tokenizer."""

from __future__ import annotations

import torch

from tiny_text import char_tokenizer

# Qwen3's template reduced to what ZImagePipeline renders: one user turn, then the assistant's header.
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_tokenizer(model_max_length: int = 512):
    return char_tokenizer(eos="<|im_end|>", pad="<|endoftext|>", specials=("<|im_start|>",),
                          chat_template=QWEN_CHAT_TEMPLATE, model_max_length=model_max_length)


def gemma_tokenizer(model_max_length: int = 512, padding_side: str = "right"):
    """Gemma adds <bos> in front and no end token."""
    return char_tokenizer(bos="<bos>", eos=None, pad="<pad>", specials=("<eos>",),
                          model_max_length=model_max_length, padding_side=padding_side)


def tiny_qwen3(tokenizer, *, hidden: int = 16, seed: int = 0):
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                      max_position_embeddings=tokenizer.model_max_length, pad_token_id=tokenizer.pad_token_id)
    return Qwen3Model(cfg).eval()


def tiny_gemma2(tokenizer, *, hidden: int = 16, seed: int = 0):
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(seed)
    cfg = Gemma2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                       max_position_embeddings=tokenizer.model_max_length, sliding_window=64,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    return Gemma2Model(cfg).eval()
