"""``tokenmixers train``: configuration, the training loop, checkpoints, distributed runs."""

from __future__ import annotations

from tokenmixers.train.config import ConfigError, TrainConfig, build_config, resolve
from tokenmixers.train.loop import NonFiniteLossError, RunExistsError, TrainResult, train

__all__ = [
    "ConfigError",
    "NonFiniteLossError",
    "RunExistsError",
    "TrainConfig",
    "TrainResult",
    "build_config",
    "resolve",
    "train",
]
