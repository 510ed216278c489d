"""Pure-PyTorch nearest-code VQ (the ground truth of the vq_encode / vq_decode kernels).

It forms the N x K score matrix (in chunks of rows), so it is simple and slow; the kernels never do.
Conventions, shared with every kernel:

- score of code k: |c_k|^2 - 2 x.c_k (metric "l2") or -2 x^.c^_k ("cosine", unit rows, F.normalize's
  eps); the lowest score wins, exact ties go to the lowest index, a NaN score never wins, and a row
  whose scores are all NaN gets index 0.
- distances: for the chosen code, sum_d (x_d - c_d)^2 ("l2", the squared distance, computed directly)
  or 1 - x^.c^ ("cosine").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NORM_EPS = 1e-12
_ROW_CHUNK = 1024


def _unit(t: torch.Tensor) -> torch.Tensor:
    return F.normalize(t, dim=-1, eps=NORM_EPS)


def vq_scores(x: torch.Tensor, codebook: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """x: (N, D), codebook: (K, D) -> scores (N, K) in x's dtype (lower is nearer; see module doc)."""
    if metric == "cosine":
        return -2 * (_unit(x) @ _unit(codebook).T)
    return codebook.pow(2).sum(-1) - 2 * (x @ codebook.T)


def vq_encode(x: torch.Tensor, codebook: torch.Tensor, metric: str = "l2") -> tuple[torch.Tensor, torch.Tensor]:
    """x: (..., D), codebook: (K, D) -> (indices int64 (...), distances (...) in x's dtype)."""
    if metric not in ("l2", "cosine"):
        raise ValueError(f"vq_encode: metric must be 'l2' or 'cosine', got {metric!r}")
    flat = x.reshape(-1, x.shape[-1])
    chunks = []
    for start in range(0, flat.shape[0], _ROW_CHUNK):
        scores = vq_scores(flat[start : start + _ROW_CHUNK], codebook, metric)
        scores = torch.where(scores.isnan(), torch.full_like(scores, float("inf")), scores)
        chunks.append(scores.argmin(-1) if scores.shape[-1] else scores.new_zeros(scores.shape[0], dtype=torch.long))
    indices = torch.cat(chunks) if chunks else flat.new_zeros(0, dtype=torch.long)
    return indices.reshape(x.shape[:-1]), chosen_distances(x, codebook, indices.reshape(x.shape[:-1]), metric)


def chosen_distances(x: torch.Tensor, codebook: torch.Tensor, indices: torch.Tensor, metric: str) -> torch.Tensor:
    """The distance of each row of x (..., D) to its chosen code codebook[indices] (see module doc)."""
    if metric == "cosine":
        return 1 - (_unit(x) * _unit(codebook)[indices]).sum(-1)
    return (x - codebook[indices]).pow(2).sum(-1)


def vq_decode(indices: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """indices: (...) in [0, K), codebook: (K, D) -> codes (..., D)."""
    k = codebook.shape[0]
    if indices.numel() and (bool((indices < 0).any()) or bool((indices >= k).any())):
        bad = indices[(indices < 0) | (indices >= k)].reshape(-1)[0].item()
        raise IndexError(f"vq_decode: indices must lie in [0, {k}) (the codebook size), found {bad}")
    return codebook[indices.long()]
