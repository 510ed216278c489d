"""GENIE's factorized token embedding: the sum of one embedding per base-V digit, or a learned mask embedding."""
from __future__ import annotations

import torch
from torch import nn


class FactorizedEmbedding(nn.Module):
    """tokens (...) int64 in [0, V**F) or == mask_token_id -> embeddings (..., d_model).

    Parameters (GENIE names): `factored_embeds.{j}.weight` (V, d_model), one per digit j (least significant
    first), and `mask_token_embed` (1, d_model) used wherever the token equals `mask_token_id`.
    """

    def __init__(self, factored_vocab_size: int, num_factored_vocabs: int, d_model: int, mask_token_id: int):
        super().__init__()
        self.factored_vocab_size, self.num_factored_vocabs = factored_vocab_size, num_factored_vocabs
        self.mask_token_id = mask_token_id
        self.factored_embeds = nn.ModuleList(nn.Embedding(factored_vocab_size, d_model)
                                             for _ in range(num_factored_vocabs))
        self.mask_token_embed = nn.Parameter(torch.zeros(1, d_model))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # A token outside [0, V**F) would silently embed as its digits modulo V. On CPU the range is checked here
        # (it costs no synchronisation); on a GPU the per-step path must stay sync-free and CUDA-graph capturable,
        # so the tokens are checked where they enter: STMaskGIT.compute_logits / check_tokens, maskgit_generate
        # and autoregressive_generate (their prompts; the sampled tokens are in range by construction).
        if tokens.device.type == "cpu" and tokens.numel() and not torch.compiler.is_compiling():
            top = self.factored_vocab_size**self.num_factored_vocabs
            bad = ((tokens < 0) | (tokens >= top)) & (tokens != self.mask_token_id)
            if bool(bad.any()):
                raise IndexError(f"tokens must lie in [0, {top}) or equal the mask token id {self.mask_token_id}; "
                                 f"found {int(tokens[bad].reshape(-1)[0])}")
        is_mask = (tokens == self.mask_token_id).unsqueeze(-1)
        # The mask id is out of the vocabulary: give it digit 0s (any valid index) and replace it afterwards, so
        # no data-dependent indexing (host synchronisation) is needed.
        ids = tokens.masked_fill(is_mask.squeeze(-1), 0)
        out = None
        for embed in self.factored_embeds:
            digit = embed(ids % self.factored_vocab_size)
            out = digit if out is None else out + digit
            ids = ids // self.factored_vocab_size
        return torch.where(is_mask, self.mask_token_embed.to(out.dtype), out)
