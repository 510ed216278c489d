"""Train the small world model that the `tiny` preset ships with (`python -m wmkernels.bench.train_tiny`).

The model has the tiny preset's shape and learns the synthetic dataset of `wmkernels.data.synthetic`, so that
`wmk-bench --preset tiny` measures a real loss and accuracy rather than those of random weights. It trains on
segments the benchmark never evaluates: the benchmark's data are the first `EVAL_SEGMENTS` segments of the
seed-0 dataset; training uses later segments of the same generator (same token palette, other scenes).

Objective (MaskGIT, as GENIE trains): in each window, frames before a random frame k stay visible; every token
of frames k .. T-1 is replaced by the mask token with probability r ~ U(0.05, 1]; the loss is the factorized
cross-entropy of the masked tokens. With causal temporal attention, frame k with r = 1 is exactly the
benchmark's teacher-forced first step.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from wmkernels.bench.presets import PRESETS, TINY_CHECKPOINT
from wmkernels.data.reader import window_starts
from wmkernels.data.synthetic import synthetic_tokens

ASSET_DIR = TINY_CHECKPOINT
EVAL_SEGMENTS = PRESETS["tiny"].synthetic["num_segments"]
FRAMES_PER_SEGMENT = PRESETS["tiny"].synthetic["frames_per_segment"]
STRIDE = 15


def training_windows(num_segments: int, window: int, seed: int = 0) -> torch.Tensor:
    """(N, window, 16, 16) int64 windows of the seed's synthetic data, from segments >= EVAL_SEGMENTS only."""
    tokens, segment_ids = synthetic_tokens(num_segments, FRAMES_PER_SEGMENT, seed=seed)
    keep = segment_ids >= EVAL_SEGMENTS
    tokens, segment_ids = tokens[keep], segment_ids[keep]
    starts = window_starts(segment_ids, len(tokens), window, STRIDE)
    index = starts[:, None] + STRIDE * np.arange(window)[None, :]
    return torch.from_numpy(tokens[index])


def masked_batch(windows: torch.Tensor, mask_token: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The corrupted input and the bool mask of the positions to score, for windows (B, T, H, W)."""
    b, t = windows.shape[:2]
    first = torch.randint(1, t, (b, 1, 1, 1), generator=generator)
    rate = torch.empty(b, 1, 1, 1).uniform_(0.05, 1.0, generator=generator)
    frame = torch.arange(t).view(1, t, 1, 1)
    mask = (frame >= first) & (torch.rand(windows.shape, generator=generator) < rate)
    return windows.masked_fill(mask, mask_token), mask


def train(steps: int, batch_size: int, lr: float, num_segments: int, seed: int, out: Path, log_every: int = 25):
    from wmkernels.models import STMaskGIT
    from wmkernels.sampling import factorized_cross_entropy

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = STMaskGIT.from_config(dict(PRESETS["tiny"].model), generator=generator)
    cfg = model.config
    windows = training_windows(num_segments, cfg.T, seed=0)
    print(f"training on {len(windows)} windows of {cfg.T} frames ({num_segments - EVAL_SEGMENTS} held-in segments), "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    start = time.perf_counter()
    for step in range(1, steps + 1):
        batch = windows[torch.randint(len(windows), (batch_size,), generator=generator)]
        inputs, mask = masked_batch(batch, cfg.mask_token_id, generator)
        logits = model(inputs)
        loss = factorized_cross_entropy(logits, batch, cfg.num_factored_vocabs, cfg.factored_vocab_size, mask=mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % log_every == 0 or step == steps:
            print(f"step {step:5d}  loss {loss.item():.3f}  {time.perf_counter() - start:.0f} s", flush=True)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    print(f"wrote {out}")
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--segments", type=int, default=24, help="segments generated (the first 6 are held out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ASSET_DIR)
    args = parser.parse_args(argv)
    train(args.steps, args.batch_size, args.lr, args.segments, args.seed, args.out)


if __name__ == "__main__":
    main()
