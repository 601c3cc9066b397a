"""A tiny Qwen3-VL (``Qwen3VLModel``: text and vision towers) and a character-level tokenizer with Qwen's chat
specials, for the Krea 2 and Ideogram 4 pipeline folders (nothing is downloaded)."""

from __future__ import annotations

import torch

from tiny_text import char_tokenizer

QWEN_SPECIALS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                 "<|video_pad|>")

#: Qwen3-VL's chat template reduced to text messages (string or typed-part content, as the pipelines send).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def qwen_tokenizer(model_max_length: int = 4096):
    """Character-level, no start/end tokens added (as Qwen2Tokenizer), padding with <|endoftext|>."""
    return char_tokenizer(bos=None, eos=None, pad="<|endoftext|>", specials=QWEN_SPECIALS,
                          model_max_length=model_max_length, chat_template=QWEN_CHAT_TEMPLATE)


def tiny_qwen3_vl(tokenizer, *, hidden: int = 16, layers: int = 2, seed: int = 0):
    """A ``Qwen3VLModel`` over ``tokenizer``'s vocabulary (head_dim 8, interleaved mRoPE), one-layer vision tower."""
    from transformers import Qwen3VLConfig, Qwen3VLModel

    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in QWEN_SPECIALS}
    torch.manual_seed(seed)
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                          "mrope_interleaved": True},
                         max_position_embeddings=tokenizer.model_max_length, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=hidden,
                           num_position_embeddings=16, deepstack_visual_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    return Qwen3VLModel(cfg).eval()
