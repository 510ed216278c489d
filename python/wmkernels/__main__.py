"""`python -m wmkernels` / `wmk-config`: print the configuration and run each registered op once."""
from __future__ import annotations

import torch

import wmkernels
from wmkernels import reference


def main() -> None:
    wmkernels.show_config()
    print()
    tokens = torch.randint(0, 2**18, (2, 16, 16), generator=torch.Generator().manual_seed(0))
    factors = wmkernels.factorize_tokens(tokens)
    back = wmkernels.unfactorize_tokens(factors)
    same = torch.equal(factors, reference.factorize_tokens(tokens)) and torch.equal(back, tokens)
    print(f"factorize_tokens {tuple(tokens.shape)} -> {tuple(factors.shape)}; "
          f"round trip and reference match: {'yes' if same else 'NO'}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
