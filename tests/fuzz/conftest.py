"""Hypothesis budgets of the fuzz tests, chosen by $WMK_FUZZ_PROFILE.

- "ci" (default, `make test`): 100 cases per test (12 for the slow Triton interpreter), derandomized (the same cases on every run, so the
  default suite never flakes) and no example database written into the tree.
- "fuzz" (`make fuzz`): many random cases per test, failures remembered in .hypothesis/ and replayed first.
"""
import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                     HealthCheck.filter_too_much])
settings.register_profile("ci", max_examples=100, derandomize=True, database=None, print_blob=True, **_COMMON)
settings.register_profile("fuzz", max_examples=int(os.environ.get("WMK_FUZZ_EXAMPLES", "1000")), print_blob=True,
                          **_COMMON)
settings.load_profile(os.environ.get("WMK_FUZZ_PROFILE", "ci"))
