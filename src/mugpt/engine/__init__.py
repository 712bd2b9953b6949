"""The prequential engine: Learner, metrics, checkpoints and run directories."""

from mugpt.engine.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from mugpt.engine.learner import Learner, LearnerConfig, RunResult, StepOutput

__all__ = [
    "Learner",
    "LearnerConfig",
    "RunResult",
    "StepOutput",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]
