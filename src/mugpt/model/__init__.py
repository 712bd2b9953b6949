"""Pure math on arrays: config, parameters, forward/backward, optimisers, sampling."""

from mugpt.model.config import ModelConfig
from mugpt.model.constants import BOS, VOCAB_SIZE
from mugpt.model.gpt import GPT, Activations
from mugpt.model.optim import OptimConfig, Optimizer, UpdateInfo
from mugpt.model.params import ParamBuffer, init_params, param_shapes
from mugpt.model.sampling import filter_probs, generate, show_bytes

__all__ = [
    "BOS",
    "GPT",
    "VOCAB_SIZE",
    "Activations",
    "ModelConfig",
    "OptimConfig",
    "Optimizer",
    "ParamBuffer",
    "UpdateInfo",
    "filter_probs",
    "generate",
    "init_params",
    "param_shapes",
    "show_bytes",
]
