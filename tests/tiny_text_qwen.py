"""Tiny Qwen2.5-VL and Qwen3-VL models (text and vision towers), a Qwen3-VL processor and a character-level tokenizer
with Qwen's chat specials, for the Qwen-Image, Qwen-Image 2.1 and HunyuanImage pipeline folders (nothing is
downloaded)."""

from __future__ import annotations

import torch

from tiny_text import char_tokenizer

QWEN_SPECIALS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                 "<|video_pad|>")

#: Qwen2.5-VL's own chat template, reduced to text messages (what apply_chat_template renders for them).
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


def tiny_qwen25_vl(tokenizer, *, hidden: int = 16, layers: int = 2, seed: int = 0):
    """A Qwen2_5_VLForConditionalGeneration over ``tokenizer``'s vocabulary, with a one-layer vision tower."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in QWEN_SPECIALS}
    torch.manual_seed(seed)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                         rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default"},
                         max_position_embeddings=tokenizer.model_max_length, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None, eos_token_id=ids["<|im_end|>"]),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=hidden,
                           fullatt_block_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


def tiny_qwen3_vl(tokenizer, *, hidden: int = 16, layers: int = 2, seed: int = 0):
    """A Qwen3VLForConditionalGeneration over ``tokenizer``'s vocabulary, with a one-layer vision tower."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in QWEN_SPECIALS}
    torch.manual_seed(seed)
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                         rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "mrope_interleaved": True},
                         max_position_embeddings=tokenizer.model_max_length, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=hidden,
                           deepstack_visual_indexes=[0], num_position_embeddings=16),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    return Qwen3VLForConditionalGeneration(cfg).eval()


def qwen3_vl_processor(tokenizer):
    """Qwen3-VL's processor (image and video processors at their defaults) over ``tokenizer``, with the chat
    template."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    return Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(patch_size=16, merge_size=2), tokenizer=tokenizer,
                            video_processor=Qwen3VLVideoProcessor(), chat_template=QWEN_CHAT_TEMPLATE)
