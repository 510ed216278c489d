"""Submissions for the harness tests: one well-behaved, and one for every way a submission can fail."""
import os
import time

import torch

from wmkernels.bench.baselines import RepeatLastFrame


class Raises:
    def generate(self, prompt, num_new_frames, **opts):
        raise RuntimeError("boom from a submission")


class RaisesInInit:
    def __init__(self, context):
        raise OSError("cannot open my weights")


class WrongShape:
    """Returns only the new frames: the protocol wants the prompt in front of them."""

    def generate(self, prompt, num_new_frames, **opts):
        return prompt[:, -1:].expand(-1, num_new_frames, -1, -1).clone()


class WrongDtype:
    def generate(self, prompt, num_new_frames, **opts):
        return RepeatLastFrame().generate(prompt, num_new_frames).to(torch.int32)


class ChangesPrompt:
    def generate(self, prompt, num_new_frames, **opts):
        out = RepeatLastFrame().generate(prompt, num_new_frames).clone()
        out[:, 0] = (out[:, 0] + 1) % 2**18
        return out


class Sleeps:
    """Hangs inside generate (a stand-in for a sampler stuck in a kernel)."""

    def generate(self, prompt, num_new_frames, **opts):
        time.sleep(120)


class Crashes:
    def generate(self, prompt, num_new_frames, **opts):
        os._exit(3)


class Noisy:
    """Well-formed output with random new frames: disagrees with any deterministic reference."""

    def generate(self, prompt, num_new_frames, **opts):
        g = torch.Generator().manual_seed(0)
        b, _, h, w = prompt.shape
        new = torch.randint(0, 2**18, (b, num_new_frames, h, w), generator=g).to(prompt.device)
        return torch.cat([prompt, new], dim=1)


class AlmostRepeatLast:
    """RepeatLastFrame with one token per sequence changed: a small, known disagreement (1 / (N*H*W))."""

    def generate(self, prompt, num_new_frames, **opts):
        out = RepeatLastFrame().generate(prompt, num_new_frames).clone()
        out[:, -1, 0, 0] = (out[:, -1, 0, 0] + 1) % 2**18
        return out


class NeedsContext:
    """A factory-style submission: checks what the context offers, then behaves like RepeatLastFrame."""

    def __init__(self, context):
        assert context.vocab_size == 2**18 and context.frame_size == 16 and context.steps >= 1
        self.device = torch.device(context.device)

    def generate(self, prompt, num_new_frames, steps, temperature, **opts):
        assert prompt.device == self.device and temperature == 0.0
        return RepeatLastFrame().generate(prompt, num_new_frames)


repeat_last_instance = RepeatLastFrame()
not_a_sampler = 42
