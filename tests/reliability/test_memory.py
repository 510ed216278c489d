"""A long sampling loop keeps its memory flat: 1,000 KV-cached MaskGIT steps of the tiny model (10 frames of 100
steps, each a one-frame forward against the FrameKVCache; greedy digits, random unmasking) with a bound on the
growth of the process's RSS. About 15 s on a quiet 2-core machine (several times that when it is shared)."""
import gc
import os
import time

import torch

from wmkernels import STMaskGIT
from wmkernels.bench.presets import TINY_CHECKPOINT
from wmkernels.sampling.maskgit import maskgit_update, sample_digits

STEPS_PER_FRAME = 100
FRAMES = 10
WARMUP_STEPS = 200
# A leak of 8 KiB per step (one small tensor kept alive) would grow RSS by 6.4 MiB over the measured 800 steps.
MAX_GROWTH_MIB = 6.0


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@torch.inference_mode()
def test_thousand_cached_maskgit_steps_keep_rss_flat():
    model = STMaskGIT.from_pretrained(TINY_CHECKPOINT).eval()
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, cfg.image_vocab_size, (1, 4, cfg.S), generator=gen)
    cache = model.new_cache(1)
    model.prefill(prompt, cache)
    samples_rss, step, start = {}, 0, time.perf_counter()
    for _ in range(FRAMES):
        frame = torch.full((1, cfg.S), cfg.mask_token_id, dtype=torch.long)
        unmasked = torch.zeros((1, cfg.S), dtype=torch.bool)
        for s in range(STEPS_PER_FRAME):
            logits = model.decode_logits(frame, cache)
            tokens, confidence = sample_digits(logits, cfg.num_factored_vocabs, cfg.factored_vocab_size, 0.0, gen)
            frame, unmasked = maskgit_update(frame, unmasked, tokens, confidence, s, STEPS_PER_FRAME,
                                             cfg.mask_token_id, "random", gen)
            step += 1
            if step in (WARMUP_STEPS, FRAMES * STEPS_PER_FRAME):
                gc.collect()
                samples_rss[step] = rss_mib()
        assert bool((frame < cfg.image_vocab_size).all()), "a frame was left with mask tokens"
        model.commit_frame(frame, cache)
    growth = samples_rss[FRAMES * STEPS_PER_FRAME] - samples_rss[WARMUP_STEPS]
    print(f"\n{step} MaskGIT steps in {time.perf_counter() - start:.1f} s; RSS {samples_rss[WARMUP_STEPS]:.1f} MiB "
          f"after {WARMUP_STEPS} steps, {samples_rss[step]:.1f} MiB after {step} (growth {growth:+.2f} MiB)")
    assert int(cache.num_frames) == 4 + FRAMES
    assert growth <= MAX_GROWTH_MIB, f"RSS grew by {growth:.1f} MiB over {step - WARMUP_STEPS} sampling steps"
