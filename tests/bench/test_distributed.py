"""`torchrun --nproc_per_node=2 -m wmkernels.bench` on gloo gives the metrics of a 1-process run."""
import json
import subprocess
import sys

import jsonschema
import pytest

from tests.bench.test_cli import ROOT, S, SMALL
from wmkernels.bench import load_schema


def deterministic_view(report):
    """Everything in a report that does not depend on timing, memory or the number of ranks."""
    samplers = [{
        "name": s["name"], "status": s["status"], "is_reference": s["is_reference"],
        "failure": None if s["failure"] is None else (s["failure"]["kind"], s["failure"]["rank"]),
        "agreement": s["agreement"],
        "calls": None if s["timing"] is None else s["timing"]["calls"],
        "horizons": [(h["new_frames"], h["calls"]) for h in s["horizons"]],
    } for s in report["samplers"]]
    return {"data": report["data"], "teacher_forced": report["teacher_forced"], "samplers": samplers,
            "settings": {k: v for k, v in report["settings"].items() if k != "data"}}


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path):
    data = tmp_path / "data"
    common = [*SMALL, "--num-windows", "5", "--batch-size", "2", "--reference", "repeat-last",
              "--sampler", f"{S}:AlmostRepeatLast", "--sampler", f"{S}:Noisy", "--sampler", f"{S}:Raises",
              "--sampler", "repeat-last", "--max-disagreement", "0.01", "--device", "cpu"]
    reports = {}
    for ranks in (1, 2):
        out = tmp_path / f"out{ranks}"
        launcher = ([sys.executable, "-m", "wmkernels.bench"] if ranks == 1 else
                    [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                     "-m", "wmkernels.bench"])
        # both runs read the same synthetic data: the first writes it under its --out, the second is given it
        extra = ["--out", str(out)] + ([] if ranks == 1 else ["--data", str(data)])
        done = subprocess.run([*launcher, *common, *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-4000:]
        if ranks == 1:
            (out / "synthetic-data-seed0").rename(data)
        reports[ranks] = json.loads((out / "report.json").read_text())
        jsonschema.validate(reports[ranks], load_schema())
    one, two = reports[1], reports[2]
    assert one["environment"]["world_size"] == 1 and two["environment"]["world_size"] == 2
    one["data"]["path"] = two["data"]["path"]  # the same files, moved
    one["settings"]["synthetic_data"] = two["settings"]["synthetic_data"]
    assert deterministic_view(one) == deterministic_view(two)
    by_name = {s["name"]: s for s in two["samplers"]}
    assert by_name[f"{S}:AlmostRepeatLast"]["agreement"]["tokens_compared"] == 5 * 2 * 256
    assert by_name[f"{S}:Noisy"]["failure"]["kind"] == "disagreement"
    assert by_name[f"{S}:Raises"]["failure"]["kind"] == "error"
