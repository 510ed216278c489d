"""Pure-PyTorch VectorQuantizer layer: the ground truth of `wmkernels.nn.VectorQuantizer`.

The search and the gather are the two primitives `_search` and `_gather`; everything else (projections,
losses, straight-through estimator, EMA codebook update, dead-code reset) is shared: the kernel-backed
layer in `wmkernels.nn` overrides only those two methods, so the tests that compare the two layers
compare the kernels inside a real layer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wmkernels.reference import vq as ref_vq

# vector-quantize-pytorch normalizes with this eps for cosine similarity; using the same keeps the
# indices of near-zero inputs identical to its VectorQuantize.
COSINE_EPS = 1e-6


class VectorQuantizer(nn.Module):
    """Nearest-code vector quantizer (VQ-VAE), with vector-quantize-pytorch's conventions.

    dim: channels of the input x (..., dim) (channel-last). codebook_size: K. codebook_dim: D of the codes;
    when it differs from dim, Linear layers project in (dim -> D) and out (D -> dim).
    metric: "l2" (nearest in Euclidean distance) or "cosine" (input and codes are l2-normalized; the
    quantized vector is the unit code). commitment_weight: weight of mean((z - sg[q])^2).
    decay: a float in (0, 1) (default 0.8, as vector-quantize-pytorch) updates the codebook by exponential
    moving averages (VQ-VAE-2) in training mode; None learns it by gradient instead (the loss then adds the
    codebook term mean((sg[z] - q)^2)).
    eps: Laplace smoothing of the EMA cluster sizes. threshold_ema_dead_code: in EMA training, codes whose
    EMA cluster size falls below it are replaced by random inputs of the batch (0 disables).
    use_cosine_sim=True is accepted as vector-quantize-pytorch's spelling of metric="cosine", so that
    `VectorQuantize(dim, codebook_size, ...)` -> `VectorQuantizer(dim, codebook_size, ...)` is a one-line
    change. Differences: the straight-through estimator is used in training (theirs defaults to the
    rotation trick), and the loss is returned in eval mode too (theirs returns 0 there).

    forward(x) -> (quantized (..., dim), indices int64 (...), loss scalar). The quantized output carries
    the straight-through gradient to x; the loss is computed in train and eval mode alike.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: int | None = None,
        metric: str = "l2",
        commitment_weight: float = 1.0,
        decay: float | None = 0.8,
        eps: float = 1e-5,
        threshold_ema_dead_code: float = 0.0,
        use_cosine_sim: bool = False,
    ):
        super().__init__()
        if use_cosine_sim:  # vector-quantize-pytorch's spelling of metric="cosine"
            metric = "cosine"
        if metric not in ("l2", "cosine"):
            raise ValueError(f"metric must be 'l2' or 'cosine', got {metric!r}")
        if codebook_size < 1 or dim < 1:
            raise ValueError(f"dim and codebook_size must be at least 1, got {dim} and {codebook_size}")
        if decay is not None and not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be None (learned codebook) or in (0, 1), got {decay}")
        codebook_dim = dim if codebook_dim is None else codebook_dim
        self.dim, self.codebook_size, self.codebook_dim = dim, codebook_size, codebook_dim
        self.metric, self.commitment_weight, self.decay = metric, commitment_weight, decay
        self.eps, self.threshold_ema_dead_code = eps, threshold_ema_dead_code
        projected = codebook_dim != dim
        self.project_in = nn.Linear(dim, codebook_dim) if projected else nn.Identity()
        self.project_out = nn.Linear(codebook_dim, dim) if projected else nn.Identity()

        init = nn.init.kaiming_uniform_(torch.empty(codebook_size, codebook_dim))
        if metric == "cosine":
            init = F.normalize(init, dim=-1, eps=COSINE_EPS)
        if decay is None:
            self.codebook = nn.Parameter(init)
        else:
            self.register_buffer("codebook", init)
            self.register_buffer("cluster_size", torch.ones(codebook_size))
            self.register_buffer("embed_avg", init.clone())

    # --- the two primitives the kernel-backed layer replaces -------------------------------------
    def _search(self, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """z: (N, D), codes: (K, D) -> indices (N,) of the nearest codes."""
        indices, _ = ref_vq.vq_encode(z.float(), codes.float(), self.metric)
        return indices

    def _gather(self, indices: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """indices: (...), codes: (K, D) -> (..., D), differentiable in codes."""
        return ref_vq.vq_decode(indices, codes)

    # --- public API ------------------------------------------------------------------------------
    def codes(self) -> torch.Tensor:
        """The code table the layer quantizes to: (K, D) (unit rows for cosine)."""
        if self.metric == "cosine":
            return F.normalize(self.codebook, dim=-1, eps=COSINE_EPS)
        return self.codebook

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"x must have {self.dim} channels in its last dimension, got shape {tuple(x.shape)}")
        z = self.project_in(x)
        return F.normalize(z, dim=-1, eps=COSINE_EPS) if self.metric == "cosine" else z

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim) -> indices int64 (...) of the nearest codes."""
        z = self._project(x)
        return self._search(z.detach().reshape(-1, self.codebook_dim), self.codes().detach()).reshape(z.shape[:-1])

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """indices: (...) -> codes (..., codebook_dim), before the output projection."""
        return self._gather(indices, self.codes())

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """indices: (...) -> quantized vectors (..., dim), after the output projection."""
        return self.project_out(self.indices_to_codes(indices))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self._project(x)
        codes = self.codes()
        flat = z.reshape(-1, self.codebook_dim)
        indices = self._search(flat.detach(), codes.detach())
        quantized = self._gather(indices, codes).reshape(z.shape)
        indices = indices.reshape(z.shape[:-1])

        loss = self.commitment_weight * F.mse_loss(z, quantized.detach())
        if self.decay is None:
            loss = loss + F.mse_loss(quantized, z.detach())
        elif self.training:
            self._ema_update(flat.detach(), indices.reshape(-1))

        quantized = z + (quantized - z).detach()  # straight-through estimator
        return self.project_out(quantized), indices, loss

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        """EMA of the code counts and sums (VQ-VAE-2), then the dead-code reset; branch-free for compile."""
        k = self.codebook_size
        flat = flat.float()
        counts = torch.zeros(k, device=flat.device).index_add_(0, indices, torch.ones_like(indices, dtype=torch.float))
        sums = torch.zeros(k, self.codebook_dim, device=flat.device).index_add_(0, indices, flat)
        self.cluster_size.lerp_(counts, 1.0 - self.decay)
        self.embed_avg.lerp_(sums, 1.0 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + k * self.eps) * total
        codebook = self.embed_avg / smoothed.unsqueeze(-1)
        if self.threshold_ema_dead_code > 0 and flat.shape[0] > 0:
            dead = (self.cluster_size < self.threshold_ema_dead_code).unsqueeze(-1)
            samples = flat[torch.randint(0, flat.shape[0], (k,), device=flat.device)]
            codebook = torch.where(dead, samples, codebook)
            self.embed_avg.copy_(torch.where(dead, samples * self.threshold_ema_dead_code, self.embed_avg))
            self.cluster_size.copy_(torch.where(dead.squeeze(-1), torch.full_like(self.cluster_size,
                                                self.threshold_ema_dead_code), self.cluster_size))
        if self.metric == "cosine":
            codebook = F.normalize(codebook, dim=-1, eps=COSINE_EPS)
        self.codebook.copy_(codebook.to(self.codebook.dtype))
