"""Factorized spatiotemporal attention on the video layout (B, T, S, H, D), without permutes or copies.

    spatial_attention(q, k, v, scale=None, *, qk_norm_weight=None, qk_norm_bias=None, qk_norm_eps=1e-5, backend=None)
        bidirectional attention over the S tokens of each frame, per (b, t, h).
    temporal_attention(q, k, v, causal=True, scale=None, *, qk_norm_weight=None, qk_norm_bias=None,
                       qk_norm_eps=1e-5, backend=None)
        attention over the frames at each spatial position, per (b, s, h); k/v may hold Tk >= Tq frames, the
        causal mask aligned to the end (query frame i sees key frames j <= i + Tk - Tq).
    spatial_attention_qkv(qkv, ...), temporal_attention_qkv(qkv, causal=True, ...)
        the same on a fused projection qkv (B, T, S, 3, H, D); the backward writes one fused gradient.
    frame_decode_attention(q, k_cache, v_cache, num_frames, scale=None, *, backend=None)
        one frame's queries against a KV cache of frames, the frame count read on the device (no host sync).
    frame_decode_step(q, k, v, k_cache, v_cache, num_frames, scale=None, *, qk_norm_weight=None, ..., backend=None)
        the cached sampler's step: writes the frame's (normalized) keys and values into the caches, then decodes.

Options, with their meaning:
    scale           the softmax scale; None means head_dim ** -0.5.
    qk_norm_weight  (D,): GENIE's `qk_norm`, ONE LayerNorm over the head dim applied to both q and k before the
    qk_norm_bias    scores, inside the kernel; weight and bias get gradients. bias may be None (zero); bias
    qk_norm_eps     without weight is an error. The scale multiplies the normalized q.
    backend         "auto" | "cuda" | "triton" | "reference" (see wmkernels.ops._backend); None: $WMK_BACKEND.

q, k, v may be any strided views, in particular the three views of one fused projection
`qkv.view(B, T, S, 3, H, D).unbind(3)`. Outputs are contiguous (B, T, S, H, D) in the inputs' dtype, so
`out.view(B, T, S, H * D)` is free. Computation is flash-style (online softmax in fp32 — fp64 for float64 —,
the log-sum-exp saved, the backward recomputing the probabilities).
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from wmkernels.ops import _backend
from wmkernels.ops._checks import check_tensor

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


_warned: set[tuple[str, int]] = set()


def _gpu_path(op: str, impl: str, device: torch.device, d: int) -> str:
    """The GPU kernels (CUDA, Triton) take head dims that are multiples of 8 in [8, 256]. Another head dim falls
    back to the reference, with a warning once per (op, head dim); the CPU kernel takes any head dim."""
    gpu_kernel = impl == "triton" or (impl == "native" and device.type == "cuda")
    if not gpu_kernel or (d % 8 == 0 and 8 <= d <= 256):
        return impl
    if (op, d) not in _warned:
        _warned.add((op, d))
        warnings.warn(
            f"{op}: the GPU kernels take head dims that are multiples of 8 in [8, 256]; head dim {d} runs on the "
            "pure-PyTorch reference instead (slower, same results)",
            stacklevel=3,
        )
    return "reference"


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_qkv(op, q, k, v, temporal: bool, causal: bool):
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(t, name)
        if t.dim() != 5:
            raise ValueError(f"{op}: {name} must be a 5-D (B, T, S, H, D) tensor, got shape {tuple(t.shape)}")
    if q.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: q must be float32, float16, bfloat16 or float64, got {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but q has {q.dtype}; q, k and v must share a dtype")
        if t.device != q.device:
            raise ValueError(f"{op}: {name} is on {t.device} but q is on {q.device}")
    if k.shape != v.shape:
        raise ValueError(f"{op}: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if not temporal and k.shape != q.shape:
        raise ValueError(f"{op}: k and v must have q's shape (B, T, S, H, D) = {tuple(q.shape)}, got {tuple(k.shape)}")
    if temporal:
        if (k.shape[0], *k.shape[2:]) != (q.shape[0], *q.shape[2:]):
            raise ValueError(
                f"{op}: k and v must be (B, Tk, S, H, D) with q's B, S, H, D; q is {tuple(q.shape)}, k is {tuple(k.shape)}"
            )
        if causal and k.shape[1] < q.shape[1]:
            raise ValueError(
                f"{op}: causal attention needs at least as many key frames as query frames (the mask is aligned "
                f"to the end), got Tk = {k.shape[1]} < Tq = {q.shape[1]}"
            )
    if q.shape[4] < 1:
        raise ValueError(f"{op}: the head dim must be at least 1, got q of shape {tuple(q.shape)}")


def _check_norm(op, q, weight, bias, eps):
    if weight is None:
        if bias is not None:
            raise ValueError(f"{op}: qk_norm_bias was given without qk_norm_weight (the qk LayerNorm needs its weight)")
        return
    for name, t in (("qk_norm_weight", weight), ("qk_norm_bias", bias)):
        if t is None:
            continue
        check_tensor(t, name)
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} must be a floating tensor, got {t.dtype}")
        if tuple(t.shape) != (q.shape[4],):
            raise ValueError(f"{op}: {name} must have shape (D,) = ({q.shape[4]},), got {tuple(t.shape)}")
        if t.device != q.device:
            raise ValueError(f"{op}: {name} is on {t.device} but q is on {q.device}")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not (0 <= eps < float("inf")):
        raise ValueError(f"{op}: qk_norm_eps must be a finite float >= 0, got {eps!r}")


def _scale(q: torch.Tensor, scale) -> float:
    if scale is None:
        return q.shape[-1] ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if not math.isfinite(scale):  # checked here too, so that every backend refuses it (not only C++/CUDA)
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def _reference_norm(q, k, weight, bias, eps):
    if weight is None:
        return q, k
    d = q.shape[-1]
    return F.layer_norm(q, (d,), weight, bias, eps), F.layer_norm(k, (d,), weight, bias, eps)


def spatial_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    *,
    qk_norm_weight: torch.Tensor | None = None,
    qk_norm_bias: torch.Tensor | None = None,
    qk_norm_eps: float = 1e-5,
    backend: str | None = None,
) -> torch.Tensor:
    """Bidirectional attention over S within each frame.

    q, k, v: (B, T, S, H, D), any strides, one floating dtype. qk_norm_*: (D,) LayerNorm of q and k (see module).
    Returns (B, T, S, H, D), contiguous: out[b, t, :, h] = softmax(scale * q[b,t,:,h] k[b,t,:,h]^T) v[b,t,:,h].
    """
    op = "spatial_attention"
    _check_qkv(op, q, k, v, temporal=False, causal=False)
    _check_norm(op, q, qk_norm_weight, qk_norm_bias, qk_norm_eps)
    scale = _scale(q, scale)
    impl = _gpu_path(op, _backend.select(backend, q.device, op), q.device, q.shape[-1])
    if impl == "reference":
        from wmkernels.reference import attention as reference

        qn, kn = _reference_norm(q, k, qk_norm_weight, qk_norm_bias, qk_norm_eps)
        return reference.spatial_attention(qn, kn, v, scale)
    if impl == "triton":
        from wmkernels.triton import attention as triton_attention

        return triton_attention.attention(q, k, v, False, False, scale, qk_norm_weight, qk_norm_bias, qk_norm_eps)
    return torch.ops.wmk.spatial_attention(q, k, v, scale, qk_norm_weight, qk_norm_bias, qk_norm_eps)[0]


def temporal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
    *,
    qk_norm_weight: torch.Tensor | None = None,
    qk_norm_bias: torch.Tensor | None = None,
    qk_norm_eps: float = 1e-5,
    backend: str | None = None,
) -> torch.Tensor:
    """Attention over frames at each spatial position.

    q: (B, Tq, S, H, D); k, v: (B, Tk, S, H, D), any strides; with `causal`, Tk >= Tq and query frame i sees
    key frames j <= i + Tk - Tq. qk_norm_*: (D,) LayerNorm of q and k (see module). Returns (B, Tq, S, H, D).
    """
    op = "temporal_attention"
    if not isinstance(causal, bool):
        raise TypeError(f"{op}: causal must be a bool, got {type(causal).__name__}")
    _check_qkv(op, q, k, v, temporal=True, causal=causal)
    _check_norm(op, q, qk_norm_weight, qk_norm_bias, qk_norm_eps)
    scale = _scale(q, scale)
    impl = _gpu_path(op, _backend.select(backend, q.device, op), q.device, q.shape[-1])
    if impl == "reference":
        from wmkernels.reference import attention as reference

        qn, kn = _reference_norm(q, k, qk_norm_weight, qk_norm_bias, qk_norm_eps)
        return reference.temporal_attention(qn, kn, v, causal, scale)
    if impl == "triton":
        from wmkernels.triton import attention as triton_attention

        return triton_attention.attention(q, k, v, True, causal, scale, qk_norm_weight, qk_norm_bias, qk_norm_eps)
    return torch.ops.wmk.temporal_attention(q, k, v, causal, scale, qk_norm_weight, qk_norm_bias, qk_norm_eps)[0]


def _split_qkv(op: str, qkv: torch.Tensor):
    check_tensor(qkv, "qkv")
    if qkv.dim() != 6 or qkv.shape[3] != 3:
        raise ValueError(f"{op}: qkv must be a 6-D (B, T, S, 3, H, D) tensor (q, k, v along dim 3), got shape "
                         f"{tuple(qkv.shape)}")
    return qkv.unbind(3)


def spatial_attention_qkv(
    qkv: torch.Tensor,
    scale: float | None = None,
    *,
    qk_norm_weight: torch.Tensor | None = None,
    qk_norm_bias: torch.Tensor | None = None,
    qk_norm_eps: float = 1e-5,
    backend: str | None = None,
) -> torch.Tensor:
    """spatial_attention on a fused projection: qkv (B, T, S, 3, H, D), any strides (e.g. a qkv Linear's output
    viewed so), q, k, v along dim 3. Same result as spatial_attention(*qkv.unbind(3)); its backward writes one
    (B, T, S, 3, H, D) gradient instead of three that autograd then stacks (one fewer pass over the activations).
    """
    op = "spatial_attention_qkv"
    q, k, v = _split_qkv(op, qkv)
    impl = _gpu_path(op, _backend.select(backend, qkv.device, op), qkv.device, qkv.shape[-1])
    if impl in ("reference", "triton"):
        return spatial_attention(q, k, v, scale, qk_norm_weight=qk_norm_weight, qk_norm_bias=qk_norm_bias,
                                 qk_norm_eps=qk_norm_eps, backend=impl)
    _check_qkv(op, q, k, v, temporal=False, causal=False)
    _check_norm(op, q, qk_norm_weight, qk_norm_bias, qk_norm_eps)
    return torch.ops.wmk.spatial_attention_qkv(qkv, _scale(q, scale), qk_norm_weight, qk_norm_bias, qk_norm_eps)[0]


def temporal_attention_qkv(
    qkv: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
    *,
    qk_norm_weight: torch.Tensor | None = None,
    qk_norm_bias: torch.Tensor | None = None,
    qk_norm_eps: float = 1e-5,
    backend: str | None = None,
) -> torch.Tensor:
    """temporal_attention on a fused projection qkv (B, T, S, 3, H, D) (see spatial_attention_qkv)."""
    op = "temporal_attention_qkv"
    if not isinstance(causal, bool):
        raise TypeError(f"{op}: causal must be a bool, got {type(causal).__name__}")
    q, k, v = _split_qkv(op, qkv)
    impl = _gpu_path(op, _backend.select(backend, qkv.device, op), qkv.device, qkv.shape[-1])
    if impl in ("reference", "triton"):
        return temporal_attention(q, k, v, causal, scale, qk_norm_weight=qk_norm_weight, qk_norm_bias=qk_norm_bias,
                                  qk_norm_eps=qk_norm_eps, backend=impl)
    _check_qkv(op, q, k, v, temporal=True, causal=causal)
    _check_norm(op, q, qk_norm_weight, qk_norm_bias, qk_norm_eps)
    return torch.ops.wmk.temporal_attention_qkv(qkv, causal, _scale(q, scale), qk_norm_weight, qk_norm_bias,
                                                qk_norm_eps)[0]


def frame_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    num_frames: torch.Tensor,
    scale: float | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Temporal attention of the current frame's queries over a frame KV cache (inference only, no autograd: with
    inputs that require grad the forward runs, and a backward pass through its output raises).

    q: (B, S, H, D). k_cache, v_cache: (B, T_max, S, H, D), valid frames at 0 .. num_frames - 1 (the current
    frame's K/V already written at num_frames - 1). num_frames: int32/int64 tensor () or (B,) on q's device,
    read ON the device: no .item(), no host sync, so the call can be captured in a CUDA graph or compiled with
    fullgraph=True. Returns (B, S, H, D): out[b, s, h] attends over k_cache[b, :num_frames[b], s, h].

    Out-of-range num_frames (outside [1, T_max]): the CPU kernel raises ValueError (reading the value costs
    nothing there); the CUDA and Triton kernels cannot raise without a sync, so they clamp it to [1, T_max].
    """
    op = "frame_decode_attention"
    _check_frame_decode(op, q, k_cache, v_cache, num_frames)
    scale = _scale(q, scale)
    impl = _decode_impl(op, backend, q, k_cache, num_frames)
    if impl == "reference":
        from wmkernels.reference import attention as reference

        return reference.frame_decode_attention(q, k_cache, v_cache, num_frames, scale)
    if impl == "triton":
        from wmkernels.triton import attention as triton_attention

        return triton_attention.frame_decode(q, k_cache, v_cache, num_frames, scale)
    return torch.ops.wmk.frame_decode_attention(q, k_cache, v_cache, num_frames, scale)


def _check_frame_decode(op, q, k_cache, v_cache, num_frames):
    check_tensor(q, "q")
    check_tensor(k_cache, "k_cache")
    check_tensor(v_cache, "v_cache")
    check_tensor(num_frames, "num_frames")
    if q.dim() != 4:
        raise ValueError(f"{op}: q must be a 4-D (B, S, H, D) tensor, got shape {tuple(q.shape)}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dim() != 5:
            raise ValueError(f"{op}: {name} must be a 5-D (B, T_max, S, H, D) tensor, got shape {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but q has {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{op}: {name} is on {t.device} but q is on {q.device}")
    if q.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: q must be float32, float16, bfloat16 or float64, got {q.dtype}")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"{op}: k_cache and v_cache must have the same shape, got {tuple(k_cache.shape)} and "
                         f"{tuple(v_cache.shape)}")
    if (k_cache.shape[0], *k_cache.shape[2:]) != tuple(q.shape):
        raise ValueError(f"{op}: the caches must be (B, T_max, S, H, D) with q's B, S, H, D; q is {tuple(q.shape)}, "
                         f"k_cache is {tuple(k_cache.shape)}")
    if k_cache.shape[1] < 1:
        raise ValueError(f"{op}: the caches hold no frame (T_max = 0)")
    if num_frames.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: num_frames must be an int32 or int64 tensor, got {num_frames.dtype}")
    if num_frames.dim() > 1 or (num_frames.dim() == 1 and num_frames.shape[0] != q.shape[0]):
        raise ValueError(f"{op}: num_frames must have shape () or (B,) = ({q.shape[0]},), got {tuple(num_frames.shape)}")
    if num_frames.device != q.device:
        raise ValueError(f"{op}: num_frames is on {num_frames.device} but q is on {q.device} (keep it on the "
                         "device: it is read there, without a sync)")


def _decode_impl(op, backend, q, k_cache, num_frames, n: int = 1) -> str:
    """The backend of a decode call; on CPU tensors the reference checks the frame counts here (the C++ kernel
    checks them itself; on a GPU, and in Triton, whose CPU interpreter stands in for the GPU, they are clamped).
    A run of n frames needs num_frames <= T_max - n + 1."""
    impl = _gpu_path(op, _backend.select(backend, q.device, op), q.device, q.shape[-1])
    if impl == "reference" and num_frames.device.type == "cpu":
        t_max = k_cache.shape[1]
        top = t_max - n + 1
        bad = (num_frames < 1) | (num_frames > top)
        if bool(bad.any()):
            value = int(num_frames.reshape(-1)[bad.reshape(-1)][0])
            where = f"T_max = {t_max}" if n == 1 else f"T_max - n + 1 = {top}] (n = {n} frames, T_max = {t_max}"
            raise ValueError(f"{op}: num_frames must lie in [1, {where}], got {value}")
    return impl


def frame_decode_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    num_frames: torch.Tensor,
    scale: float | None = None,
    *,
    qk_norm_weight: torch.Tensor | None = None,
    qk_norm_bias: torch.Tensor | None = None,
    qk_norm_eps: float = 1e-5,
    store_last: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """One cached decoding step of temporal attention (inference only: a backward pass through it raises): store
    the current frame's K/V, attend.

    q, k, v: (B, S, H, D), the current frame's projections (any strides, e.g. views of a fused qkv). The keys,
    through the qk LayerNorm (qk_norm_* as in temporal_attention), and the values are written IN PLACE into slot
    num_frames[b] - 1 of k_cache, v_cache (B, T_max, S, H, D); then the queries, through the same LayerNorm,
    attend over slots 0 .. num_frames[b] - 1, as `frame_decode_attention` does. So the caches hold normalized
    keys. num_frames: int32/int64 () or (B,) on the device, read there (no host sync). Returns (B, S, H, D).
    Equal to: write LayerNorm(k), v into the caches, then frame_decode_attention(LayerNorm(q), ...).

    q, k, v may also be (B, n, S, H, D): n consecutive frames, frame i written at slot num_frames[b] - 1 + i and
    attending over slots 0 .. num_frames[b] - 1 + i (n steps in one call; num_frames[b] + n - 1 <= T_max). The CPU
    kernel then reads the cache once for all n frames. Returns (B, n, S, H, D).

    store_last=False: the caller will not read the last frame's slot afterwards (a MaskGIT step's own K/V), so a
    kernel may leave it unwritten; its contents are then unspecified. The output is the same. The CPU kernel (float,
    AVX2 / AVX-512) skips that write; the others store every frame.
    """
    op = "frame_decode_step"
    if not isinstance(q, torch.Tensor) or q.dim() not in (4, 5):
        check_tensor(q, "q")
        raise ValueError(f"{op}: q must be a 4-D (B, S, H, D) tensor (one frame) or a 5-D (B, n, S, H, D) one (n "
                         f"consecutive frames), got shape {tuple(q.shape)}")
    if q.dim() == 5 and q.shape[1] == 0:
        raise ValueError(f"{op}: q holds no frame (n = 0), shape {tuple(q.shape)}")
    run = q.dim() == 5
    _check_frame_decode(op, q[:, 0] if run else q, k_cache, v_cache, num_frames)
    for name, t in (("k", k), ("v", v)):
        check_tensor(t, name)
        if tuple(t.shape) != tuple(q.shape):
            raise ValueError(f"{op}: {name} (the current frames') must have q's shape {tuple(q.shape)}, got "
                             f"{tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but q has {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{op}: {name} is on {t.device} but q is on {q.device}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        # (Not while compiling: the compiled op checks it itself, and the check is no tensor op to trace.)
        if not torch.compiler.is_compiling() and torch._debug_has_internal_overlap(t) == 1:
            raise ValueError(f"{op}: {name} is written in place, so no two of its elements may share memory (an "
                             f"expanded view?), got strides {t.stride()}")
    _check_norm(op, q if run else q.unsqueeze(1), qk_norm_weight, qk_norm_bias, qk_norm_eps)
    if not isinstance(store_last, bool):
        raise TypeError(f"{op}: store_last must be a bool, got {store_last!r}")
    scale = _scale(q, scale)
    impl = _decode_impl(op, backend, q, k_cache, num_frames, n=q.shape[1] if run else 1)
    if impl in ("reference", "triton"):
        if run:  # n one-frame steps, each after the frames before it are written
            return torch.stack([frame_decode_step(q[:, i], k[:, i], v[:, i], k_cache, v_cache, num_frames + i, scale,
                                                  qk_norm_weight=qk_norm_weight, qk_norm_bias=qk_norm_bias,
                                                  qk_norm_eps=qk_norm_eps, backend=impl)
                                for i in range(q.shape[1])], dim=1)
        # Device ops around the decode kernel: the LayerNorm, then the write with device-side slot indices.
        b, t_max = q.shape[0], k_cache.shape[1]
        qn, kn = _reference_norm(q, k, qk_norm_weight, qk_norm_bias, qk_norm_eps)
        slot = (num_frames.reshape(-1).long() - 1).clamp(0, t_max - 1).expand(b)
        rows = torch.arange(b, device=q.device)
        k_cache[rows, slot] = kn
        v_cache[rows, slot] = v
        return frame_decode_attention(qn, k_cache, v_cache, num_frames, scale, backend=impl)
    return torch.ops.wmk.frame_decode_step(q, k, v, k_cache, v_cache, num_frames, scale, qk_norm_weight,
                                           qk_norm_bias, qk_norm_eps, store_last)


# --- fake kernels (shapes only) for torch.compile / export ------------------------------------------------------


@torch.library.register_fake("wmk::spatial_attention")
def _spatial_fake(q, k, v, scale, qk_norm_weight=None, qk_norm_bias=None, qk_norm_eps=1e-5):
    return q.new_empty(q.shape), q.new_empty(q.shape[:4], dtype=_lse_dtype(q.dtype))


@torch.library.register_fake("wmk::temporal_attention")
def _temporal_fake(q, k, v, causal, scale, qk_norm_weight=None, qk_norm_bias=None, qk_norm_eps=1e-5):
    return q.new_empty(q.shape), q.new_empty(q.shape[:4], dtype=_lse_dtype(q.dtype))


def _backward_fake(q, k, v, weight, bias):
    if weight is None:
        dw, db = q.new_empty((0,)), q.new_empty((0,))
    else:
        dw = weight.new_empty(weight.shape)
        db = weight.new_empty(weight.shape, dtype=(bias if bias is not None else weight).dtype)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dw, db


@torch.library.register_fake("wmk::spatial_attention_backward")
def _spatial_backward_fake(grad_out, q, k, v, out, lse, scale, qk_norm_weight, qk_norm_bias, qk_norm_eps):
    return _backward_fake(q, k, v, qk_norm_weight, qk_norm_bias)


@torch.library.register_fake("wmk::temporal_attention_backward")
def _temporal_backward_fake(grad_out, q, k, v, out, lse, causal, scale, qk_norm_weight, qk_norm_bias, qk_norm_eps):
    return _backward_fake(q, k, v, qk_norm_weight, qk_norm_bias)


@torch.library.register_fake("wmk::spatial_attention_qkv")
def _spatial_qkv_fake(qkv, scale, qk_norm_weight=None, qk_norm_bias=None, qk_norm_eps=1e-5):
    shape = (*qkv.shape[:3], *qkv.shape[4:])
    return qkv.new_empty(shape), qkv.new_empty(shape[:4], dtype=_lse_dtype(qkv.dtype))


@torch.library.register_fake("wmk::temporal_attention_qkv")
def _temporal_qkv_fake(qkv, causal, scale, qk_norm_weight=None, qk_norm_bias=None, qk_norm_eps=1e-5):
    return _spatial_qkv_fake(qkv, scale)


def _fused_backward_fake(qkv, weight, bias):
    dw, db = _backward_fake(qkv, qkv, qkv, weight, bias)[3:]
    return qkv.new_empty(qkv.shape), dw, db


@torch.library.register_fake("wmk::spatial_attention_qkv_backward")
def _spatial_qkv_backward_fake(grad_out, qkv, out, lse, scale, qk_norm_weight, qk_norm_bias, qk_norm_eps):
    return _fused_backward_fake(qkv, qk_norm_weight, qk_norm_bias)


@torch.library.register_fake("wmk::temporal_attention_qkv_backward")
def _temporal_qkv_backward_fake(grad_out, qkv, out, lse, causal, scale, qk_norm_weight, qk_norm_bias, qk_norm_eps):
    return _fused_backward_fake(qkv, qk_norm_weight, qk_norm_bias)


@torch.library.register_fake("wmk::frame_decode_attention")
def _frame_decode_fake(q, k_cache, v_cache, num_frames, scale):
    return q.new_empty(q.shape)


@torch.library.register_fake("wmk::frame_decode_step")
def _frame_decode_step_fake(q, k, v, k_cache, v_cache, num_frames, scale, qk_norm_weight=None, qk_norm_bias=None,
                            qk_norm_eps=1e-5, store_last=True):
    return q.new_empty(q.shape)


# --- autograd: the backward ops recompute attention from the saved log-sum-exp ---------------------------------


def _setup(ctx, inputs, output, temporal: bool, tensors: int = 3):
    """Saves the op's first `tensors` inputs (q, k, v, or the fused qkv), out, lse and the qk LayerNorm weights."""
    rest = inputs[tensors:]
    causal, rest = (rest[0], rest[1:]) if temporal else (False, rest)
    scale, weight, bias, eps = rest
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(*inputs[:tensors], out, lse, weight, bias)
    ctx.causal, ctx.scale, ctx.eps = causal, scale, eps


def _norm_grads(weight, bias, dw, db):
    return (dw if weight is not None else None), (db if bias is not None else None)


def _spatial_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, weight, bias = ctx.saved_tensors
    dq, dk, dv, dw, db = torch.ops.wmk.spatial_attention_backward(
        grad_out, q, k, v, out, lse, ctx.scale, weight, bias, ctx.eps
    )
    return dq, dk, dv, None, *_norm_grads(weight, bias, dw, db), None


def _temporal_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, weight, bias = ctx.saved_tensors
    dq, dk, dv, dw, db = torch.ops.wmk.temporal_attention_backward(
        grad_out, q, k, v, out, lse, ctx.causal, ctx.scale, weight, bias, ctx.eps
    )
    return dq, dk, dv, None, None, *_norm_grads(weight, bias, dw, db), None


def _spatial_qkv_backward(ctx, grad_out, grad_lse):
    qkv, out, lse, weight, bias = ctx.saved_tensors
    dqkv, dw, db = torch.ops.wmk.spatial_attention_qkv_backward(grad_out, qkv, out, lse, ctx.scale, weight, bias,
                                                                ctx.eps)
    return dqkv, None, *_norm_grads(weight, bias, dw, db), None


def _temporal_qkv_backward(ctx, grad_out, grad_lse):
    qkv, out, lse, weight, bias = ctx.saved_tensors
    dqkv, dw, db = torch.ops.wmk.temporal_attention_qkv_backward(grad_out, qkv, out, lse, ctx.causal, ctx.scale,
                                                                 weight, bias, ctx.eps)
    return dqkv, None, None, *_norm_grads(weight, bias, dw, db), None


torch.library.register_autograd(
    "wmk::spatial_attention_qkv", _spatial_qkv_backward,
    setup_context=lambda ctx, inputs, output: _setup(ctx, inputs, output, False, tensors=1)
)
torch.library.register_autograd(
    "wmk::temporal_attention_qkv", _temporal_qkv_backward,
    setup_context=lambda ctx, inputs, output: _setup(ctx, inputs, output, True, tensors=1)
)
torch.library.register_autograd(
    "wmk::spatial_attention", _spatial_backward, setup_context=lambda ctx, inputs, output: _setup(ctx, inputs, output, False)
)
torch.library.register_autograd(
    "wmk::temporal_attention", _temporal_backward, setup_context=lambda ctx, inputs, output: _setup(ctx, inputs, output, True)
)
