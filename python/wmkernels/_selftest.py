"""One small call of each op family against its pure-PyTorch reference.

Used by `python -m wmkernels` (the demo), by the wheel smoke test (an installed wheel, outside the source
tree) and by the tests, which check that every op in the registry is exercised here.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from wmkernels import ops, reference


def _tokens() -> tuple[bool, str]:
    tokens = torch.randint(0, 2**18, (2, 16, 16), generator=torch.Generator().manual_seed(0))
    factors = ops.factorize_tokens(tokens)
    ok = torch.equal(factors, reference.factorize_tokens(tokens)) and torch.equal(ops.unfactorize_tokens(factors), tokens)
    return ok, f"factorize_tokens {tuple(tokens.shape)} -> {tuple(factors.shape)}, round trip"


#: family name -> (ops it exercises, check returning (passed, description))
CHECKS: dict[str, tuple[tuple[str, ...], Callable[[], tuple[bool, str]]]] = {
    "tokens": (("wmk::factorize_tokens", "wmk::unfactorize_tokens"), _tokens),
}


def covered_ops() -> set[str]:
    return {name for names, _ in CHECKS.values() for name in names}


def run(file=None) -> bool:
    """Run every check on CPU, print one line each, and return whether all matched their references."""
    all_ok = True
    for family, (_, check) in CHECKS.items():
        ok, what = check()
        all_ok &= ok
        print(f"  [{'ok' if ok else 'MISMATCH'}] {family}: {what}", file=file)
    return all_ok
