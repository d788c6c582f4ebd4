"""Upstream 2.0's ``HFEmbedder`` (``opensora/models/text/conditioner.py``) with ``transformers``, without ColossalAI.

Line by line as upstream: CLIP when the path contains "openai"; ``T5Tokenizer.from_pretrained(path,
max_length=..., legacy=True)`` / ``CLIPTokenizer.from_pretrained(path, max_length=...)``; the tokenizer called
with truncation and ``padding="max_length"``; ids padded with the pad token to a multiple of ``seq_align``
(counting ``added_tokens``); the model called with ``attention_mask=None``; ``last_hidden_state`` (T5) or
``pooler_output`` (CLIP) returned. (``shardformer`` only fuses dropout + add: nothing in eval.)
"""
from __future__ import annotations

import numpy as np


class HFEmbedderReference:
    def __init__(self, from_pretrained: str, max_length: int, is_clip: bool | None = None):
        import torch
        from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer

        self.is_clip = "openai" in from_pretrained if is_clip is None else is_clip
        self.max_length = max_length
        self.output_key = "pooler_output" if self.is_clip else "last_hidden_state"
        if self.is_clip:
            self.tokenizer = CLIPTokenizer.from_pretrained(from_pretrained, max_length=max_length)
            self.hf_module = CLIPTextModel.from_pretrained(from_pretrained, dtype=torch.float32)
        else:
            self.tokenizer = T5Tokenizer.from_pretrained(from_pretrained, max_length=max_length, legacy=True)
            self.hf_module = T5EncoderModel.from_pretrained(from_pretrained, dtype=torch.float32)
        self.hf_module = self.hf_module.eval().requires_grad_(False)

    def tokenize(self, text, added_tokens: int = 0, seq_align: int = 1):
        import torch

        batch_encoding = self.tokenizer(text, truncation=True, max_length=self.max_length, return_length=False,
                                        return_overflowing_tokens=False, padding="max_length", return_tensors="pt")
        input_ids = batch_encoding["input_ids"]
        seq_len = input_ids.shape[1]
        if (added_tokens + seq_len) % seq_align != 0:
            num_pad_tokens = seq_align - (added_tokens + seq_len) % seq_align
            input_ids = torch.nn.functional.pad(input_ids, (0, num_pad_tokens), value=self.tokenizer.pad_token_id)
        return input_ids

    def __call__(self, text, added_tokens: int = 0, seq_align: int = 1) -> np.ndarray:
        import torch

        input_ids = self.tokenize(text, added_tokens, seq_align)
        with torch.no_grad():
            outputs = self.hf_module(input_ids=input_ids, attention_mask=None, output_hidden_states=False)
        return outputs[self.output_key].numpy()
