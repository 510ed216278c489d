"""`python -m wmkernels` / `wmk-config`: print the configuration and run each op family once against its reference."""
from __future__ import annotations

import wmkernels
from wmkernels import _selftest


def main() -> None:
    wmkernels.show_config()
    print("\nEach op family against its pure-PyTorch reference (CPU):")
    ok = _selftest.run()
    print("all match" if ok else "MISMATCH: see above")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
