"""The ops are safe to call from several Python threads at once: every op of the determinism cases, forward and
backward, run concurrently from a thread pool, gives bitwise the results of a single-threaded run."""
from concurrent.futures import ThreadPoolExecutor

import torch

from tests.reliability.test_determinism import CASES, grads_of

WORKERS = 4
ROUNDS = 3


def test_ops_from_many_python_threads_match_single_threaded_results():
    cases = {name: make() for name, make in CASES.items()}
    expected = {name: grads_of(fn, *inputs) for name, (fn, inputs) in cases.items()}
    inputs_before = {name: [t.clone() for t in inputs] for name, (_, inputs) in cases.items()}
    # Every op ROUNDS times, interleaved so that different ops (and the same op) overlap in time.
    jobs = [name for _ in range(ROUNDS) for name in sorted(cases)]
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        results = list(pool.map(lambda name: (name, grads_of(cases[name][0], *cases[name][1])), jobs))
    assert len(results) == len(jobs)
    for name, got in results:
        for i, (a, b) in enumerate(zip(got, expected[name], strict=True)):
            assert torch.equal(a, b), f"{name}: result {i} differs when called from {WORKERS} threads at once"
    for name, (_, inputs) in cases.items():
        for a, b in zip(inputs, inputs_before[name]):
            assert torch.equal(a, b), f"{name}: an input was modified"


def test_sampling_from_two_threads_matches_sequential_runs():
    from wmkernels import STMaskGIT, maskgit_generate
    from wmkernels.bench.presets import TINY_CHECKPOINT

    model = STMaskGIT.from_pretrained(TINY_CHECKPOINT).eval()
    prompts = [torch.randint(0, 2**18, (1, 2, 16, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]

    def sample(i):
        # Each call draws from its own seeded generator (the global RNG would interleave between the threads).
        return maskgit_generate(model, prompts[i % 2], num_new_frames=2, steps=2, temperature=1.0, progress=False,
                                generator=torch.Generator().manual_seed(i % 2)).tokens

    expected = [sample(i) for i in range(2)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        got = list(pool.map(sample, range(4)))
    for i, tokens in enumerate(got):
        assert torch.equal(tokens, expected[i % 2]), "a sampler run in a thread gave other tokens"
