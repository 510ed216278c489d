"""`python -m wmkernels.bench` (and `torchrun ... -m wmkernels.bench`): the benchmark CLI."""
import sys

from wmkernels.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
