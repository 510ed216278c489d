"""Teacher-forced cross-entropy and accuracy over factorized logits."""
import itertools
import math

import pytest
import torch

from tests.models.helpers import tiny_model
from wmkernels.sampling.metrics import (evaluate_teacher_forced, factorized_argmax, factorized_cross_entropy,
                                        teacher_forced_logits, token_accuracy)


def _naive_ce(logits, targets, nf, v):
    # One token at a time, straight from the definition: sum over digits of -log softmax(digit logits)[digit].
    b, _, t, h, w = logits.shape
    total, count = 0.0, 0
    for idx in itertools_product(b, t, h, w):
        bi, ti, hi, wi = idx
        tok = int(targets[bi, ti, hi, wi])
        for j in range(nf):
            digit = (tok // v**j) % v
            row = logits[bi, j * v:(j + 1) * v, ti, hi, wi].double()
            total -= (row[digit] - torch.logsumexp(row, 0)).item()
        count += 1
    return total / count


def itertools_product(*sizes):
    return itertools.product(*(range(s) for s in sizes))


def test_cross_entropy_and_accuracy_match_definition():
    g = torch.Generator().manual_seed(0)
    nf, v = 2, 8
    logits = torch.randn(2, nf * v, 3, 2, 2, generator=g) * 3
    targets = torch.randint(0, v**nf, (2, 3, 2, 2), generator=g)
    assert math.isclose(factorized_cross_entropy(logits, targets, nf, v).item(), _naive_ce(logits, targets, nf, v),
                        rel_tol=1e-5)
    pred = factorized_argmax(logits, nf, v)
    for bi, ti, hi, wi in itertools_product(2, 3, 2, 2):
        digits = [int(logits[bi, j * v:(j + 1) * v, ti, hi, wi].argmax()) for j in range(nf)]
        assert pred[bi, ti, hi, wi] == digits[0] + v * digits[1]
    assert token_accuracy(pred, pred).item() == 1.0
    mask = torch.zeros_like(targets, dtype=torch.bool)
    mask[0, 1] = True
    want = _naive_ce(logits[:1, :, 1:2], targets[:1, 1:2], nf, v)
    assert math.isclose(factorized_cross_entropy(logits, targets, nf, v, mask).item(), want, rel_tol=1e-5)
    with pytest.raises(ValueError, match="targets"):
        factorized_cross_entropy(logits, targets[:, :2], nf, v)
    with pytest.raises(ValueError, match="logits"):
        factorized_cross_entropy(logits, targets, nf, 9)


def test_teacher_forced_logits_equal_uncached():
    model = tiny_model(seed=1)
    cfg = model.config
    tokens = torch.randint(0, cfg.image_vocab_size, (2, 6, cfg.H, cfg.W), generator=torch.Generator().manual_seed(1))
    got = teacher_forced_logits(model, tokens, num_prompt_frames=2)
    assert got.shape == (2, cfg.num_logits, 4, cfg.H, cfg.W)
    for i, t in enumerate(range(2, 6)):
        masked = tokens[:, : t + 1].clone()
        masked[:, t] = cfg.mask_token_id
        with torch.no_grad():
            want = model.compute_logits(masked)[:, :, t]
        assert (got[:, :, i] - want).abs().max() <= 1e-5 * want.abs().max()
    metrics = evaluate_teacher_forced(model, tokens, 2)
    assert metrics["loss"] > 0 and 0 <= metrics["acc"] <= 1
    with pytest.raises(ValueError, match="num_prompt_frames"):
        teacher_forced_logits(model, tokens, num_prompt_frames=6)
