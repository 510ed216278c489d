"""The sampling benchmark suite: `wmk-bench` / `python -m wmkernels.bench` (see cli.py for the flags).

    Sampler, SamplerContext     the protocol a submission implements (protocol.py documents it)
    BUILTIN_SAMPLERS            maskgit, maskgit-uncached (the reference), repeat-last
    BenchConfig, run_benchmark  a run from Python; returns the report dict (schema: load_schema())
    RepeatLastFrame             the model-free baseline
"""
from wmkernels.bench.baselines import RepeatLastFrame
from wmkernels.bench.protocol import BUILTIN_SAMPLERS, Sampler, SamplerContext, check_output, load_sampler
from wmkernels.bench.report import SCHEMA_VERSION, load_schema
from wmkernels.bench.runner import BenchConfig, run_benchmark

__all__ = [
    "BUILTIN_SAMPLERS",
    "SCHEMA_VERSION",
    "BenchConfig",
    "RepeatLastFrame",
    "Sampler",
    "SamplerContext",
    "check_output",
    "load_sampler",
    "load_schema",
    "run_benchmark",
]
