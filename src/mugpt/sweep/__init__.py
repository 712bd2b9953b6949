"""Sweeps: many independent runs — a grid and/or a seeded random search × seeds — on the
local cores or a Ray cluster, with a resumable SQLite results store and a report.

>>> import tempfile
>>> from mugpt.sweep import SweepSpec, run_sweep, load_sweep_results
>>> spec = SweepSpec.from_dict({
...     "seeds": 2, "budget": 400,
...     "base": {"stream": "text:a rose is a rose is a rose. ", "learner": {"update_every": 8}},
...     "grid": {"optim.lr": [0.003, 0.03]},
... })
>>> out = tempfile.mkdtemp()
>>> run_sweep(spec, out, report=False, echo=lambda line: None).counts
{'done': 4}
>>> sorted({r["label"] for r in load_sweep_results(out)})
['optim.lr=0.003', 'optim.lr=0.03']

See ``docs/sweep.md`` for the sweep file format and the commands.
"""

from mugpt.sweep.driver import SweepOutcome, run_sweep
from mugpt.sweep.report import aggregate, load_sweep_results, write_report
from mugpt.sweep.runner import execute_run
from mugpt.sweep.spec import PlannedRun, SweepSpec, run_key
from mugpt.sweep.stats import mean_ci
from mugpt.sweep.store import SweepStore

__all__ = [
    "PlannedRun",
    "SweepOutcome",
    "SweepSpec",
    "SweepStore",
    "aggregate",
    "execute_run",
    "load_sweep_results",
    "mean_ci",
    "run_key",
    "run_sweep",
    "write_report",
]
