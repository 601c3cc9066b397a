"""Prompt conditioning from a plain transformers text encoder + tokenizer saved beside the transformer.

A folder laid out as ``transformer/``, ``text_encoder/``, ``tokenizer/`` (no diffusers pipeline class) is
conditioned as an MM-DiT expects: the encoder's last hidden states are the text tokens
(``encoder_hidden_states``) and its pooled output is the global vector (``pooled_projections``). The shipped
ShapeWorld MM-DiT uses this layout; training, sampling and extraction all go through this one class.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch



class TextConditioner(torch.nn.Module):
    def __init__(self, tokenizer, text_encoder, max_length: int | None = None):
        super().__init__()
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_length = int(max_length or tokenizer.model_max_length)

    @classmethod
    def from_folder(cls, root: str | Path, dtype: torch.dtype = torch.float32) -> "TextConditioner":
        from transformers import AutoModel, AutoTokenizer

        from probekit.models.loading import load_pretrained

        root = Path(root)
        tokenizer = load_pretrained(AutoTokenizer, root / "tokenizer", "tokenizer")
        encoder = load_pretrained(AutoModel, root / "text_encoder", "text encoder").to(dtype)
        return cls(tokenizer, encoder.eval().requires_grad_(False))

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt")
        return {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"]}

    def forward(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        device = next(self.text_encoder.parameters()).device
        tok = {k: v.to(device) for k, v in self.tokenize(prompts).items()}
        out = self.text_encoder(**tok)
        pooled = getattr(out, "text_embeds", None)
        if pooled is None:
            pooled = out.pooler_output
        return {"encoder_hidden_states": out.last_hidden_state, "pooled_projections": pooled}

    encode = forward
