"""benchmarks/bench_sampling.py runs end to end on tiny shapes: the sampler table and the --decode-run mode."""
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sampling.py"
TINY = ["--layers", "2", "--d-model", "16", "--heads", "2", "--T", "4", "--S", "4", "--threads", "1"]
pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason=f"{SCRIPT} is not in this checkout")


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *TINY, *args], capture_output=True, text=True, timeout=300)


def test_sampler_table_on_a_tiny_model():
    out = _run("--vocab", "16", "--prompt-frames", "2", "--new-frames", "2", "--samplers", "cached,genie",
               "--cached-reps", "1")
    assert out.returncode == 0, out.stderr
    genie = [line for line in out.stdout.splitlines() if line.startswith("genie ")]
    assert len(genie) == 1 and genie[0].split()[-1] == "True", out.stdout  # the same tokens


def test_reference_model_sampler_and_unknown_names():
    # genie-reference: GENIE's sampler on the plain-PyTorch reference model, timed and FLOP-counted like the others.
    out = _run("--vocab", "16", "--prompt-frames", "2", "--new-frames", "2", "--samplers", "cached,genie-reference",
               "--cached-reps", "1")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith("genie-reference ")]
    assert len(rows) == 1 and rows[0][5].endswith("x"), out.stdout
    assert int(rows[0][3]) == 2 * 2 * 4, out.stdout  # frame-forwards: new frames x steps x T
    bad = _run("--samplers", "cached,public")
    assert bad.returncode != 0 and "--samplers: unknown public; choose from" in bad.stderr


def test_decode_run_mode():
    out = _run("--decode-run", "--cached-frames", "2", "--repeats", "2")
    assert out.returncode == 0, out.stderr
    assert "run of 2 frames, one call" in out.stdout and "speed-up of the run:" in out.stdout, out.stdout
    bad = _run("--decode-run", "--cached-frames", "3")  # T - 2 = 2: no room for the run
    assert bad.returncode != 0 and "--cached-frames must lie in [1, T - 2 = 2], got 3" in bad.stderr
