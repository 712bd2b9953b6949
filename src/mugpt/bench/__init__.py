"""Benchmarks: μGPT against a PyTorch eager implementation and classic compressors, timed on
the same bytes, single-threaded, with analytic FLOPs per byte and the machine's matmul peak.

Example:
    >>> from mugpt.bench import flops_per_byte
    >>> from mugpt.model import ModelConfig
    >>> flops_per_byte(ModelConfig(), update_every=32) < flops_per_byte(ModelConfig())
    True
"""

from mugpt.bench.flops import flops_per_byte, step_flops
from mugpt.bench.run import (
    BENCH_CONFIGS,
    BenchReport,
    BenchRow,
    default_configs,
    parse_config_spec,
    render_table,
    run_bench,
)

__all__ = [
    "BENCH_CONFIGS",
    "BenchReport",
    "BenchRow",
    "default_configs",
    "flops_per_byte",
    "parse_config_spec",
    "render_table",
    "run_bench",
    "step_flops",
]
