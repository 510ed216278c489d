"""STMaskGIT: the GENIE-style world model (1X World Model Challenge baseline) built from wmkernels layers.

Parameter names are those of the public GENIE checkpoints, so their state dicts load without renaming:
`token_embed.{factored_embeds.{j}.weight, mask_token_embed}`, `pos_embed_TSC` (1, T, S, d_model),
`decoder.layers.{i}.{norm1, spatial_attn.{qkv,proj,norm}, temporal_attn.{qkv,proj,norm}, norm2, mlp.{fc1,fc2}}`,
`out_x_proj.{weight,bias}`.

Besides the full forward (`compute_logits`), the model has the three pieces of the KV-cached frame sampler:
`prefill` (frames 0 .. T0-1 into a FrameKVCache), `decode_logits` (one frame against the cache, optionally after
committing the finished frame before it in the same pass) and `commit_frame` (store a finished frame's K/V). None
of them synchronises with the host.
"""
from __future__ import annotations

import torch
from torch import nn

from wmkernels.models.config import STMaskGITConfig
from wmkernels.models.embedding import FactorizedEmbedding
from wmkernels.nn._layout import store_linear_weights_column_major
from wmkernels.nn.kv_cache import FrameKVCache
from wmkernels.nn.st_block import STTransformer

# muP readout: GENIE divides the readout input by width_mult = d_model / 256 (its hard-coded base width).
_MUP_BASE_WIDTH = 256


class STMaskGIT(nn.Module):
    """GENIE's spatiotemporal MaskGIT. tokens (B, T, H, W) -> logits (B, F*V, T, H, W); see `compute_logits`."""

    def __init__(self, config: STMaskGITConfig, backend: str | None = None) -> None:
        super().__init__()
        self.config = config
        self.h = self.w = config.H
        self.mask_token_id = config.mask_token_id
        self.decoder = STTransformer(
            config.num_layers, config.d_model, config.num_heads, qkv_bias=config.qkv_bias,
            proj_bias=config.proj_bias, qk_norm=config.qk_norm, use_mup=config.use_mup, mlp_ratio=config.mlp_ratio,
            mlp_bias=config.mlp_bias, backend=backend,
        )
        self.pos_embed_TSC = nn.Parameter(torch.zeros(1, config.T, config.S, config.d_model))
        self.token_embed = FactorizedEmbedding(config.factored_vocab_size, config.num_factored_vocabs,
                                               config.d_model, config.mask_token_id)
        self.out_x_proj = nn.Linear(config.d_model, config.num_logits)
        self.readout_width_mult = config.d_model / _MUP_BASE_WIDTH if config.use_mup else None
        store_linear_weights_column_major(self)  # see wmkernels.nn._layout: cheaper weight reads, same results

    # ---- construction ------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: STMaskGITConfig | dict, backend: str | None = None,
                    generator: torch.Generator | None = None) -> "STMaskGIT":
        """A randomly initialised model (GENIE's init: N(0, 0.02) weights and embeddings, zero biases).

        Unlike GENIE, `pos_embed_TSC` and `mask_token_embed` are random too, so that a random model tells
        positions and masked tokens apart.
        """
        if isinstance(config, dict):
            config = STMaskGITConfig.from_dict(config)
        model = cls(config, backend=backend)
        model.init_weights(generator)
        return model

    @classmethod
    def from_pretrained(cls, directory, backend: str | None = None, map_location="cpu") -> "STMaskGIT":
        """Load a GENIE checkpoint directory: config.json plus model.safetensors (or a torch file).

        See `wmkernels.models.checkpoint.load_pretrained` for the accepted files and the errors raised.
        """
        from wmkernels.models.checkpoint import load_pretrained

        return load_pretrained(cls, directory, backend=backend, map_location=map_location)

    def save_pretrained(self, directory, safe_serialization: bool = True) -> None:
        """Write config.json and model.safetensors (or pytorch_model.bin) in GENIE's format."""
        from wmkernels.models.checkpoint import save_pretrained

        save_pretrained(self, directory, safe_serialization=safe_serialization)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None, std: float = 0.02) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                # Drawn in (out, in) order whatever the storage order, so a seed gives the same model either way.
                w = torch.empty_like(module.weight, memory_format=torch.contiguous_format)
                module.weight.copy_(w.normal_(0.0, std, generator=generator))
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
        self.pos_embed_TSC.normal_(0.0, std, generator=generator)
        self.token_embed.mask_token_embed.normal_(0.0, std, generator=generator)

    # ---- full forward --------------------------------------------------------------------------------------------
    def check_tokens(self, tokens: torch.Tensor, name: str = "tokens", allow_mask: bool = True) -> torch.Tensor:
        """Validate (B, T, H, W) tokens: int dtype, frame size, T <= config.T, values in the vocabulary."""
        cfg = self.config
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tokens).__name__}")
        if tokens.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name} must be an int32 or int64 tensor, got {tokens.dtype}")
        if tokens.dim() != 4 or tuple(tokens.shape[2:]) != (cfg.H, cfg.W):
            raise ValueError(f"{name} must have shape (B, T, {cfg.H}, {cfg.W}) (frames of S={cfg.S} tokens), "
                             f"got {tuple(tokens.shape)}")
        if tokens.shape[1] > cfg.T:
            raise ValueError(f"{name} has {tokens.shape[1]} frames, more than the model's T={cfg.T}")
        if tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise ValueError(f"{name} must have at least one batch element and one frame, got {tuple(tokens.shape)}")
        top = cfg.mask_token_id if allow_mask else cfg.image_vocab_size - 1
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi > top:
            bad = lo if lo < 0 else hi
            what = "image tokens or the mask token" if allow_mask else "image tokens"
            raise ValueError(f"{name} holds {bad}, outside [0, {top}] ({what}; image_vocab_size="
                             f"{cfg.image_vocab_size})")
        return tokens

    def _embed(self, tokens_bts: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.token_embed(tokens_bts.long()) + pos

    def _readout(self, x: torch.Tensor) -> torch.Tensor:
        if self.readout_width_mult is not None:
            x = x / self.readout_width_mult
        return self.out_x_proj(x)

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T', H, W) with T' <= T (mask token allowed) -> logits (B, T', S, F*V), frames at 0 .. T'-1."""
        b, t = tokens.shape[:2]
        x = self._embed(tokens.reshape(b, t, -1), self.pos_embed_TSC[:, :t])
        return self._readout(self.decoder(x))

    def compute_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T', H, W), T' <= config.T -> logits (B, F*V, T', H, W), GENIE's layout.

        Channel j*V + i is the logit of digit j (least significant first) taking value i.
        """
        self.check_tokens(tokens)
        logits = self.forward_tokens(tokens)
        return logits.permute(0, 3, 1, 2).unflatten(-1, (self.h, self.w))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.compute_logits(tokens)

    # ---- cached frame-by-frame path --------------------------------------------------------------------------
    def new_cache(self, batch_size: int) -> FrameKVCache:
        return FrameKVCache.for_model(self, batch_size)

    def prefill(self, tokens: torch.Tensor, cache: FrameKVCache, frame_by_frame: bool = False) -> None:
        """Store the K/V of frames tokens (B, T0, S) (no mask tokens) at cache frames 0 .. T0-1; num_frames = T0.

        Each frame goes through the model once, either all T0 at once (one causal forward, the default) or frame by
        frame, each against the frames cached before it (the commit path). The two store the same K/V up to
        rounding. On CPU the one pass measured 6% faster than frame by frame on one thread and 30-40% on two, for
        GENIE-35M's 8-frame prompt.
        """
        t0 = tokens.shape[1]
        if not 1 <= t0 <= cache.max_frames:
            raise ValueError(f"prefill: tokens hold {t0} frames; the cache takes 1 to T_max = {cache.max_frames}")
        if frame_by_frame:
            cache.reset()
            for t in range(t0):
                self.commit_frame(tokens[:, t], cache)
            return
        self._causal_pass(tokens, cache, t0, need_output=False)

    def decode_logits(self, frame: torch.Tensor, cache: FrameKVCache, commit: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """Logits (B, S, F*V) of frame (B, S) (mask tokens allowed) at the cache's working slot.

        num_frames is left unchanged, and so is what the cache holds for the committed frames. The frame's own K/V
        are not kept: the working slot's contents afterwards are unspecified (the fused CPU pass does not write them;
        a MaskGIT step's K/V are never read again, and the next pass overwrites the slot).

        With `commit`, finished frames (B, S) or (B, n, S) (no mask tokens), those are first committed at positions
        num_frames .. num_frames + n - 1, as `commit_frame` does, in the same pass: they and `frame` go through the
        model as one (n + 1)-frame forward (more rows per matrix product, fewer passes), and `frame` is decoded at the
        slot after them. Into an empty cache this is `prefill` and the first step at once.
        """
        frames, n = frame.unsqueeze(1), 0
        if commit is not None:
            if commit.dim() == 2:
                commit = commit.unsqueeze(1)
            if commit.dim() != 3 or commit.shape[0] != frame.shape[0] or commit.shape[2] != frame.shape[1]:
                raise ValueError(f"decode_logits: commit must have shape (B, S) or (B, n, S) with frame's (B, S) = "
                                 f"{tuple(frame.shape)}, got {tuple(commit.shape)}")
            frames, n = torch.cat([commit, frames], dim=1), commit.shape[1]
        cache.check_free_slot("decode_logits", commits=n)
        # Only `frame`'s rows leave the last layer: the committed frames' output projections and MLP there are
        # skipped (their K/V are all that is kept). Into an empty cache the pass is causal over frames 0 .. n; on CPU
        # without autograd it runs as the decode pass at slot 0 (frame i attends to slots 0 .. i: the same
        # attention), which takes the whole stack as one C++ op where the causal forward goes layer by layer in
        # Python with the qk LayerNorm and the cache writes as separate ops (a sampler run with GENIE-35M's 8-frame
        # prompt, 2 threads: ~2% faster; see BENCHMARKS.md). Elsewhere it is the causal forward, as prefill runs it
        # (differentiable, where the decode ops are inference-only).
        if n and cache.host_frames == 0 and (frames.device.type != "cpu" or torch.is_grad_enabled()):
            out = self._causal_pass(frames, cache, n, last_only=True)
        else:
            out = self._decode_pass(frames, cache, n, last_only=True, store_last=False)
        return self._readout(out[:, -1])

    def commit_frame(self, frame: torch.Tensor, cache: FrameKVCache) -> None:
        """Store the K/V of the finished frame (B, S) at position cache.num_frames and count it."""
        cache.check_free_slot("commit_frame")
        self._decode_pass(frame.unsqueeze(1), cache, 1, need_output=False)

    def _causal_pass(self, frames: torch.Tensor, cache: FrameKVCache, count: int, need_output: bool = True,
                     last_only: bool = False):
        """frames (B, n, S) as cache frames 0 .. n-1, in one causal forward storing their K/V; num_frames = count.
        Returns the output (B, n, S, C), or with `last_only` the last frame's (B, 1, S, C)."""
        x = self._embed(frames, self.pos_embed_TSC[:, : frames.shape[1]])
        out = self.decoder.forward_prefill(x, cache, need_output=need_output, last_only=last_only)
        cache.num_frames.fill_(count)
        cache.host_frames = count
        return out

    def _decode_pass(self, frames: torch.Tensor, cache: FrameKVCache, count: int, need_output: bool = True,
                     last_only: bool = False, store_last: bool = True):
        """frames (B, n, S) at slots num_frames .. num_frames + n - 1, one pass against the cache storing their K/V
        (the last frame's only with store_last); the first `count` of them are counted as committed. Output as in
        _causal_pass."""
        position = cache.position()
        n = frames.shape[1]
        positions = position if n == 1 else position + torch.arange(n, device=position.device)
        x = self._embed(frames, self.pos_embed_TSC.index_select(1, positions))
        out = self.decoder.forward_decode(x, cache, position, need_output=need_output, last_only=last_only,
                                          store_last=store_last)
        if count:
            cache.num_frames.add_(count)
            cache.host_frames += count
        return out
