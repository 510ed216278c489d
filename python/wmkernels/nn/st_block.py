"""GENIE's spatiotemporal block and the stack of them, on the (B, T, S, C) layout.

Block order (as in 1X GENIE): x += spatial_attn(norm1(x)); x += temporal_attn(x) (no pre-norm);
x += mlp(norm2(x)). With `qk_norm` the pre-norms norm1 and norm2 are Identity (the attention normalises q and k
instead); without it they are LayerNorm(d_model, eps=1e-5). The MLP is fc1 -> exact GELU -> fc2.

Besides the plain forward, each block has the two cached paths of the frame sampler: `forward_prefill` (frames
0 .. T0-1, storing every layer's temporal K/V) and `forward_decode` (one or a few frames against those K/V). With
`kv_only=True` they stop once the temporal K/V are stored: the last layer of a prefill or of a frame's commit needs
nothing more.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from wmkernels.nn._layout import store_linear_weights_column_major
from wmkernels.nn import packed_linear
from wmkernels.nn.attention import SelfAttention
from wmkernels.nn.packed_linear import global_hooks_set as _global_hooks_set
from wmkernels.nn.packed_linear import inference_linear
from wmkernels.ops import _backend


class Mlp(nn.Module):
    """fc1 (d_model -> int(d_model * mlp_ratio)) -> GELU (erf) -> fc2. x: (..., C) -> (..., C)."""

    def __init__(self, d_model: int, mlp_ratio: float = 4.0, mlp_bias: bool = True) -> None:
        super().__init__()
        hidden = int(d_model * mlp_ratio)
        self.fc1 = nn.Linear(d_model, hidden, bias=mlp_bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, d_model, bias=mlp_bias)
        store_linear_weights_column_major(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            h = self.fc1(x)
            if h.requires_grad:
                return self.fc2(self.act(h))
        else:
            h = inference_linear(self.fc1, x)  # the packed kernel where it runs (wmkernels.nn.packed_linear)
        # Without autograd, GELU overwrites fc1's fresh output: no second hidden-sized buffer. That buffer cost more
        # than its pass: with it, glibc returned and re-mapped memory at every layer (a GENIE-35M decode step took
        # ~15,000 minor page faults, without it ~130; measured 15% faster per one-frame step and 6% per 16-frame
        # forward on one thread).
        h = torch.ops.aten.gelu_(h, approximate=self.act.approximate)
        return inference_linear(self.fc2, h)


class STBlock(nn.Module):
    """One GENIE ST block; parameter names norm1, spatial_attn, temporal_attn, norm2, mlp.{fc1,fc2}.

    x: (B, T, S, C) -> (B, T, S, C). See the module docstring for the order of operations.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        qk_norm: bool = True,
        use_mup: bool = False,
        mlp_ratio: float = 4.0,
        mlp_bias: bool = True,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        attn = dict(d_model=d_model, num_heads=num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, qk_norm=qk_norm,
                    use_mup=use_mup, backend=backend)
        self.norm1 = nn.Identity() if qk_norm else nn.LayerNorm(d_model, eps=1e-5)
        self.spatial_attn = SelfAttention(axis="space", **attn)
        self.temporal_attn = SelfAttention(axis="time", causal=True, **attn)
        self.norm2 = nn.Identity() if qk_norm else nn.LayerNorm(d_model, eps=1e-5)
        self.mlp = Mlp(d_model, mlp_ratio, mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.spatial_attn(self.norm1(x))
        x = x + self.temporal_attn(x)
        return x + self.mlp(self.norm2(x))

    def forward_prefill(self, x, k_cache, v_cache, kv_only: bool = False, last_only: bool = False):
        """x: (B, T0, S, C), frames 0 .. T0-1; stores their temporal K/V in k_cache, v_cache (B, T_max, S, H, D).

        Returns (B, T0, S, C), or with `last_only` the last frame's rows (B, 1, S, C) only (the other frames' output
        projections and MLP are skipped: nothing reads them after the last layer)."""
        x = x + self.spatial_attn(self.norm1(x))
        if kv_only:
            self.temporal_attn.write_kv(x, k_cache, v_cache)
            return None
        t = self.temporal_attn.forward_prefill(x, k_cache, v_cache, last_only=last_only)
        x = (x[:, -1:] if last_only else x) + t
        return x + self.mlp(self.norm2(x))

    def forward_decode(self, x, k_cache, v_cache, position: torch.Tensor, kv_only: bool = False,
                       last_only: bool = False):
        """x: (B, n, S, C), the frames at `position` (int64 tensor (1,)) .. position + n - 1; frame i attends to
        cached frames 0 .. position + i, its own K/V written at slot position + i. `last_only` as in
        forward_prefill."""
        x = x + self.spatial_attn(self.norm1(x))
        if kv_only:
            self.temporal_attn.write_kv(x, k_cache, v_cache, position)
            return None
        t = self.temporal_attn.forward_decode(x, k_cache, v_cache, position, last_only=last_only)
        x = (x[:, -1:] if last_only else x) + t
        return x + self.mlp(self.norm2(x))


class STTransformer(nn.Module):
    """A stack of `num_layers` STBlocks named `layers.{i}` (GENIE's `STTransformerDecoder`).

    x: (B, T, S, C) -> (B, T, S, C). The cached paths take a `FrameKVCache` (see wmkernels.nn.kv_cache).
    """

    #: Run forward_decode as the one C++ op where it can (see forward_decode); False keeps the module path.
    fused_decode: bool = True
    #: The op's arguments per (device, dtype) while `reuse_decode_args` is active, else None.
    _decode_args_memo: dict | None = None

    def __init__(self, num_layers: int, d_model: int, num_heads: int, **block_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(STBlock(d_model, num_heads, **block_kwargs) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_prefill(self, x: torch.Tensor, cache, need_output: bool = True, last_only: bool = False):
        """Frames 0 .. T0-1 of x (B, T0, S, C): fill the cache's K/V; return the output (B, T0, S, C) only if
        `need_output`, and with `last_only` only the last frame's (B, 1, S, C)."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer.forward_prefill(x, cache.k[i], cache.v[i], kv_only=(i == last and not need_output),
                                      last_only=(i == last and last_only))
        return x

    def forward_decode(self, x: torch.Tensor, cache, position: torch.Tensor, need_output: bool = True,
                       last_only: bool = False, store_last: bool = True):
        """Frames x (B, n, S, C) at `position` .. position + n - 1 against the cache, their K/V written there.

        n = 1 is a MaskGIT step; n = 2 is the sampler's commit of a finished frame together with the next frame's
        first step (one pass with twice the rows instead of two passes). Output as in forward_prefill.
        store_last=False (with need_output): the last frame's K/V need not be stored, as for a MaskGIT step whose
        slot the next pass overwrites; that slot's contents are then unspecified (see `frame_decode_step`).

        Without autograd, outside torch.compile and on CPU, the whole stack runs as one C++ op
        (wmk::st_transformer_decode) that issues the same ops in the same order as the layers below (bitwise the
        same output) without the Python between them. Layers with hooks, or subclassed, take the module path, as
        does everything with `fused_decode = False`.
        """
        args = self._decode_op_args(x)
        if args is not None:
            params, num_heads, scales, eps, approximate, packed = args
            out = torch.ops.wmk.st_transformer_decode(x, params, cache.k, cache.v, position, num_heads, scales, eps,
                                                      packed, approximate, need_output, last_only,
                                                      store_last or not need_output)
            return out if need_output else None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer.forward_decode(x, cache.k[i], cache.v[i], position, kv_only=(i == last and not need_output),
                                     last_only=(i == last and last_only))
        return x

    @contextlib.contextmanager
    def reuse_decode_args(self):
        """Within the block, `forward_decode` builds the fused op's arguments once per device and dtype and reuses
        them, where it otherwise rebuilds them at every call (GENIE-35M: ~0.2 ms hot, ~0.7 ms between a sampler's
        passes on a 2-core CPU, ~2% of a one-frame pass). For a run over a model that does not change meanwhile, as
        the samplers' runs: a module, parameter or hook replaced or added inside the block is not seen (a weight
        changed in place is: its packed copy is checked at every call)."""
        previous = self._decode_args_memo
        self._decode_args_memo = {}
        try:
            yield self
        finally:
            self._decode_args_memo = previous

    def _decode_op_args(self, x: torch.Tensor):
        """(params, num_heads, scales, eps, gelu_approximate, packed) for wmk::st_transformer_decode, or None where
        the module path must run: autograd on, compiling, a tensor off the CPU, an attention backend other than the
        compiled kernels, a hook anywhere in the stack, or a layer that is not the stock STBlock. Built at every
        call (about 0.2 ms for 32 layers), so replaced parameters or modules are always seen, except inside
        `reuse_decode_args`."""
        if (not self.fused_decode or torch.is_grad_enabled() or x.device.type != "cpu"
                or torch.compiler.is_compiling() or _global_hooks_set()):
            return None
        memo = self._decode_args_memo
        if memo is None:
            return self._build_decode_op_args(x)[0]
        key = (x.device, x.dtype)
        if key not in memo:
            memo[key] = self._build_decode_op_args(x)
        args, weights = memo[key]
        if weights:  # the packed copies, looked up again: a weight changed in place is packed again
            args = (*args[:-1], packed_linear.packed_weights(weights))
        return args

    def _build_decode_op_args(self, x: torch.Tensor):
        """(_decode_op_args's result or None, the Linears' weights whose packed copies it holds (or None))."""
        params, scales, eps, backends, linears = [], [], [], set(), []
        num_heads = approximate = None
        for block in self.layers:
            if type(block) is not STBlock or _hooked(block):
                return None, None
            mods = block._modules
            norm1, spatial, temporal, norm2, mlp = (mods["norm1"], mods["spatial_attn"], mods["temporal_attn"],
                                                    mods["norm2"], mods["mlp"])
            if type(spatial) is not SelfAttention or type(temporal) is not SelfAttention or type(mlp) is not Mlp:
                return None, None
            if spatial.axis != "space" or temporal.axis != "time" or not temporal.causal:
                return None, None
            if num_heads is None:
                num_heads = spatial.num_heads
            if spatial.num_heads != num_heads or temporal.num_heads != num_heads:
                return None, None
            fc1, act, fc2 = mlp._modules["fc1"], mlp._modules["act"], mlp._modules["fc2"]
            if type(act) is not nn.GELU or _hooked(mlp):
                return None, None
            if approximate is None:
                approximate = act.approximate
            if act.approximate != approximate:
                return None, None
            n1, e1 = _layer_norm_args(norm1)
            n2, e2 = _layer_norm_args(norm2)
            sa, es = _attention_args(spatial)
            ta, et = _attention_args(temporal)
            l1, l2 = _linear_args(fc1), _linear_args(fc2)
            if n1 is None or n2 is None or sa is None or ta is None or l1 is None or l2 is None:
                return None, None
            params += n1 + sa + ta + n2 + l1 + l2
            linears += (spatial._modules["qkv"], spatial._modules["proj"], temporal._modules["qkv"],
                        temporal._modules["proj"], fc1, fc2)
            scales += (spatial.scale, temporal.scale)
            eps += (e1, es, et, e2)
            backends.add(spatial.backend)
            backends.add(temporal.backend)
        try:
            if any(_backend.select(b, x.device, "st_transformer_decode") != "native" for b in backends):
                return None, None
        except _backend.BackendUnavailableError:
            return None, None  # the module path raises the error naming its op
        # The Linears' packed weights where the layers' rule packs them (wmkernels.nn.packed_linear), so the op
        # multiplies as the module path does.
        packed, weights = [], None
        if packed_linear.packed_for(x):
            weights = [m._parameters["weight"] for m in linears]
            packed = packed_linear.packed_weights(weights)
        return (params, num_heads, scales, eps, approximate, packed), weights


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _linear_args(linear) -> list | None:
    if type(linear) is not nn.Linear or _hooked(linear):
        return None
    p = linear._parameters
    return [p["weight"], p["bias"]]


def _layer_norm_args(norm) -> tuple[list | None, float]:
    """[weight, bias] and eps of a pre-norm; a negative eps says Identity (no LayerNorm)."""
    if _hooked(norm):
        return None, 0.0
    if type(norm) is nn.Identity:
        return [None, None], -1.0
    if type(norm) is not nn.LayerNorm or len(norm.normalized_shape) != 1:
        return None, 0.0
    p = norm._parameters
    return [p["weight"], p["bias"]], float(norm.eps)


def _attention_args(attn: SelfAttention) -> tuple[list | None, float]:
    """[qkv.weight, qkv.bias, qk-norm weight, qk-norm bias, proj.weight, proj.bias] and the qk-norm eps, as the
    module path passes them to the attention ops (SelfAttention._norm_kwargs)."""
    mods = attn._modules
    qkv, proj, norm = _linear_args(mods["qkv"]), _linear_args(mods["proj"]), mods.get("norm")
    if _hooked(attn) or qkv is None or proj is None:
        return None, 0.0
    if norm is None:
        return qkv + [None, None] + proj, 1e-5
    if type(norm) is not nn.LayerNorm or _hooked(norm):
        return None, 0.0
    p = norm._parameters
    return qkv + [p["weight"], p["bias"]] + proj, float(norm.eps)
